// The migration decision table (src/migration/decisions.ts) without QEMU or Redis: for each
// phase of a migration and each failure (source, destination, network, store), the action the
// agent takes today. The source side is walked through its state machine as QEMU and the peer
// would drive it; the destination side and the ownership rule are asked directly.
import t from 'tap';
import {
  beforeStoreRecovery,
  afterIncomingCompleted,
  handedOver,
  incomingSourceLost,
  onIncomingResume,
  onIncomingStatus,
  onLeaseTick,
  onFencedReclaim,
  onSourceLost,
  postcopySourceLost,
  sourceStep,
  type SourceEvent,
  type SourcePhase,
  type SourceState,
} from '../../src/migration/decisions.js';
import { Ownership } from '../../src/ha/ownership.js';
import type { Lease } from '../../src/ha/lease.js';
import type { MigrationMode, Role } from '../../src/migration/vm-runtime.js';

/** Feeds events in order; returns the phase after each and every action taken. */
function walk(mode: MigrationMode, events: SourceEvent[], postcopyAfterMs?: number) {
  const s: SourceState = { phase: 'precopy', mode, postcopyAfterMs };
  const phases: SourcePhase[] = [];
  const actions: string[] = [];
  for (const ev of events) {
    const step = sourceStep(s, ev);
    s.phase = step.phase;
    phases.push(step.phase);
    actions.push(...step.actions);
  }
  return { phase: s.phase, phases, actions };
}

const status = (st: string): SourceEvent => ({ on: 'status', status: st });
const ALL_PHASES: SourcePhase[] = ['precopy', 'switchover', 'switched-over', 'completing', 'lease-wait', 'recovering', 'over'];

t.test('source: a migration that goes well', async (t) => {
  const pre = walk('precopy', [status('setup'), status('active'), status('pre-switchover'), { on: 'handed-over' }, status('completed')]);
  t.same(pre.phases, ['precopy', 'precopy', 'switchover', 'switched-over', 'completing']);
  t.same(pre.actions, ['switchover', 'complete'], 'pre-copy: the final checkpoint and hand-over, then completion');

  const post = walk('postcopy', [status('active'), status('pre-switchover'), { on: 'handed-over' }, status('postcopy-active'), status('completed')]);
  t.same(post.actions, ['start-postcopy', 'switchover', 'role-postcopy-src', 'complete'], 'post-copy starts at once; the role follows QEMU');
  t.equal(post.phase, 'completing');
});

t.test('source: hybrid switches to post-copy after the first pass, or after the time given', async (t) => {
  t.same(walk('hybrid', [status('active'), { on: 'pass', pass: 1 }]).actions, [], 'not during the first pass');
  t.same(walk('hybrid', [status('active'), { on: 'pass', pass: 2 }]).actions, ['start-postcopy'], 'once the second pass begins');
  t.same(walk('hybrid', [status('active'), { on: 'pass', pass: 3 }], 5000).actions, ['start-postcopy-later'], 'with a time: a timer, passes do not count');
  t.same(walk('precopy', [status('active'), { on: 'pass', pass: 5 }]).actions, [], 'pre-copy never switches');
  t.same(walk('postcopy', [{ on: 'pass', pass: 2 }]).actions, [], 'post-copy switches on active, not on a pass');
});

t.test('source: destination or network lost', async (t) => {
  const pre = walk('precopy', [status('active'), { on: 'destination-lost' }]);
  t.same(pre.actions, ['cancel', 'backstop'], 'pre-copy: call the migration off');
  t.equal(pre.phase, 'precopy', 'the VM still runs here: nothing is decided until QEMU reports the cancel');
  const cancelled = walk('precopy', [status('active'), { on: 'destination-lost' }, status('cancelled')]);
  t.same(cancelled.actions, ['cancel', 'backstop', 'run-on-here']);
  t.equal(cancelled.phase, 'over');
  const twice = walk('precopy', [status('active'), { on: 'destination-lost' }, status('cancelled'), { on: 'failed', status: 'cancelled' }]);
  t.same(twice.actions, ['cancel', 'backstop', 'run-on-here'], 'the backstop after QEMU reported the cancel does nothing');

  t.same(walk('postcopy', [status('pre-switchover'), { on: 'destination-lost' }]).actions, ['switchover', 'cancel', 'backstop'], 'during the final checkpoint: still the source’s VM');

  for (const mode of ['precopy', 'postcopy', 'hybrid'] as const) {
    const after = walk(mode, [status('pre-switchover'), { on: 'handed-over' }, status('postcopy-active'), { on: 'destination-lost' }]);
    t.equal(after.phase, 'lease-wait', `${mode}, after the hand-over: only the lease decides`);
    t.same(after.actions.slice(-1), ['wait-for-lease']);
  }
  const got = walk('postcopy', [status('pre-switchover'), { on: 'handed-over' }, { on: 'destination-lost' }, { on: 'lease', got: true }]);
  t.same(got.actions.slice(-1), ['recover'], 'the lease came back: recover here from the store');
  t.equal(got.phase, 'recovering');
  const kept = walk('postcopy', [status('pre-switchover'), { on: 'handed-over' }, { on: 'destination-lost' }, { on: 'lease', got: false }]);
  t.same(kept.actions.slice(-1), ['yield'], 'the destination keeps the lease: it runs the VM, this side stops');
  t.equal(kept.phase, 'over');
});

t.test('source: QEMU reports the migration failed', async (t) => {
  for (const mode of ['precopy', 'postcopy', 'hybrid'] as const) {
    const before = walk(mode, [status('active'), status('failed')]);
    t.same(before.actions.slice(-1), ['run-on-here'], `${mode}, before the hand-over: the source runs on`);
    t.equal(before.phase, 'over');
  }
  const pre = walk('precopy', [status('pre-switchover'), { on: 'handed-over' }, status('failed')]);
  t.same(pre.actions.slice(-1), ['wait-for-lease'], 'pre-copy after the hand-over: nothing else will tell, wait for the lease');
  const post = walk('postcopy', [status('pre-switchover'), { on: 'handed-over' }, status('postcopy-active'), status('failed')]);
  t.same(post.actions, ['switchover', 'role-postcopy-src'], 'post-copy after the hand-over: the heartbeat decides, not QEMU');
  t.equal(post.phase, 'switched-over');
  const refused = walk('precopy', [{ on: 'failed', status: 'failed' }]);
  t.same(refused.actions, ['run-on-here'], '`migrate` refused: the VM keeps running here');
});

t.test('source: the store fails at the switchover', async (t) => {
  const w = walk('precopy', [status('active'), status('pre-switchover'), { on: 'switchover-failed' }, status('cancelled')]);
  t.same(w.actions, ['switchover', 'cancel', 'run-on-here'], 'no hand-over (store unreachable, lease lost): cancel, run on');
  const late = walk('precopy', [status('pre-switchover'), { on: 'handed-over' }, { on: 'switchover-failed' }, status('cancelled')]);
  t.same(late.actions, ['switchover', 'cancel', 'wait-for-lease'], 'handed over, then QEMU would not continue: the lease is gone, wait for it');
});

t.test('source: one wait for the lease, and nothing after the outcome', async (t) => {
  const w = walk('precopy', [status('pre-switchover'), { on: 'handed-over' }, { on: 'destination-lost' }, status('failed'), { on: 'destination-lost' }]);
  t.same(w.actions.filter((a) => a === 'wait-for-lease'), ['wait-for-lease'], 'a second loss notice does not start a second wait');
  const completing = walk('precopy', [status('pre-switchover'), { on: 'handed-over' }, status('completed'), { on: 'destination-lost' }, status('failed'), { on: 'lease', got: true }]);
  t.same(completing.actions, ['switchover', 'complete'], 'completion under way: losses and failures after it are no news');
  for (const phase of ALL_PHASES.filter((p) => p !== 'lease-wait')) {
    t.same(sourceStep({ phase, mode: 'postcopy' }, { on: 'lease', got: true }).actions, [], `a lease answer in ${phase} does nothing`);
  }
  for (const ev of [status('completed'), status('failed'), { on: 'destination-lost' }, { on: 'qemu-exited' }, { on: 'pass', pass: 9 }] as SourceEvent[]) {
    t.same(sourceStep({ phase: 'over', mode: 'hybrid' }, ev), { phase: 'over', actions: [] }, `over: ${ev.on} does nothing`);
  }
});

t.test('source: QEMU exits', async (t) => {
  for (const phase of ALL_PHASES.filter((p) => p !== 'over' && p !== 'recovering')) {
    t.same(sourceStep({ phase, mode: 'precopy' }, { on: 'qemu-exited' }), { phase: 'over', actions: ['fail-qemu-exited'] }, `in ${phase}: the migration failed`);
  }
  // The recovery here kills the old source QEMU itself: the outcome is the recovery's.
  t.same(sourceStep({ phase: 'recovering', mode: 'postcopy' }, { on: 'qemu-exited' }), { phase: 'recovering', actions: [] }, 'while recovering: no news');
});

t.test('source: the hand-over is the line', async (t) => {
  t.same(ALL_PHASES.filter(handedOver), ['switched-over', 'completing', 'lease-wait', 'recovering', 'over']);
  t.same(sourceStep({ phase: 'precopy', mode: 'precopy' }, { on: 'handed-over' }).phase, 'precopy', 'no hand-over outside the switchover');
});

t.test('destination: QEMU events', async (t) => {
  t.equal(onIncomingStatus('incoming', 'completed'), 'completed');
  t.equal(onIncomingStatus('postcopy-dst', 'completed'), 'completed');
  t.equal(onIncomingStatus('incoming', 'failed'), 'close-peer', 'the stream broke before the VM ran here: the peer-loss rule decides');
  t.equal(onIncomingStatus('postcopy-dst', 'failed'), 'nothing', 'in post-copy the VM runs here: the heartbeat decides');
  t.equal(onIncomingStatus('incoming', 'postcopy-paused'), 'nothing');
  t.equal(onIncomingResume({ mode: 'postcopy', resumedBefore: false }), 'start-ric');
  t.equal(onIncomingResume({ mode: 'hybrid', resumedBefore: false }), 'start-ric');
  t.equal(onIncomingResume({ mode: 'postcopy', resumedBefore: true }), 'nothing', 'RIC starts once');
  t.equal(onIncomingResume({ mode: 'precopy', resumedBefore: false }), 'nothing', 'pre-copy: completion follows at once');
  t.equal(afterIncomingCompleted({ hasLoop: true, hasDirtySource: true }), 'become-fic', 'RIC carries on as FIC: one loop');
  t.equal(afterIncomingCompleted({ hasLoop: false, hasDirtySource: true }), 'start-fic');
  t.equal(afterIncomingCompleted({ hasLoop: false, hasDirtySource: false }), 'start-fic');
});

t.test('destination: source lost', async (t) => {
  const roles: Role[] = ['none', 'owner', 'migrating-src', 'postcopy-src', 'incoming', 'postcopy-dst', 'recovering', 'fenced'];
  t.same(
    roles.map((role) => onSourceLost({ role, migrationDone: false })),
    ['nothing', 'nothing', 'nothing', 'nothing', 'take-lease', 'secure-lease', 'nothing', 'nothing'],
  );
  for (const role of roles) t.equal(onSourceLost({ role, migrationDone: true }), 'nothing', `${role}, migration done: the source's going away is no failure`);
  t.equal(postcopySourceLost({ leaseOk: true, canFill: true }), 'recover-live', 'patched QEMU: live recovery');
  t.equal(postcopySourceLost({ leaseOk: true, canFill: false }), 'recover-from-store', 'stock QEMU: from the newest version');
  t.equal(postcopySourceLost({ leaseOk: false, canFill: true }), 'fence', 'the store is out of reach: fence, the source may run it');
  t.equal(beforeStoreRecovery({ role: 'postcopy-dst', migrationDone: false }), 'recover-from-store');
  t.equal(beforeStoreRecovery({ role: 'postcopy-dst', migrationDone: true }), 'nothing', 'the last pages arrived meanwhile');
  t.equal(beforeStoreRecovery({ role: 'fenced', migrationDone: false }), 'nothing', 'fenced meanwhile');
  t.equal(incomingSourceLost({ gotLease: true }), 'recover', 'before the VM ran here, lease ours: recover from the last FIC version');
  t.equal(incomingSourceLost({ gotLease: false }), 'drop-incoming', 'the source keeps the lease: it runs the VM');
});

t.test('ownership: who must fence', async (t) => {
  const running: Role[] = ['owner', 'postcopy-dst', 'migrating-src'];
  for (const role of running) {
    t.same(onLeaseTick({ role, hasQemu: true, lease: 'lost' }), { fence: true, how: 'kill', why: 'the lease is held by another host' }, `${role}, lease lost`);
    t.same(onLeaseTick({ role, hasQemu: true, lease: 'unrenewed' }), { fence: true, how: role === 'owner' ? 'freeze' : 'kill', why: 'cannot reach the store to renew the lease' }, `${role}, store unreachable`);
    t.same(onLeaseTick({ role, hasQemu: true, lease: 'held' }), { fence: false });
    t.same(onLeaseTick({ role, hasQemu: false, lease: 'lost' }), { fence: false }, `${role} without QEMU: nothing to kill`);
  }
  for (const role of ['postcopy-src', 'incoming', 'recovering', 'none', 'fenced'] as Role[]) {
    t.same(onLeaseTick({ role, hasQemu: true, lease: 'unrenewed' }), { fence: false }, `${role} does not run the guest`);
  }
});

t.test('ownership: a fenced VM once the store answers again', async (t) => {
  t.equal(onFencedReclaim({ reclaimed: true, frozen: true, hasCheckpoint: false }), 'thaw', 'the lease came back, nobody ran the VM: the same QEMU goes on (even before any commit)');
  t.equal(onFencedReclaim({ reclaimed: true, frozen: true, hasCheckpoint: true }), 'thaw', 'a frozen QEMU is newer than any checkpoint');
  t.equal(onFencedReclaim({ reclaimed: true, frozen: false, hasCheckpoint: true }), 'recover', 'QEMU gone: from the store');
  t.equal(onFencedReclaim({ reclaimed: true, frozen: false, hasCheckpoint: false }), 'give-up', 'nothing to recover from: no retry loop');
  t.equal(onFencedReclaim({ reclaimed: false, frozen: true, hasCheckpoint: true }), 'kill-frozen', 'another host took the lease: it runs the VM');
  t.equal(onFencedReclaim({ reclaimed: false, frozen: false, hasCheckpoint: true }), 'nothing');
});

t.test('ownership: lease standing and timings', async (t) => {
  const o = new Ownership(3000);
  const lease = (l: { lost?: boolean; token?: number; safe?: boolean }) => {
    const margins: number[] = [];
    const fake = { lost: l.lost ?? false, token: l.token ?? 0, safe: (m: number) => (margins.push(m), l.safe ?? false) };
    return { lease: fake as unknown as Lease, margins };
  };
  t.equal(o.standing(lease({ lost: true, token: 5, safe: true }).lease), 'lost', 'lost wins over a token');
  t.equal(o.standing(lease({}).lease), 'none');
  const held = lease({ token: 3, safe: true });
  t.equal(o.standing(held.lease), 'held');
  t.same(held.margins, [1000], 'safe with a margin of ttl/3');
  t.equal(o.standing(lease({ token: 3, safe: false }).lease), 'unrenewed');
  const short = lease({ token: 1, safe: true });
  new Ownership(600).standing(short.lease);
  t.same(short.margins, [500], 'at least 500 ms of margin');
  t.equal(o.tickMs, 500, 'checked every ttl/6');
  t.equal(new Ownership(300).tickMs, 100, 'but not more often than every 100 ms');
  t.equal(o.takeOverMs, 11_000, 'a lost peer’s lease is waited for 3 ttl + 2 s');
});
