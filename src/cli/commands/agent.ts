// `migsafe agent --host NAME --listen ADDR:PORT --redis URL [--vm ID -- <qemu argv>]`:
// the per-host sidecar of a migration (see src/migration/agent.ts). SIGHUP re-reads --config,
// SIGTERM stops it cleanly (agent-signals.ts).
import type { CommandModule } from 'yargs';
import { checkUserArgv } from '../../qemu/launch.js';
import { Agent } from '../../migration/agent.js';
import { parseCodec } from '../../store/frame.js';
import { openMetrics, runDir } from '../context.js';
import { logger, setLogLevel } from '../log.js';
import type { LogLevel } from '../../util/logger.js';
import { Progress } from '../progress.js';
import { REDIS_FORMS, withOperatorOptions } from '../options.js';
import { parseGateIn } from '../validate.js';
import { parseDurability } from '../../store/durability.js';
import { hideBin } from 'yargs/helpers';
import { agentSignals, reloadAgent } from '../agent-signals.js';
import { tlsFromArgs, vmAllowFromArgs, withTls, withVmAllow, type TlsArgs, type VmAllowArgs } from '../tls-options.js';
import { requireTlsOrLoopback } from '../../ha/peer.js';
import { readVmList, type VmEntry } from '../vm-list.js';
import { redisAuthFrom, withRedisAuth, type RedisAuthArgs } from '../redis-auth.js';
import { recordKeyFrom, type RecordKeyArgs } from '../record-key.js';

interface AgentArgs extends TlsArgs, VmAllowArgs, RedisAuthArgs, RecordKeyArgs {
  host: string;
  listen: string;
  redis: string;
  vm?: string;
  vms?: string;
  interval: number;
  'max-pages': number;
  'max-time': number;
  codec: string;
  'fic-bandwidth': number;
  'compact-every': number;
  'ric-interval': number;
  'ric-event': boolean;
  'ric-dirty-pages': number;
  'dirty-source': 'auto' | 'bitmap' | 'scan';
  'hb-interval': number;
  'hb-timeout': number;
  'lease-ttl': number;
  gate: boolean;
  'gate-in'?: string;
  checkpoint: boolean;
  'status-file'?: string;
  metrics?: string;
  durability: string;
  '--'?: (string | number)[];
}

export const agentCommand: CommandModule<object, AgentArgs> = {
  command: 'agent',
  describe: 'Run the host sidecar: checkpoint the VMs held here, send and receive migrations, recover on failure',
  builder: (y) =>
    withVmAllow(withTls(withOperatorOptions(withRedisAuth(y))))
      .option('host', { type: 'string', demandOption: true, describe: 'name of this host (the lease holder name)' })
      .option('listen', { type: 'string', demandOption: true, describe: 'ADDR:PORT of the control channel (PORT+1 takes migrations); without --tls-*, a loopback address only' })
      .option('redis', { type: 'string', demandOption: true, describe: `the checkpoint store: ${REDIS_FORMS}` })
      .option('vm', { type: 'string', describe: 'start this VM here, from the QEMU command line after --' })
      .option('vms', {
        type: 'string',
        describe: 'start these VMs here: a JSON file, [{"vm": ID, "argv": [QEMU argv]}, ...]; their stage-2 pauses take turns (needs --no-gate for more than one VM)',
      })
      .option('interval', { type: 'number', default: 1000, describe: 'FIC: ms between rounds' })
      .option('max-pages', { type: 'number', default: 0, describe: 'FIC: N, most pages sent live per round' })
      .option('max-time', { type: 'number', default: 0, describe: 'FIC: T, longest live stage, ms' })
      .option('codec', { type: 'string', default: 'zstd:1' })
      .option('fic-bandwidth', { type: 'number', default: 0, describe: 'FIC: average MiB/s the checkpoint stream may use (0: no limit)' })
      .option('compact-every', { type: 'number', default: 100, describe: 'FIC: fold old versions into the base once more than 2×K are stored (0: never)' })
      .option('ric-interval', { type: 'number', default: 500, describe: 'RIC: ms between rounds' })
      .option('ric-event', { type: 'boolean', default: true, describe: 'RIC: also start a round when the guest sends a packet' })
      .option('ric-dirty-pages', {
        type: 'number',
        default: 2048,
        describe:
          'RIC: also start a round once this many pages were dirtied since the last one (0: off); needs the ' +
          "patched QEMU's dirty count (bitmap source), else off and said so in the log and status",
      })
      .option('dirty-source', {
        choices: ['auto', 'bitmap', 'scan'] as const,
        default: 'auto' as const,
        describe:
          "where FIC's and RIC's dirty pages come from: the patched QEMU's dirty bitmap, or a compare of RAM " +
          '(at a post-copy destination: of the pages present, SEEK_DATA); auto: bitmap when the QEMU binary has migsafe-ft',
      })
      .option('hb-interval', { type: 'number', default: 200, describe: 'heartbeat interval, ms' })
      .option('hb-timeout', { type: 'number', default: 1500, describe: 'silence after which the other side is declared failed, ms' })
      .option('lease-ttl', { type: 'number', default: 3000, describe: 'ownership lease in the store, ms' })
      .option('gate', { type: 'boolean', default: true, describe: 'output commit: hold guest packets until their round commits' })
      .option('gate-in', {
        type: 'string',
        describe: 'GUEST_IP:PORT: datagrams to UDP PORT of this host go into the guest, to GUEST_IP:PORT, while the VM runs here (a service in the guest; its answers are held like all its packets)',
      })
      .option('checkpoint', { type: 'boolean', default: true, describe: 'FIC/RIC on (off: plain migration, for comparison)' })
      .option('status-file', { type: 'string', describe: 'keep a JSON status of this agent in this file' })
      .check((a) => {
        checkAgentArgs(a as unknown as AgentArgs);
        return true;
      })
      .epilogue(
        'Signals: SIGHUP re-reads --config (with the environment and the command line over it) and applies ' +
          'interval, max-pages, max-time, fic-bandwidth, compact-every, ric-interval, ric-event, ric-dirty-pages at once ' +
          '(hb-interval, hb-timeout from the next migration); it logs what needs a restart. SIGTERM or SIGINT: the round ' +
          'under way finishes, a final checkpoint, QEMU quits, the lease is released, exit 0.',
      ) as never,
  handler: async (a) => {
    // Before anything else: SIGHUP's default would end the process.
    let agent: Agent | undefined;
    const hostLog = logger.child({ host: a.host });
    const log = (msg: string) => hostLog.info(msg);
    // What SIGHUP changes in this process besides the agent's own settings.
    const cliLive = { 'log-level': (v: unknown) => typeof v === 'string' && setLogLevel(v as LogLevel) };
    const stopped = agentSignals(
      async () =>
        agent ? reloadAgent(a as unknown as Record<string, unknown>, agent, reparse, log, cliLive) : log('SIGHUP while starting: ignored, send it again'),
      log,
    );
    const m = await openMetrics(a.metrics);
    agent = new Agent({
      host: a.host,
      listen: a.listen,
      redis: a.redis,
      redisAuth: redisAuthFrom(a),
      runDir: runDir(),
      intervalMs: a.interval,
      maxPages: a['max-pages'],
      maxTimeMs: a['max-time'],
      codec: parseCodec(a.codec),
      ficBandwidth: a['fic-bandwidth'] * 2 ** 20,
      compactEvery: a['compact-every'],
      ricIntervalMs: a['ric-interval'],
      ricEvent: a['ric-event'],
      ricDirtyPages: a['ric-dirty-pages'],
      dirtySource: a['dirty-source'],
      hbIntervalMs: a['hb-interval'],
      hbTimeoutMs: a['hb-timeout'],
      leaseTtlMs: a['lease-ttl'],
      gate: a.gate,
      gateIn: a['gate-in'] === undefined ? undefined : parseGateIn(a['gate-in']),
      noCheckpoint: !a.checkpoint,
      statusFile: a['status-file'],
      metrics: m.metrics,
      durability: parseDurability(a.durability),
      tls: agentTls(a),
      recordKey: recordKeyFrom(a),
      log: hostLog,
      progress: (log) => new Progress(log).report,
    });
    const list = vmsOf(a);
    await agent.start();
    for (const e of list) await agent.startVm(e.vm, e.argv);
    const sig = await stopped;
    log(`${sig}: finishing the checkpoint round under way, a final checkpoint, quitting QEMU, releasing the leases`);
    const left = await agent.shutdown();
    await m.close();
    log('stopped' + left.map((v) => `; ${v.vm}: last version ${v.version || 'none'}${v.released ? ', lease released' : ''}`).join(''));
    process.exitCode = 0;
    // Whatever handle might still hold the event loop (a reconnecting client): exit anyway.
    setTimeout(() => process.exit(0), 3000).unref();
  },
};

/** The VMs to start here: --vm with the QEMU argv after `--`, and --vms FILE. */
function vmsOf(a: AgentArgs): VmEntry[] {
  const list: VmEntry[] = a.vms ? readVmList(a.vms) : [];
  if (a.vm) list.unshift({ vm: a.vm, argv: [...(a['--'] ?? [])].map(String) });
  return list;
}

/** The agent's TLS: the files and --tls-allow, and the --tls-allow-vm lists. */
function agentTls(a: AgentArgs) {
  const tls = tlsFromArgs(a);
  const vmAllow = vmAllowFromArgs(a, tls);
  return tls && vmAllow ? { ...tls, vmAllow } : tls;
}

/** What the agent's options must agree on (each value alone is checked by validate.ts). */
function checkAgentArgs(a: AgentArgs): void {
  requireTlsOrLoopback(a.listen, agentTls(a), '--listen');
  if (a['hb-timeout'] <= a['hb-interval']) {
    throw new Error(`--hb-timeout ${a['hb-timeout']} must be longer than --hb-interval ${a['hb-interval']} (ms): a peer would be declared failed between two heartbeats`);
  }
  if (!a.vm && (a['--'] ?? []).length) throw new Error('a QEMU command line after `--` needs --vm ID: give the VM it starts');
  const list = vmsOf(a);
  for (const e of list) checkUserArgv(e.argv);
  if (new Set(list.map((e) => e.vm)).size !== list.length) throw new Error(`--vm ${a.vm} is also in --vms ${a.vms}: give it once`);
  // The output gate holds and releases the host's packets as one stream: a round of one VM
  // would release what another VM's guest sent before its own checkpoint.
  if (list.length > 1 && a.gate && a.checkpoint) throw new Error(`${list.length} VMs with the output gate: the gate is host-wide for now and cannot tell the VMs' packets apart; add --no-gate`);
}

/** The agent's arguments again, as at start: its command line over the environment over --config. */
async function reparse(): Promise<Record<string, unknown>> {
  const { commands } = await import('./index.js');
  const { parseArgs } = await import('../parser.js');
  const { commandName } = await import('../config-file.js');
  return parseArgs(commands.find((c) => commandName(c) === 'agent')!, hideBin(process.argv));
}
