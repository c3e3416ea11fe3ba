// `migsafe delete --vm ID`: remove every checkpoint of a VM.
import type { CommandModule } from 'yargs';
import { openStore } from '../context.js';
import { withStore } from '../options.js';
import { redisAuthFrom, type RedisAuthArgs } from '../redis-auth.js';

export const deleteCommand: CommandModule<object, { vm: string } & RedisAuthArgs> = {
  command: 'delete',
  describe: 'Delete every checkpoint of a VM from the store',
  builder: (y) => withStore(y) as never,
  handler: async (a) => {
    const h = await openStore(a.redis, a.vm, false, redisAuthFrom(a));
    try {
      // exists(), not vm(): a broken or old record must still be deletable.
      if (!(await h.store.exists())) throw new Error(`no VM "${a.vm}" in the store at ${h.where}`);
      const n = await h.store.deleteAll();
      process.stdout.write(`deleted VM ${a.vm}: ${n} keys\n`);
    } finally {
      h.close();
    }
  },
};
