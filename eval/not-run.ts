// The experiments of issue 21 that are not built yet: the report names them and says why.
// Nothing here is measured, and no number stands in for one.
import type { NotRun } from './common.js';

export const NOT_RUN: NotRun[] = [
  {
    id: 'E8',
    title: 'Event-based vs continuous RIC: request latency of a network service',
    paper: 'V-Recover Fig. 13–15',
    why: 'not built yet: the test guest has no request/response service (its udp workload only sends datagrams to a peer), so there is no request latency to time; what output commit adds to each outgoing packet is measured elsewhere (migsafe_gate_hold_seconds, docs/metrics.md) but not wired into a benchmark that compares event-based RIC (--ric-event), continuous RIC (--no-ric-event) and plain post-copy',
  },
];
