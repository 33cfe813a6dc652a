#!/usr/bin/env bash
# The system benchmark of two builds, interleaved: the working tree ("new")
# against a git revision ("base"), in rounds of base, new, new, base, so
# that a machine whose speed drifts over minutes (the 2-vCPU VMs this
# project is measured on drift by ±20 %) weighs on both alike. Both builds
# run under the same compiled ./bench test binary (FEDCLUSTER_BIN picks
# the fedcluster binary it starts).
#
#   scripts/bench-ab.sh BASE_REV [PATTERN] [ROUNDS] [BENCHTIME]
#
# PATTERN defaults to 'DeviceCycle/lenet/(1|4)srv/8dev$', ROUNDS to 3,
# BENCHTIME to 3s. Writes base.txt and new.txt (go test -bench output,
# benchstat's input: 2 × ROUNDS runs each) into $AB_OUT (default
# ./bench-ab), then prints the medians of the metrics that decide issue
# goals: devIter/s, the switch as the devices and the scheduler see it, the
# servers' CPU per device-iteration, RSS over the model and failed
# requests. A run that fails is reported and kept in its file, the rounds
# go on, and the script exits 1 at the end. Set FEDCLUSTER_BENCH_HEAVY=1
# for the 10M and 1,024-device cases.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ $# -lt 1 ]; then
	sed -n '2,19p' "$0"
	exit 2
fi
base_rev="$1"
pattern="${2:-DeviceCycle/lenet/(1|4)srv/8dev\$}"
rounds="${3:-3}"
benchtime="${4:-3s}"
out="${AB_OUT:-$root/bench-ab}"
git rev-parse --verify --quiet "$base_rev^{commit}" >/dev/null || {
	echo "bench-ab: $base_rev is not a commit" >&2
	exit 2
}

work="$(mktemp -d)"
cleanup() {
	git worktree remove --force "$work/base" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach --quiet "$work/base" "$base_rev"
(cd "$work/base" && CGO_ENABLED=0 go build -o "$work/fedcluster-base" ./cmd/fedcluster)
CGO_ENABLED=0 go build -o "$work/fedcluster-new" ./cmd/fedcluster
go test -c -o "$work/bench.test" ./bench

mkdir -p "$out"
: >"$out/base.txt"
: >"$out/new.txt"
failed=0
run() { # run base|new
	echo "bench-ab: round $r, $1" >&2
	local before
	before=$(grep -c '^Benchmark' "$out/$1.txt" || true)
	if ! FEDCLUSTER_BIN="$work/fedcluster-$1" "$work/bench.test" -test.run '^$' \
		-test.bench "$pattern" -test.benchtime "$benchtime" | tee -a "$out/$1.txt" | { grep -E '^(Benchmark|FAIL)' >&2 || true; }; then
		echo "bench-ab: round $r, $1 failed; its output is in $out/$1.txt" >&2
		failed=1
	elif [ "$(grep -c '^Benchmark' "$out/$1.txt" || true)" = "$before" ]; then
		# go test splits -bench at every '/', groups included: '(1srv/8|4srv/8)dev' matches nothing.
		echo "bench-ab: '$pattern' matched no benchmark (go test cuts the pattern at each '/': keep an alternation within one level)" >&2
		exit 2
	fi
}
for r in $(seq "$rounds"); do
	run base
	run new
	run new
	run base
done

# Medians per benchmark and metric, base against new.
awk '
FNR == 1 { build = (FILENAME ~ /base\.txt$/) ? "base" : "new" }
/^Benchmark/ {
	for (i = 3; i < NF; i += 2) {
		if ($(i + 1) !~ /^(devIter\/s|switch-dev-p50-ms|switch-sched-p50-ms|srvCPU-us\/devIter|RSS\/model|failed)$/)
			continue
		key = $1 " " $(i + 1)
		keys[key] = 1
		n[key, build]++
		v[key, build, n[key, build]] = $i
	}
}
function median(key, b,    m, i, j, t, a) {
	m = n[key, b]
	if (m == 0) return "-"
	for (i = 1; i <= m; i++) a[i] = v[key, b, i]
	for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
END {
	printf "%-48s %-20s %12s %12s\n", "benchmark", "metric (median)", "base", "new"
	for (key in keys) {
		split(key, k, " ")
		printf "%-48s %-20s %12s %12s\n", k[1], k[2], median(key, "base"), median(key, "new")
	}
}' "$out/base.txt" "$out/new.txt" | { read -r header; echo "$header"; sort; }
echo "bench-ab: runs in $out/base.txt and $out/new.txt (benchstat base.txt new.txt)"
exit "$failed"
