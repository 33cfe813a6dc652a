#!/usr/bin/env bash
# FedAvg of 100 x 1M float32: fedcluster's BenchmarkFedAvg100x1M beside
# Flower's aggregate and numpy's best hand-written average (PERF.md's peers),
# measured in the same run on this machine, rounds interleaved (ours, peers,
# ours, peers, ...). Issue 4's goal, 14 ms against Flower's 168 ms and
# numpy's 21.6 ms on PERF.md's machine, is read as the ratios it implies.
#
#   scripts/fedavg-peers.sh [rounds]     (default 3; needs python3-numpy)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
. scripts/peers-lib.sh
py="$(peer_python fedavg-peers 'numpy' 'python3-numpy')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/native.test" ./native/
for r in $(seq "$rounds"); do
	"$work/native.test" -test.run '^$' -test.bench '^BenchmarkFedAvg100x1M$' -test.count 3 |
		awk '/^BenchmarkFedAvg100x1M/ { printf "ours fedcluster %.1f\n", $3 / 1e6 }' >>"$work/times"
	"$py" bench/peers/fedavg_numpy.py 5 | tee -a "$work/peers" | awk '{ print $1, $2, $3 }' >>"$work/times"
done
echo "round times (ms):"
awk '{ t[$2] = t[$2] " " $3 } END { for (k in t) print "  " k ":" t[k] }' "$work/times" | sort
awk "$median_awk"'
	{ n[$2]++; v[$2, n[$2]] = $3 }
	END {
		ours = median("fedcluster"); flower = median("flower_aggregate")
		best = ""; for (k in n) if (k ~ /^numpy_/ && (best == "" || median(k) < median(best))) best = k
		np = median(best)
		printf "medians: fedcluster %.1f ms, %s %.1f ms (numpy best), flower_aggregate %.1f ms\n", ours, best, np, flower
		printf "fedcluster / numpy best = %.3f (goal <= 14/21.6 = %.3f): %s\n", ours / np, 14 / 21.6, ours / np <= 14 / 21.6 ? "met" : "not met"
		printf "fedcluster / flower     = %.3f (goal <= 14/168 = %.3f): %s\n", ours / flower, 14 / 168, ours / flower <= 14 / 168 ? "met" : "not met"
		printf "fedcluster absolute: %.1f ms (goal 14 ms on PERF.md machine)\n", ours
	}' "$work/times"
