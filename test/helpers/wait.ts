// The tests poll with the same helper as the CLI and benchmarks.
export { waitFor } from '../../src/util/wait.js';
