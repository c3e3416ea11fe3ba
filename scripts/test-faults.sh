#!/usr/bin/env bash
# The fault-injection matrix: npm run test:faults -- [--runs N] [--lock FILE] [SCENARIO...]
# N trials per scenario (default 3; `npm test` runs 2), every scenario unless some are named
# (test/faults/<scenario>.test.ts). Prints the table (also written to /tmp/migsafe-fault-table.md)
# from every trial, passing or not. --lock FILE: each scenario runs under flock FILE, so that
# other jobs of a shared machine (e.g. /tmp/migsafe-e2e.lock) get in between scenarios, not trials.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${MIGSAFE_FAULT_RUNS:-3}
lock=
files=()
while (($#)); do
  case "$1" in
    --runs) runs=${2:-}; shift 2 || { echo "test:faults: --runs needs a number, e.g. --runs 20" >&2; exit 2; } ;;
    --runs=*) runs=${1#--runs=}; shift ;;
    --lock) lock=${2:-}; shift 2 || { echo "test:faults: --lock needs a file, e.g. --lock /tmp/migsafe-e2e.lock" >&2; exit 2; } ;;
    -h|--help) sed -n 2,6p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      f=dist/test/faults/$1.test.js
      [ -f "test/faults/$1.test.ts" ] || { echo "test:faults: no scenario \"$1\"; the scenarios: $(ls test/faults/*.test.ts | xargs -n1 basename | sed 's/\.test\.ts//' | tr '\n' ' ')" >&2; exit 2; }
      files+=("$f"); shift ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "test:faults: --runs $runs: give a whole number of trials ≥ 1" >&2; exit 2; }
npm run build:ts >/dev/null || exit 1
((${#files[@]})) || files=(dist/test/faults/*.test.js)
export MIGSAFE_FAULT_RESULTS=${MIGSAFE_FAULT_RESULTS:-/tmp/migsafe-fault-results.jsonl}
rm -f "$MIGSAFE_FAULT_RESULTS"
# A scenario file holds N trials; give tap's per-file timeout room for them.
if [ -n "$lock" ]; then
  s=0
  for f in "${files[@]}"; do
    MIGSAFE_FAULT_RUNS=$runs flock "$lock" npx tap --timeout $((300 * runs + 300)) "$f" || s=1
  done
else
  MIGSAFE_FAULT_RUNS=$runs npx tap --timeout $((300 * runs + 300)) "${files[@]}"
  s=$?
fi
MIGSAFE_FAULT_TABLE=/tmp/migsafe-fault-table.md node dist/test/faults/table.js
exit $s
