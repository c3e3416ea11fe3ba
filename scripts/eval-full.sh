#!/usr/bin/env bash
# The full run of `npm run eval` as committed under eval/report/: one invocation per experiment
# (and per guest size for E4, per group of intervals for E6), each under the e2e lock so that no
# piece holds it for more than a few minutes on a shared machine, into one output directory;
# then the report is redrawn from all of their raw results. A piece that fails is said and the
# others still run (its experiment shows as not run in the report).
# Usage: bash scripts/eval-full.sh [OUT_DIR]   (default eval/out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-eval/out}"
lock=/tmp/migsafe-e2e.lock
t0=$(date +%s)
failed=()
run() {
  echo "== npm run eval -- $* --out $out" >&2
  flock "$lock" node dist/eval/cli.js "$@" --out "$out" >/dev/null || failed+=("$*")
}
run --only E1
run --only E2,E5 --runs 3
run --only E3 --runs 3
run --only E6 --intervals 10,50 --runs 2
run --only E6 --intervals 100,500,1000 --runs 2
run --only E4,E7 --sizes 256 --runs 3
run --only E4,E7 --sizes 1024 --runs 3
run --only E4,E7 --sizes 2048 --runs 2
run --only E4,E7 --sizes 4096 --runs 1
run --only E8 --runs 3
secs=$(( $(date +%s) - t0 ))
node dist/eval/cli.js --report-only --out "$out" \
  --note "Full run: \`bash scripts/eval-full.sh\` (the invocations below, each under flock /tmp/migsafe-e2e.lock), $secs s wall including waits for the lock, finished $(date -u +%FT%TZ)${failed[*]:+; failed: ${failed[*]}}." >/dev/null
echo "eval-full: $secs s (wall, lock waits included)" >&2
if ((${#failed[@]})); then printf 'eval-full: failed: %s\n' "${failed[@]}" >&2; exit 1; fi
