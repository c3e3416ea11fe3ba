// The experiments of issue 21 that are not built yet: the report names them and says why.
// Nothing here is measured, and no number stands in for one. (E8 was the last: it is built,
// eval/e8-request-latency.ts.)
import type { NotRun } from './common.js';

export const NOT_RUN: NotRun[] = [];
