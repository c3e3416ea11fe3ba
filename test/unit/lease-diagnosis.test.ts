// Why a lease went unrenewed (src/ha/ownership.ts explainUnrenewed): the fencing note tells a
// silent store from a stalled agent, with the figures an operator sizes --lease-ttl from.
import t from 'tap';
import { explainUnrenewed } from '../../src/ha/ownership.js';

const base = { ttlMs: 3000, marginMs: 1000 };

t.test('a renewal waiting on the store', async (t) => {
  const s = explainUnrenewed({ ...base, sinceAckMs: 2100, underwayMs: 1400, lastRoundTripMs: 30, stallMs: 40 });
  t.match(s, /^no renewal acknowledged for 2100 ms \(lease 3000 ms, fenced at 2000 ms\): a renewal has waited 1400 ms for the store, the event loop stalled up to 40 ms; likely the store answered slowly or not at all/);
  t.match(s, /a longer --lease-ttl rides such stalls out/);
});

t.test("the agent's own event loop stalled", async (t) => {
  const s = explainUnrenewed({ ...base, sinceAckMs: 2600, lastRoundTripMs: 20, stallMs: 2400 });
  t.match(s, /the last renewal took 20 ms, the event loop stalled up to 2400 ms; likely this agent's event loop stalled/);
});

t.test('slow answers, none under way', async (t) => {
  t.match(explainUnrenewed({ ...base, sinceAckMs: 2050, lastRoundTripMs: 900, stallMs: 0 }), /likely the store answered slowly or not at all/);
  t.match(explainUnrenewed({ ...base, sinceAckMs: 2050, lastRoundTripMs: 5, stallMs: 0 }), /likely renewals were failing/, 'fast answers that did not renew');
});
