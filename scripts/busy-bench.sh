#!/usr/bin/env bash
# Times `netc bench` on a quiet machine and with one busy process per core beside it, with the
# default threads, with one thread, and with the worker pool forced (NETC_DISPATCH=pool, the
# behaviour before the JIT measured its threads): the table of README.md's "Running on a busy
# machine".
#   scripts/busy-bench.sh [SPEC] [ROUNDS]     (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/baseline.net}
rounds=${2:-3}
netc=./target/release/netc
cores=$(nproc)
spinners=()
spin() { for _ in $(seq "$cores"); do sh -c 'while :; do :; done' >/dev/null 2>&1 & spinners+=($!); done; }
stop() { if [ ${#spinners[@]} -gt 0 ]; then kill "${spinners[@]}" 2>/dev/null || true; wait "${spinners[@]}" 2>/dev/null || true; fi; spinners=(); }
trap stop EXIT
epoch() { "$netc" bench "$spec" --json "$@" 2>/dev/null | sed -E 's/.*"sec_per_epoch":([0-9.]+).*/\1/'; }
for state in quiet busy; do
  [ "$state" = busy ] && spin && sleep 1
  for r in $(seq "$rounds"); do
    printf '%s round %s: default %s, --threads 1 %s, pool forced %s s/epoch\n' \
      "$state" "$r" "$(epoch)" "$(epoch --threads 1)" "$(NETC_DISPATCH=pool epoch)"
  done
  stop
done
