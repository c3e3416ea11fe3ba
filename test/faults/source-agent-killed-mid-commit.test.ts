// Fault matrix, one scenario: see test/faults/matrix.ts.
import { scenarioTests } from './matrix.js';

scenarioTests('source-agent-killed-mid-commit');
