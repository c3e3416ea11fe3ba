// The experiments of issue 21 that are not built yet: the report names them and says why.
// Nothing here is measured, and no number stands in for one.
import type { NotRun } from './common.js';

export const NOT_RUN: NotRun[] = [
  {
    id: 'E8',
    title: 'Event-based vs continuous RIC: request latency of a network service',
    paper: 'V-Recover Fig. 13–15',
    why: 'not built yet: it needs a request/response client in a network namespace timing each request of the guest\'s udp workload over a post-copy migration, per RIC mode (the udp workload and the namespaces exist; the client and the event-based/continuous switch are not wired into a benchmark)',
  },
];
