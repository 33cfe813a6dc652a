#!/usr/bin/env bash
# The device cycle with 8 and 32 devices beside Flower's round with as many
# clients (PERF.md's peer), measured in the same run on this machine, rounds
# interleaved (ours, Flower's, ours, ...). Issue 5's goal, 10 × Flower's
# updates/s, is read as the ratio of the two.
#
#   scripts/cycle-peers.sh [rounds] [seconds]   (default 3 rounds of 3 s;
#       needs python3-grpcio, python3-protobuf and python3-numpy)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
secs="${2:-3}"
. scripts/peers-lib.sh
py="$(peer_python cycle-peers 'grpc, google.protobuf, numpy' 'python3-grpcio python3-protobuf python3-numpy')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$work/fedcluster" ./cmd/fedcluster
go test -c -o "$work/bench.test" ./bench
for r in $(seq "$rounds"); do
	(cd bench && FEDCLUSTER_BIN="$work/fedcluster" "$work/bench.test" -test.run '^$' \
		-test.bench 'DeviceCycle/lenet/1srv/(8|32)dev$' -test.benchtime "${secs}s") |
		awk '/^BenchmarkDeviceCycle/ {
			n = $1; sub(/.*\//, "", n); sub(/dev.*/, "", n)
			for (i = 2; i < NF; i++) if ($(i + 1) == "updates/s") print "fedcluster", n, $i
		}' | tee -a "$work/rates"
	for n in 8 32; do
		"$py" bench/peers/flower_round.py "$n" "$secs" |
			awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print "flower", v["clients"], v["updates_per_s"] }' |
			tee -a "$work/rates"
	done
done
awk "$median_awk"'
	{ k = $1 " " $2; n[k]++; v[k, n[k]] = $3 }
	END {
		for (d = 8; d <= 32; d *= 4) {
			rounds = ""; below = 0
			for (i = 1; i <= n["fedcluster " d] && i <= n["flower " d]; i++) {
				r = v["fedcluster " d, i] / v["flower " d, i]
				rounds = rounds sprintf(" %.1f", r)
				if (r < 10) below++
			}
			printf "%d devices, ratio per round:%s (%d below 10)\n", d, rounds, below
			ours = median("fedcluster " d); fl = median("flower " d)
			printf "%d devices: fedcluster %.0f updates/s, Flower round %.0f updates/s (medians): %.1f x (goal 10 x): %s\n",
				d, ours, fl, ours / fl, (ours >= 10 * fl ? "met" : "not met")
		}
	}' "$work/rates"
