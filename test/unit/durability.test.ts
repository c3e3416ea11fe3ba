// --durability specs: what is accepted and how bad input is refused.
import t from 'tap';
import { describeDurability, parseDurability } from '../../src/store/durability.js';

t.same(parseDurability('auto'), { kind: 'auto' });
t.same(parseDurability('fsync'), { kind: 'fsync' });
t.same(parseDurability('none'), { kind: 'none' });
t.same(parseDurability('replicas:2'), { kind: 'replicas', replicas: 2, timeoutMs: 1000 });
t.same(parseDurability('replicas:1:250'), { kind: 'replicas', replicas: 1, timeoutMs: 250 });
for (const bad of ['', 'always', 'replicas', 'replicas:0', 'replicas:-1', 'replicas:1:', 'replicas:1:x', 'fsync:1', 'replicas:1:0', 'replicas:1001', 'replicas:1:99999999999']) {
  t.throws(() => parseDurability(bad), /use auto, fsync, none or replicas:N\[:TIMEOUT_MS\]/, JSON.stringify(bad));
}
t.equal(describeDurability({ kind: 'replicas', replicas: 2, timeoutMs: 500 }), 'replicas:2 (WAIT 2 500 ms after each commit)');
