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
py="${PYTHON:-python3}"
if ! "$py" -c 'import numpy' 2>/dev/null; then
	if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
		py=/usr/bin/python3
	else
		echo "fedavg-peers: numpy is missing: apt-get install python3-numpy (or set PYTHON)" >&2
		exit 1
	fi
fi
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
awk '
	{ n[$2]++; v[$2, n[$2]] = $3 }
	function median(k,   i, j, a, m, x) {
		m = n[k]
		for (i = 1; i <= m; i++) a[i] = v[k, i]
		for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	END {
		ours = median("fedcluster"); flower = median("flower_aggregate")
		best = ""; for (k in n) if (k ~ /^numpy_/ && (best == "" || median(k) < median(best))) best = k
		np = median(best)
		printf "medians: fedcluster %.1f ms, %s %.1f ms (numpy best), flower_aggregate %.1f ms\n", ours, best, np, flower
		printf "fedcluster / numpy best = %.3f (goal <= 14/21.6 = %.3f): %s\n", ours / np, 14 / 21.6, ours / np <= 14 / 21.6 ? "met" : "not met"
		printf "fedcluster / flower     = %.3f (goal <= 14/168 = %.3f): %s\n", ours / flower, 14 / 168, ours / flower <= 14 / 168 ? "met" : "not met"
		printf "fedcluster absolute: %.1f ms (goal 14 ms on PERF.md machine)\n", ours
	}' "$work/times"
