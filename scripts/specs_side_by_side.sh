#!/usr/bin/env bash
# Specs against the first one, side by side in one run: `netc bench` on each spec in turn,
# ROUNDS times, then each spec's median milliseconds per step and its ratio to the first's.
# This is how "within 25% of the baseline" is measured; the machine is shared, so read the
# ratios of medians, not single rounds.
#
# Usage: scripts/specs_side_by_side.sh ROUNDS SPEC... [-- BENCH_FLAGS...]
#   e.g. scripts/specs_side_by_side.sh 7 baseline batch_norm selu alpha_dropout -- --tier avx512
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: $0 ROUNDS SPEC... [-- BENCH_FLAGS...]}
shift
specs=()
while [[ $# -gt 0 && $1 != "--" ]]; do
  specs+=("$1")
  shift
done
[[ ${1:-} == "--" ]] && shift
cargo build --release --locked --quiet
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$rounds"); do
  for spec in "${specs[@]}"; do
    ./target/release/netc bench "specs/$spec.net" --json --steps 300 --repeats 3 "$@" |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('$spec', r['tier'], r['step_ms'])" >>"$results"
  done
  echo "round $round done" >&2
done
python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.OrderedDict()
for line in open(sys.argv[1]):
    spec, tier, ms = line.split()
    runs.setdefault((spec, tier), []).append(float(ms))
first = None
for (spec, tier), ms in runs.items():
    median = statistics.median(ms)
    first = first or median
    rounds = " ".join(f"{m:.3f}" for m in ms)
    print(f"{spec:<16} {tier:<7} median {median:.3f} ms/step  {median / first:.2f}x  ({rounds})")
PY
