#!/usr/bin/env bash
# GPU check for the cuda aggregation engine (issue 4).
#
#   scripts/gpu-check.sh headers  fetch cuda.h and the libcuda link stub (CUDA 11.8,
#                                 Debian bookworm non-free nvidia-cuda-dev) into $CUDA_DIR
#   scripts/gpu-check.sh vet      go vet -tags cuda against those headers
#   scripts/gpu-check.sh build    build .devcarry/cuda.test (tests + embedded PTX) and
#                                 .devcarry/gpu-run.sh; needs Go, never runs the binary
#   scripts/gpu-check.sh run      on the GPU machine, bash only: correctness of every
#                                 kernel vs a float64 CPU reference, then CUDA-event
#                                 timings; the table comes last
#
# A cuda-tagged binary exits at start on a machine without a GPU (gorgonia.org/cu's
# init), so build and vet here, run there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CUDA_DIR="${CUDA_DIR:-$root/.cache/cuda}" # the Makefile's and .ci/run's folder
OUT="${GPU_CHECK_DIR:-$root/.devcarry}"

cuda_env() {
	if [ ! -f "$CUDA_DIR/usr/include/cuda.h" ] && [ -f /usr/include/cuda.h ]; then
		return # full install: cu's built-in paths find it
	fi
	[ -f "$CUDA_DIR/usr/include/cuda.h" ] || headers
	export CGO_CFLAGS="-I$CUDA_DIR/usr/include"
	export CGO_LDFLAGS="-L$CUDA_DIR/usr/lib/x86_64-linux-gnu/stubs"
}

headers() {
	if [ -f "$CUDA_DIR/usr/include/cuda.h" ]; then
		return
	fi
	# Needs the non-free component in the apt sources (contrib non-free).
	mkdir -p "$CUDA_DIR"
	(
		cd "$CUDA_DIR"
		apt-get download nvidia-cuda-dev
		dpkg-deb --fsys-tarfile nvidia-cuda-dev_*.deb |
			tar -x ./usr/include/cuda.h ./usr/lib/x86_64-linux-gnu/stubs/libcuda.so
		rm -f nvidia-cuda-dev_*.deb
	)
	grep -q 'define CUDA_VERSION 11080' "$CUDA_DIR/usr/include/cuda.h"
}

case "${1:-}" in
headers)
	headers
	echo "CUDA headers in $CUDA_DIR"
	;;
vet)
	cuda_env
	go vet -tags cuda ./cuda/... ./kernels/... ./node/agg/...
	;;
build)
	cuda_env
	mkdir -p "$OUT"
	go test -c -tags cuda -o "$OUT/cuda.test" ./cuda
	cat >"$OUT/gpu-run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the cuda engine's GPU tests; needs only bash, the NVIDIA driver and cuda.test.
set -uo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="${GPU_LOG:-$dir/gpu-check.log}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# Resolve every driver symbol now, so a missing one fails here and not mid-run.
LD_BIND_NOW=1 "$dir/cuda.test" -test.run '^$' >/dev/null || { echo "cuda.test cannot start (driver or libcuda.so.1 missing?)"; exit 1; }
"$dir/cuda.test" -test.v -test.count 1 -test.run '^TestGPU' -test.timeout 8m "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
echo
grep -E '^--- (PASS|FAIL)|^(PASS|FAIL|ok)' "$log" | tail -n 20
sed -n '/^=== GPU aggregation table/,/^=== end of table/p' "$log"
exit "$rc"
RUN
	chmod +x "$OUT/gpu-run.sh"
	ls -l "$OUT/cuda.test" "$OUT/gpu-run.sh"
	;;
run)
	exec bash "$OUT/gpu-run.sh" "${@:2}"
	;;
*)
	sed -n '2,15p' "$0"
	exit 2
	;;
esac
