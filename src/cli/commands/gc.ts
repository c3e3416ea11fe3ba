// `migsafe gc [--dry-run] [--vm ID]`: removes from the store what no VM references — versions a
// dead writer left pending, versions neither committed nor pending, unfinished compactions, the
// keys of a VM whose record is gone. VMs whose lease is held are left alone (store/fleet.ts).
import type { CommandModule } from 'yargs';
import { collectGarbage, findGarbage, keysByVm } from '../../store/fleet.js';
import { openRedis } from '../context.js';
import { withRedis } from '../options.js';
import { redisAuthFrom, withRedisAuth, type RedisAuthArgs } from '../redis-auth.js';

interface GcArgs extends RedisAuthArgs {
  redis?: string;
  vm?: string;
  'dry-run': boolean;
  json: boolean;
}

export const gcCommand: CommandModule<object, GcArgs> = {
  command: 'gc',
  describe: 'Remove what no VM references from the store (pending leftovers, orphan versions and chunks); --dry-run lists it',
  builder: (y) =>
    withRedisAuth(withRedis(y))
      .option('vm', { type: 'string', describe: 'only this VM (default: every VM in the store)' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'list what would be removed, remove nothing' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' }) as never,
  handler: async (a) => {
    const h = await openRedis(a.redis, false, redisAuthFrom(a));
    try {
      const byVm = await keysByVm(h.redis);
      if (a.vm !== undefined && !byVm.has(a.vm)) throw new Error(`no VM "${a.vm}" in the store at ${h.where}`);
      const report = [];
      let removed = 0;
      for (const [vm, keys] of [...byVm].sort(([x], [y]) => x.localeCompare(y))) {
        if (a.vm !== undefined && vm !== a.vm) continue;
        const g = await findGarbage(h.redis, vm, keys);
        let deleted: number | null = null;
        if (!a['dry-run']) {
          deleted = await collectGarbage(h.redis, g);
          if (deleted === -1) g.skipped = 'a writer took its lease while gc ran: nothing removed';
          else removed += deleted;
        }
        report.push({ ...g, deleted });
        if (a.json) continue;
        if (g.skipped) process.stdout.write(`${vm}: left alone, ${g.skipped}\n`);
        else if (g.keys.length === 0 && g.pending.length === 0) process.stdout.write(`${vm}: nothing to remove\n`);
        else {
          const verb = a['dry-run'] ? 'would remove' : 'removed';
          process.stdout.write(`${vm}: ${verb} ${g.keys.length} key(s)${g.pending.length ? `, forgetting pending version(s) ${g.pending.join(', ')}` : ''}\n`);
          for (const k of g.keys) process.stdout.write(`  ${k.key}  (${k.why})\n`);
        }
      }
      if (a.json) process.stdout.write(JSON.stringify({ store: h.where, dryRun: a['dry-run'], removed, vms: report }, null, 2) + '\n');
      else if (!a['dry-run']) process.stdout.write(`${removed} key(s) removed\n`);
    } finally {
      h.close();
    }
  },
};
