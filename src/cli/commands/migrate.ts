// `migsafe migrate --vm ID --to HOST:PORT [--mode precopy|postcopy|hybrid]`: asks the agent that
// runs the VM (found in the store, or --from) to live-migrate it to the agent at HOST:PORT.
import type { CommandModule } from 'yargs';
import { Peer, requireTlsOrLoopback } from '../../ha/peer.js';
import { connectRedis } from '../../store/redis-server.js';
import { CheckpointStore } from '../../store/checkpoint-store.js';
import type { MigrateResult } from '../../migration/agent.js';
import { logger } from '../log.js';
import { Progress } from '../progress.js';
import type { WorkProgress } from '../../util/progress.js';
import { REDIS_FORMS } from '../options.js';
import { tlsFromArgs, withTls, type TlsArgs } from '../tls-options.js';
import { redisAuthFrom, withRedisAuth, type RedisAuthArgs } from '../redis-auth.js';

interface MigrateArgs extends TlsArgs, RedisAuthArgs {
  vm: string;
  to: string;
  from?: string;
  redis?: string;
  mode: 'precopy' | 'postcopy' | 'hybrid';
  bandwidth: number;
  'postcopy-bandwidth': number;
  'postcopy-after'?: number;
}

export const migrateCommand: CommandModule<object, MigrateArgs> = {
  command: 'migrate',
  describe: 'Live-migrate a VM to another host\'s agent, with FIC/RIC checkpointing around it',
  builder: (y) =>
    withTls(withRedisAuth(y))
      .option('vm', { type: 'string', demandOption: true })
      .option('to', { type: 'string', demandOption: true, describe: 'ADDR:PORT of the destination agent' })
      .option('from', { type: 'string', describe: 'ADDR:PORT of the source agent (default: the one the store names)' })
      .option('redis', { type: 'string', describe: `the checkpoint store, to find the source agent: ${REDIS_FORMS}` })
      .option('mode', { choices: ['precopy', 'postcopy', 'hybrid'] as const, default: 'precopy' as const })
      .option('bandwidth', { type: 'number', default: 0, describe: 'migration bandwidth limit, MiB/s (0: QEMU default)' })
      .option('postcopy-bandwidth', { type: 'number', default: 0, describe: 'post-copy bandwidth limit, MiB/s (0: none)' })
      .option('postcopy-after', { type: 'number', describe: 'hybrid: switch to post-copy after this many ms' })
      .check((a) => {
        if (!a.from && !a.redis) throw new Error('give --from ADDR:PORT (the source agent) or --redis URL (the store that names it)');
        if (a.from) requireTlsOrLoopback(a.from, tlsFromArgs(a as unknown as TlsArgs), '--from');
        if (a['postcopy-after'] !== undefined && a.mode !== 'hybrid') {
          throw new Error(`--postcopy-after is for --mode hybrid (got --mode ${a.mode}): add --mode hybrid, or leave --postcopy-after out`);
        }
        return true;
      }) as never,
  handler: async (a) => {
    let from = a.from;
    if (!from) {
      const r = connectRedis(a.redis!, { auth: redisAuthFrom(a) });
      from = (await new CheckpointStore(r, a.vm).agentAddress()) ?? undefined;
      r.disconnect();
      if (!from) throw new Error(`no agent runs VM ${a.vm} (nothing in the store): give --from`);
    }
    const p = await Peer.connect(from, undefined, 5000, tlsFromArgs(a));
    const log = logger.child({ vm: a.vm });
    log.info({ from, to: a.to, mode: a.mode }, `migrating from ${from} to ${a.to} (${a.mode})`);
    // The source agent sends RAM progress while QEMU migrates: a bar, or log lines.
    const progress = new Progress(log);
    p.on('event', (ev: string, data: WorkProgress) => {
      if (ev === 'progress') progress.report(data);
    });
    const res = await p.request<MigrateResult>(
      'migrate',
      {
        vm: a.vm,
        to: a.to,
        mode: a.mode,
        maxBandwidth: a.bandwidth ? a.bandwidth * 2 ** 20 : undefined,
        postcopyBandwidth: a['postcopy-bandwidth'] ? a['postcopy-bandwidth'] * 2 ** 20 : undefined,
        postcopyAfterMs: a['postcopy-after'],
      },
      3_600_000,
    );
    p.close();
    progress.close();
    process.stdout.write(JSON.stringify(res) + '\n');
    log[res.status === 'completed' ? 'info' : 'error'](
      { status: res.status, totalMs: Math.round(res.totalMs), downtimeMs: res.downtimeMs, ...(res.finalFicVersion ? { version: res.finalFicVersion } : {}) },
      `${res.status} in ${res.totalMs.toFixed(0)} ms${res.downtimeMs !== undefined ? `, downtime ${res.downtimeMs} ms` : ''}`,
    );
    process.exitCode = res.status === 'completed' ? 0 : 1;
  },
};
