// What an agent does when the source, the destination, the network or the store fails, in each
// phase of a migration: V-Recover's recovery rules and the ownership rule as pure functions of
// what the agent saw. source.ts, destination.ts and agent.ts feed them and carry out the answer.
//
//   phase                      failed side      what happens
//   pre-copy                   destination/net  the source cancels the migration and runs on
//   pre-copy                   source           the destination recovers from the last FIC version
//                                               (or drops its QEMU if the source keeps the lease)
//   switchover                 store            the lease cannot be handed over: cancel, run on
//   post-copy (VM at dest.)    source           patched QEMU: LIVE — the destination's QEMU gets the
//                                               pages the source never sent from the final FIC image
//                                               (migsafe-postcopy-fill) and runs on (recoverLive);
//                                               stock QEMU / a failed fill: it recovers from the newest
//                                               version (the last RIC one; holes come from FIC)
//   post-copy                  destination/net  the source waits for the lease and recovers from the
//                                               last RIC version (or stops if the destination keeps it)
//
// and over all of it the ownership rule (src/ha/lease.ts): only the holder of the store lease
// runs the VM; a side that cannot renew it kills its own QEMU; a side takes a lease only when
// it is free. After a partition the side that reaches the store is the one that runs.
import type { LeaseStanding } from '../ha/ownership.js';
import type { MigrationMode, Role } from './vm-runtime.js';

// ------------------------------------------------------------------ source side

/**
 * The source's migration: pre-copy until QEMU pauses before the switchover; the final FIC
 * checkpoint and the lease hand-over (`switchover`); once the lease went to the destination
 * (`switched-over`) only the lease decides where the VM runs; then either QEMU completes
 * (`completing`) or the destination is lost and the source waits for the lease
 * (`lease-wait`) and recovers (`recovering`). `over`: the outcome is decided, nothing acts.
 */
export type SourcePhase = 'precopy' | 'switchover' | 'switched-over' | 'completing' | 'lease-wait' | 'recovering' | 'over';

export interface SourceState {
  phase: SourcePhase;
  mode: MigrationMode;
  /** hybrid: switch to post-copy this long after pre-copy started (else after the first pass). */
  postcopyAfterMs?: number;
}

export type SourceEvent =
  /** A MIGRATION event of the source QEMU. */
  | { on: 'status'; status: string }
  /** A MIGRATION_PASS event: pre-copy's pass over RAM `pass` began. */
  | { on: 'pass'; pass: number }
  /** `migrate` was refused, or the migration was called off and QEMU said nothing more. */
  | { on: 'failed'; status: 'failed' | 'cancelled' }
  /** The final checkpoint is taken and the lease went to the destination. */
  | { on: 'handed-over' }
  /** The final checkpoint or the hand-over failed (the store, the lease lost). */
  | { on: 'switchover-failed' }
  /** The heartbeat declared the destination failed (or the link to it closed). */
  | { on: 'destination-lost' }
  /** The wait for the lease (lease-wait) ended. */
  | { on: 'lease'; got: boolean }
  | { on: 'qemu-exited' };

export type SourceAction =
  | 'start-postcopy'
  | 'start-postcopy-later'
  /** Take the final FIC checkpoint, hand the lease over, let QEMU switch over. */
  | 'switchover'
  | 'role-postcopy-src'
  /** QEMU completed: stop checkpointing, tell the destination, quit QEMU. */
  | 'complete'
  /** Before the switchover: the source still has the whole VM and runs on. */
  | 'run-on-here'
  /** Call the migration off (QEMU then reports it cancelled). */
  | 'cancel'
  /** In case QEMU does not report the cancel: take it as cancelled after a while. */
  | 'backstop'
  | 'wait-for-lease'
  /** The destination keeps the lease: stop QEMU here, the VM runs there. */
  | 'yield'
  | 'recover'
  | 'fail-qemu-exited';

export interface SourceStep {
  phase: SourcePhase;
  actions: SourceAction[];
}

/** The lease went to the destination: from here on only the lease decides where the VM runs. */
export function handedOver(phase: SourcePhase): boolean {
  return phase !== 'precopy' && phase !== 'switchover';
}

/** The source's state machine: the next phase and what to do on `ev`. */
export function sourceStep(s: SourceState, ev: SourceEvent): SourceStep {
  const stay = (...actions: SourceAction[]): SourceStep => ({ phase: s.phase, actions });
  if (s.phase === 'over') return stay();
  switch (ev.on) {
    case 'pass':
      return s.mode === 'hybrid' && s.postcopyAfterMs === undefined && ev.pass >= 2 ? stay('start-postcopy') : stay();
    case 'status':
      return onSourceStatus(s, ev.status);
    case 'failed':
      return onSourceFailed(s);
    case 'handed-over':
      return s.phase === 'switchover' ? { phase: 'switched-over', actions: [] } : stay();
    case 'switchover-failed':
      return stay('cancel');
    case 'destination-lost':
      if (s.phase === 'completing' || s.phase === 'lease-wait' || s.phase === 'recovering') return stay();
      if (!handedOver(s.phase)) return stay('cancel', 'backstop');
      return { phase: 'lease-wait', actions: ['wait-for-lease'] };
    case 'lease':
      if (s.phase !== 'lease-wait') return stay();
      return ev.got ? { phase: 'recovering', actions: ['recover'] } : { phase: 'over', actions: ['yield'] };
    case 'qemu-exited':
      // Recovering here replaces the source QEMU on purpose: its exit is not the outcome.
      if (s.phase === 'recovering') return stay();
      return { phase: 'over', actions: ['fail-qemu-exited'] };
  }
}

function onSourceStatus(s: SourceState, status: string): SourceStep {
  switch (status) {
    case 'active':
      if (s.mode === 'postcopy') return { phase: s.phase, actions: ['start-postcopy'] };
      if (s.mode === 'hybrid' && s.postcopyAfterMs !== undefined) return { phase: s.phase, actions: ['start-postcopy-later'] };
      return { phase: s.phase, actions: [] };
    case 'pre-switchover':
      return { phase: s.phase === 'precopy' ? 'switchover' : s.phase, actions: ['switchover'] };
    case 'postcopy-active':
      return { phase: s.phase, actions: ['role-postcopy-src'] };
    case 'completed':
      return { phase: 'completing', actions: ['complete'] };
    case 'failed':
    case 'cancelled':
      return onSourceFailed(s);
    default:
      return { phase: s.phase, actions: [] };
  }
}

/** QEMU's migration failed or was cancelled at the source. */
function onSourceFailed(s: SourceState): SourceStep {
  if (!handedOver(s.phase)) return { phase: 'over', actions: ['run-on-here'] };
  // After the switchover the destination holds the lease: in pre-copy nothing else will tell
  // the source, so it waits for the lease; in post-copy the heartbeat's verdict decides.
  if (s.phase === 'switched-over' && s.mode === 'precopy') return { phase: 'lease-wait', actions: ['wait-for-lease'] };
  return { phase: s.phase, actions: [] };
}

// ------------------------------------------------------------------ ownership

/** The roles in which this side's QEMU runs the guest: they need the lease (post-copy's source only serves pages). */
const RUNS_THE_VM: readonly Role[] = ['owner', 'postcopy-dst', 'migrating-src'];

/** Whether the guest runs on this host in this role (the gate passes inbound datagrams in then). */
export function runsTheVm(role: Role): boolean {
  return RUNS_THE_VM.includes(role);
}

/**
 * Every lease tick, per VM: a side running the VM without a safe lease stops its QEMU.
 * `freeze` (SIGSTOP, kept) where only the store is silent and the VM simply runs here: if the
 * lease comes back to this side unchanged, nobody else ran the VM and the same QEMU goes on, with
 * nothing lost — the only way a VM fenced before its first commit survives. Else `kill`: another
 * host holds the lease (it may run the VM), or a migration is under way (its state is the other
 * side's too).
 */
export function onLeaseTick(s: { role: Role; hasQemu: boolean; lease: LeaseStanding }): { fence: false } | { fence: true; how: 'freeze' | 'kill'; why: string } {
  if (!s.hasQemu || !RUNS_THE_VM.includes(s.role)) return { fence: false };
  if (s.lease === 'lost') return { fence: true, how: 'kill', why: 'the lease is held by another host' };
  if (s.lease === 'unrenewed') return { fence: true, how: s.role === 'owner' ? 'freeze' : 'kill', why: 'cannot reach the store to renew the lease' };
  return { fence: false };
}

/**
 * A fenced VM, once the store answers again: `reclaimed` — the lease came back to this side
 * (nobody held it meanwhile). A frozen QEMU then goes on; without one the VM is recovered from
 * the store, if it has a committed checkpoint — else nothing can bring it back, and retrying
 * would only spin. A lease another host took means that host runs the VM: a frozen QEMU here is killed.
 */
export function onFencedReclaim(s: { reclaimed: boolean; frozen: boolean; hasCheckpoint: boolean }): 'thaw' | 'recover' | 'give-up' | 'kill-frozen' | 'nothing' {
  if (!s.reclaimed) return s.frozen ? 'kill-frozen' : 'nothing';
  if (s.frozen) return 'thaw';
  return s.hasCheckpoint ? 'recover' : 'give-up';
}

// ------------------------------------------------------------------ destination side

/** A MIGRATION event at the destination. */
export function onIncomingStatus(role: Role, status: string): 'nothing' | 'completed' | 'close-peer' {
  if (status === 'completed') return 'completed';
  // The stream broke before the VM ran here; the peer-loss rule decides.
  if (status === 'failed' && role === 'incoming') return 'close-peer';
  return 'nothing';
}

/** QEMU's RESUME at the destination: in post-copy the VM now runs here, RIC starts (once). */
export function onIncomingResume(s: { mode: MigrationMode; resumedBefore: boolean }): 'nothing' | 'start-ric' {
  if (s.resumedBefore || s.mode === 'precopy') return 'nothing'; // pre-copy: completion follows at once
  return 'start-ric';
}

/** The migration completed here: the one checkpoint loop goes on as FIC. */
export function afterIncomingCompleted(s: { hasLoop: boolean; hasDirtySource: boolean }): 'become-fic' | 'start-fic' | 'keep' {
  if (!s.hasLoop) return 'start-fic';
  // RIC's dirty source names what changes from now on: the same loop carries on as FIC.
  return s.hasDirtySource ? 'become-fic' : 'keep';
}

/** The source went silent (or its connection closed) while this side receives the VM. */
export function onSourceLost(s: { role: Role; migrationDone: boolean }): 'nothing' | 'secure-lease' | 'take-lease' {
  if (s.migrationDone) return 'nothing';
  // Post-copy: we hold the lease (handed over at switchover); the pages we lack are in the store.
  if (s.role === 'postcopy-dst') return 'secure-lease';
  // Before the VM ran here: the lease decides whether the source runs on or we recover.
  if (s.role === 'incoming') return 'take-lease';
  return 'nothing';
}

/**
 * Post-copy, source lost, after renewing (or taking) the lease. Recover only while we hold the
 * lease AND reach the store (else: fence, the source may run it); live when QEMU can fill the holes.
 */
export function postcopySourceLost(s: { leaseOk: boolean; canFill: boolean }): 'fence' | 'recover-live' | 'recover-from-store' {
  if (!s.leaseOk) return 'fence';
  return s.canFill ? 'recover-live' : 'recover-from-store';
}

/** Post-copy, source lost, before recovering from the store (a live one was not possible or did not work): not if the migration ended or this side changed role meanwhile. */
export function beforeStoreRecovery(s: { role: Role; migrationDone: boolean }): 'nothing' | 'recover-from-store' {
  return s.migrationDone || s.role !== 'postcopy-dst' ? 'nothing' : 'recover-from-store';
}

/**
 * Source lost before the VM ran here. If the migration already handed us the lease, or the
 * source dies for good, its lease expires and we take it. If the source is alive and reaches
 * the store, it keeps the lease and the VM: we drop our incoming QEMU.
 */
export function incomingSourceLost(s: { gotLease: boolean }): 'drop-incoming' | 'recover' {
  return s.gotLease ? 'recover' : 'drop-incoming';
}
