// The arithmetic and names of striped chunk lists (src/store/stripes.ts): where frame i lies,
// what each stripe must hold, the key slot, and descriptors read back from the store.
import t from 'tap';
import { vmIdOfKey } from '../../src/store/fleet.js';
import { formatStripes, parseStripeKey, parseStripes, slotOfTag, stripeKey, stripeRange, stripeShare } from '../../src/store/stripes.js';

t.test('slotOfTag is Redis Cluster key hashing (CRC16/XMODEM mod 16384)', async (t) => {
  t.equal(slotOfTag('123456789'), 0x31c3, 'the cluster spec test vector');
  t.equal(slotOfTag(''), 0);
  // Known answers of CLUSTER KEYSLOT on redis-server 7.0.
  t.equal(slotOfTag('foo'), 12182);
  t.equal(slotOfTag('user1000'), 3443);
});

t.test('every frame of a range lies in exactly one stripe, in order', async (t) => {
  for (let S = 1; S <= 5; S++) {
    for (const frames of [0, 1, 2, S, S + 1, 17, 40]) {
      const shares = Array.from({ length: S }, (_, s) => stripeShare(s, S, frames));
      t.equal(shares.reduce((a, b) => a + b, 0), frames, `S=${S} frames=${frames}: shares add up`);
      for (let first = 0; first < frames; first += 3) {
        for (const last of [first, Math.min(frames - 1, first + 4), frames - 1]) {
          const got: number[] = [];
          for (let s = 0; s < S; s++) {
            const { lo, hi } = stripeRange(s, S, first, last);
            for (let p = lo; p <= hi; p++) {
              t.ok(p < shares[s]!, 'within the stripe') || t.fail(`S=${S} ${first}..${last} s=${s} p=${p}`);
              got.push(p * S + s);
            }
          }
          got.sort((a, b) => a - b);
          if (got.length !== last - first + 1 || got.some((f, i) => f !== first + i)) t.fail(`S=${S} ${first}..${last}: ${got}`);
        }
      }
    }
  }
});

t.test('descriptors and keys read from the store are checked', async (t) => {
  const s = { name: 'v12', tags: [0, 7, 3] };
  t.same(parseStripes(formatStripes(s), 'x'), s, 'round trip');
  t.same(parseStripes('b9.ab12:1,2', 'x'), { name: 'b9.ab12', tags: [1, 2] });
  for (const bad of ['', 'v1', 'v1:', 'v0:1', 'x1:1', 'v1:1,1', 'v1:-1', 'b9:1', 'v1.ab:1', `v1:${Array.from({ length: 65 }, (_, i) => i).join(',')}`]) {
    t.throws(() => parseStripes(bad, 'VM "a" version 1'), /VM "a" version 1: stripe descriptor/, `refused: "${bad}"`);
  }
  const key = stripeKey('vm-1.a_b', 'b4.ff00', 11);
  t.equal(key, 'migsafe:{vm-1.a_b/b4.ff00/11}:chunks');
  t.same(parseStripeKey(key), { vm: 'vm-1.a_b', name: 'b4.ff00', kind: 'b', version: 4, tag: 11 });
  t.same(parseStripeKey(stripeKey('a', 'v3', 0)), { vm: 'a', name: 'v3', kind: 'v', version: 3, tag: 0 });
  t.equal(vmIdOfKey(key), 'vm-1.a_b', 'a stripe counts as its VM');
  for (const bad of ['migsafe:{a/v3}:chunks', 'migsafe:{a/b3/0}:chunks', 'migsafe:{a/v3.ab/0}:chunks', 'migsafe:{a/v3/0}:x', 'migsafe:{-a/v3/0}:chunks']) {
    t.equal(parseStripeKey(bad), undefined, `not a stripe: ${bad}`);
  }
  t.throws(() => stripeKey('bad/id', 'v1', 0), /invalid VM id/);
});
