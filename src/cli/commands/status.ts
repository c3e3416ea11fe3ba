// `migsafe status [--json]`: every VM the store holds — who holds its lease, its role there
// (asked of the agent that published its address), the newest version and its age, bytes
// stored, the last pause. The fleet view: one store, every host's VMs.
import type { CommandModule } from 'yargs';
import { Peer } from '../../ha/peer.js';
import { keysByVm, summarize, type VmSummary } from '../../store/fleet.js';
import { fmtBytes, openRedis } from '../context.js';
import { withRedis } from '../options.js';
import { redisAuthFrom, withRedisAuth, type RedisAuthArgs } from '../redis-auth.js';
import { tlsFromArgs, withTls, type TlsArgs } from '../tls-options.js';

interface StatusArgs extends TlsArgs, RedisAuthArgs {
  redis?: string;
  json: boolean;
  agents: boolean;
}

type AgentView = { role: string; pid: number; head: number } | { error: string };

/** Each agent's own view of its VMs (op `status`), by address; an error where it did not answer in time. */
async function askAgents(addresses: string[], a: StatusArgs): Promise<Map<string, Map<string, AgentView> | string>> {
  const tls = tlsFromArgs(a);
  const out = new Map<string, Map<string, AgentView> | string>();
  await Promise.all(
    addresses.map(async (addr) => {
      let p: Peer | undefined;
      try {
        p = await Peer.connect(addr, undefined, 2000, tls);
        const list = await p.request<{ vm: string; role: string; pid: number; head: number }[]>('status', {}, 3000);
        out.set(addr, new Map(list.map((v) => [v.vm, { role: v.role, pid: v.pid, head: v.head }])));
      } catch (e) {
        out.set(addr, `no answer (${(e as Error).message})`);
      } finally {
        p?.close();
      }
    }),
  );
  return out;
}

function age(ms: number | null): string {
  if (ms === null) return '-';
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 1000)} s`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

export const statusCommand: CommandModule<object, StatusArgs> = {
  command: 'status',
  describe: 'List every VM in the store: lease holder, role, newest version and its age, bytes stored, last pause',
  builder: (y) =>
    withTls(withRedisAuth(withRedis(y)))
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
      .option('agents', { type: 'boolean', default: true, describe: 'ask each VM\'s agent for its role (--no-agents: the store alone)' }) as never,
  handler: async (a) => {
    const h = await openRedis(a.redis, false, redisAuthFrom(a));
    try {
      const byVm = await keysByVm(h.redis);
      const now = Date.now();
      const vms: VmSummary[] = [];
      for (const [vm, keys] of [...byVm].sort(([x], [y]) => x.localeCompare(y))) vms.push(await summarize(h.redis, vm, keys, now));
      const addrs = [...new Set(vms.filter((v) => v.owner && v.agent).map((v) => v.agent!))];
      const views = a.agents ? await askAgents(addrs, a) : new Map();
      const rows = vms.map((v) => {
        const view = v.owner && v.agent ? views.get(v.agent) : undefined;
        const mine = typeof view === 'object' ? view.get(v.vm) : undefined;
        const role = !v.owner ? 'none' : !a.agents || !v.agent ? '?' : typeof view === 'string' ? 'unreachable' : mine && 'role' in mine ? mine.role : 'not there';
        return { ...v, role, agentError: typeof view === 'string' ? view : undefined };
      });
      if (a.json) {
        process.stdout.write(JSON.stringify({ store: h.where, at: now, vms: rows }, null, 2) + '\n');
        return;
      }
      if (rows.length === 0) {
        process.stdout.write(`no VM in the store at ${h.where}\n`);
        return;
      }
      const table = [
        ['VM', 'owner', 'role', 'versions', 'head', 'age', 'stored', 'last pause', 'RAM', 'record'],
        ...rows.map((r) => [
          r.vm,
          r.owner ? `${r.owner.host} (${(r.owner.ttlMs / 1000).toFixed(1)} s left)` : '-',
          r.role,
          String(r.versions),
          r.head ? String(r.head) : '-',
          age(r.ageMs),
          fmtBytes(r.bytesStored),
          r.lastPauseMs === null ? '-' : `${r.lastPauseMs.toFixed(1)} ms`,
          r.ramBytes === null ? '-' : fmtBytes(r.ramBytes),
          r.record + (r.pending ? `, ${r.pending} pending` : ''),
        ]),
      ];
      const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
      for (const row of table) process.stdout.write(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
      for (const r of rows) if (r.agentError) process.stdout.write(`${r.vm}: its agent at ${r.agent} gave ${r.agentError}\n`);
    } finally {
      h.close();
    }
  },
};
