// Stage-2 pauses of an agent's VMs take turns: a second pause starts only when the first ended, in order.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { PauseTurns } from '../../src/checkpoint/pause-turns.js';

t.test('one pause at a time, first come first served', async (t) => {
  const turns = new PauseTurns();
  const log: string[] = [];
  let inside = 0;
  let most = 0;
  const pause = async (name: string, ms: number) => {
    const done = await turns.take();
    inside++;
    most = Math.max(most, inside);
    log.push(`${name}+`);
    await sleep(ms);
    log.push(`${name}-`);
    inside--;
    done();
  };
  await Promise.all([pause('a', 30), pause('b', 5), pause('c', 10)]);
  t.equal(most, 1, 'never two at once');
  t.same(log, ['a+', 'a-', 'b+', 'b-', 'c+', 'c-'], 'in the order they asked');
  // A pause whose holder failed still hands the turn on (released in a finally).
  const d = await turns.take();
  d();
  const e = await turns.take();
  e();
  t.pass('turns go on after releases');
});
