#!/usr/bin/env bash
# netc against its fastest peer, side by side in one run: JAX's whole-epoch XLA program
# (scripts/peers/jax_epoch.py) and `netc bench specs/baseline.net` on every tier this CPU has,
# alternating, ROUNDS times per batch size, then the median seconds per epoch of each.
#
# Needs `pip install jax optax` (CPU wheels) and a release build. The machine is shared: read
# the ratios within a round, not the absolute figures.
#
# Usage: scripts/peers/side_by_side.sh [ROUNDS] [BATCHES...]    (default: 3 rounds, 32 and 256)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift || true
batches=("${@:-32 256}")
# shellcheck disable=SC2206
batches=(${batches[*]})
cargo build --release --locked --quiet
netc=./target/release/netc
# Every tier this CPU runs: netc refuses the others.
tiers=f32x4
for t in avx2 avx512; do
  if $netc bench specs/baseline.net --tier "$t" --steps 1 --repeats 1 >/dev/null 2>&1; then
    tiers="$tiers $t"
  fi
done
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for batch in "${batches[@]}"; do
  for round in $(seq "$rounds"); do
    python3 scripts/peers/jax_epoch.py --batch "$batch" --epochs 3 | tail -1 |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('jax', r['batch'], r['sec_per_epoch'])" >>"$results"
    for tier in $tiers; do
      # Half an epoch per timed repetition, the median of five.
      $netc bench specs/baseline.net --batch "$batch" --tier "$tier" --json \
        --steps $((45000 / batch / 2)) --repeats 5 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('netc-' + r['tier'], r['batch'], r['sec_per_epoch'])" >>"$results"
    done
    echo "batch $batch, round $round done" >&2
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, batch, sec = line.split()
    rows.setdefault((who, int(batch)), []).append(float(sec))
print("| trainer | batch | s/epoch (median) | runs | JAX / it |")
print("|---|---|---|---|---|")
for (who, batch), secs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    jax = statistics.median(rows[("jax", batch)])
    med = statistics.median(secs)
    runs = ", ".join(f"{s:.2f}" for s in secs)
    print(f"| {who} | {batch} | {med:.2f} | {runs} | {jax / med:.2f} |")
EOF
