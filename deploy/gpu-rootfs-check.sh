#!/usr/bin/env bash
# gpu-rootfs-check.sh: on a GPU host, runs the GPU image's root filesystem
# (.cache/docker-gpu, staged by docker-build-gpu.sh) the way the NVIDIA
# container runtime would, without needing Docker: chroot into a copy, with
# the host driver's libcuda.so.1 put into /usr/lib/x86_64-linux-gnu and /dev
# and /proc mounted (private mount namespace). Starts a scheduler and one
# server with --engine=cuda inside it and checks the server's /status says
# "engine":"cuda". Needs root (chroot, mount). Output and logs in ${OUT:-/tmp}.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
staged=.cache/docker-gpu
out=${OUT:-/tmp}
[[ -x $staged/fedcluster ]] || { echo "no staged rootfs: run deploy/docker-build-gpu.sh first" >&2; exit 1; }
nvidia-smi -L || true
libcuda=$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/{print $NF; exit}')
[[ -n $libcuda ]] || libcuda=$(find / -xdev -name 'libcuda.so.1' 2>/dev/null | head -1)
echo "host libcuda: $libcuda -> $(readlink -f "$libcuda")"
root=$(mktemp -d)
cp -a "$staged"/. "$root"/
mkdir -p "$root/usr/lib/x86_64-linux-gnu" "$root/dev" "$root/proc"
# What the runtime's "compute" capability mounts: libcuda and the PTX JIT
# compiler it dlopens (fedcluster loads PTX, so the JIT is required), plus
# libnvidia-nvvm where the driver has it.
for lib in libcuda.so.1 libnvidia-ptxjitcompiler.so.1 libnvidia-nvvm.so.4; do
	src=$(dirname "$libcuda")/$lib
	if [[ -e $src ]]; then
		cp -L "$src" "$root/usr/lib/x86_64-linux-gnu/$lib"
		echo "driver library: $src"
	fi
done
# libcuda's own dependencies must be in the image already (glibc parts).
ldd "$libcuda" | sed 's/^/  libcuda needs: /'
rc=0
unshare --mount --fork -- bash -euo pipefail -c '
root=$1 out=$2
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu TMPDIR=/tmp \
  chroot "$root" /fedcluster scheduler --scheduler_port=16667 --scheduler_manage_port=16668 --server_num=1 >"$out/scheduler.log" 2>&1 &
sp=$!
LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu TMPDIR=/tmp \
  chroot "$root" /fedcluster server --scheduler_port=16667 --fl_server_port=16669 --server_num=1 --node_id=0 --engine=cuda --checkpoint_dir=/data/checkpoints >"$out/server.log" 2>&1 &
vp=$!
st=
for i in $(seq 1 150); do
  st=$(curl -s --max-time 1 http://127.0.0.1:16669/status || true)
  grep -q CLUSTER_READY <<<"$st" && break
  sleep 0.2
done
echo "server /status: $st"
kill -TERM $vp $sp 2>/dev/null || true
wait $vp $sp 2>/dev/null || true
grep -q "\"engine\":\"cuda\"" <<<"$st"
' _ "$root" "$out" || rc=$?

tail -5 "$out/server.log"
rm -rf "$root"
echo "RESULT rc=$rc"
exit $rc
