// StoreShare: a VM alone is never held back; with N VMs each gets 1/N of the measured rate
// (less headroom), so a slower store stretches every VM's interval; idle VMs stop counting.
import t from 'tap';
import { SHARE_UTILISATION, StoreShare } from '../../src/checkpoint/store-share.js';

t.test('the gap after a round is its bytes at 1/N of the utilisable rate', async (t) => {
  let now = 0;
  const s = new StoreShare(SHARE_UTILISATION, () => now);
  s.record('a', 10e6, 200); // 50 kB/ms
  t.equal(s.minGapMs(10e6, 1e9), 0, 'one VM alone: no gap');
  s.record('b', 10e6, 200);
  t.equal(s.active(), 2);
  t.equal(Math.round(s.minGapMs(10e6, 1e9)), Math.round((10e6 * 2) / (50e3 * SHARE_UTILISATION)), 'two VMs: each gets half of 80 % of the rate');
  const before = s.minGapMs(10e6, 1e9);
  for (let i = 0; i < 5; i++) s.record('a', 10e6, 800); // the store falls behind: 4× slower rounds
  t.ok(s.minGapMs(10e6, 1e9) > 2 * before, `a slower store stretches the gap (${before.toFixed(0)} → ${s.minGapMs(10e6, 1e9).toFixed(0)} ms)`);
  t.equal(s.minGapMs(0, 1e9), 0, 'a round that stored nothing buys no gap');
  t.equal(s.minGapMs(10e9, 300), 600, 'at most N intervals, however large the round (a first full checkpoint)');
  now += 11_000;
  s.record('a', 10e6, 200);
  t.equal(s.active(), 1, 'a VM silent for over 10 s no longer counts');
  t.equal(s.minGapMs(10e6, 1e9), 0);
  s.record('c', 1, 0);
  t.equal(s.active(), 2, 'a round without a duration still marks its VM active');
  s.forget('c');
  t.equal(s.active(), 1, 'a VM forgotten (stopped) no longer counts');
});
