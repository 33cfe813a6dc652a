#!/usr/bin/env bash
# docker-build-gpu.sh [TAG]: builds the CUDA binary and the image
# fedcluster:gpu (or TAG) from Dockerfile.gpu, without any base image.
#
#   1. CUDA headers: if $CUDA_DIR (default .cache/cuda) lacks cuda.h and the
#      libcuda.so link stub, fetch them the light way: `apt-get download
#      nvidia-cuda-dev` (Debian bookworm non-free, CUDA 11.8) and extract the
#      two files. Enable the non-free component first if apt cannot find it.
#   2. make build-cuda -> bin/fedcluster-cuda (cgo, -tags cuda).
#   3. Stage a root filesystem in .cache/docker-gpu/: the binary and the shared
#      libraries ldd lists (glibc's libc.so.6, ld-linux, ...) except libcuda,
#      which the NVIDIA container runtime mounts from the host driver into
#      /usr/lib/x86_64-linux-gnu at run time.
#   4. docker build -f Dockerfile.gpu -t fedcluster:gpu .cache/docker-gpu
#
# Run it on a GPU host with the NVIDIA container toolkit:
#   docker run --gpus all fedcluster:gpu server --engine=cuda ...
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
tag=${1:-fedcluster:gpu}
CUDA_DIR=${CUDA_DIR:-$PWD/.cache/cuda}
export CUDA_DIR

hdr=$CUDA_DIR/usr/include/cuda.h
stub=$CUDA_DIR/usr/lib/x86_64-linux-gnu/stubs/libcuda.so
if [[ ! -f $hdr || ! -f $stub ]]; then
	echo "docker-build-gpu.sh: fetching cuda.h and the libcuda stub into $CUDA_DIR"
	if ! apt-cache show nvidia-cuda-dev >/dev/null 2>&1; then
		src=/etc/apt/sources.list.d/debian.sources
		if [[ $(id -u) -ne 0 ]]; then
			echo "docker-build-gpu.sh: apt does not know nvidia-cuda-dev; enable Debian's non-free component (as root) and run apt-get update" >&2
			exit 1
		fi
		if [[ -f $src ]] && ! grep -q '^Components:.*non-free' "$src"; then
			sed -i 's/^Components: main.*/& contrib non-free/' "$src"
		fi
		apt-get update -qq
	fi
	mkdir -p "$CUDA_DIR"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -qq nvidia-cuda-dev)
	dpkg-deb --fsys-tarfile "$tmp"/nvidia-cuda-dev_*.deb |
		tar -x -C "$CUDA_DIR" ./usr/include/cuda.h ./usr/lib/x86_64-linux-gnu/stubs/libcuda.so
fi

make build-cuda CUDA_DIR="$CUDA_DIR"

# Stage the root filesystem: binary + the exact libraries it loads.
root=.cache/docker-gpu
rm -rf "$root"
mkdir -p "$root/tmp" "$root/data" "$root/etc"
cp bin/fedcluster-cuda "$root/fedcluster"
# ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
# "/lib64/ld-linux-x86-64.so.2 (0x...)", "libcuda.so.1 => not found".
ldd bin/fedcluster-cuda | while read -r a b c _; do
	case "$a" in linux-vdso.so.* | libcuda.so*) continue ;; esac
	if [[ $b == "=>" ]]; then
		[[ $c == /* ]] || { echo "docker-build-gpu.sh: unresolved library $a" >&2; exit 1; }
		lib=$c
	else
		lib=$a
	fi
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
	echo "staged $lib"
done
# The loader finds the runtime-mounted libcuda.so.1 through this file (the
# NVIDIA runtime's ldconfig hook) or LD_LIBRARY_PATH (see Dockerfile.gpu).
printf '/usr/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n' >"$root/etc/ld.so.conf"
cp Dockerfile.gpu "$root/Dockerfile"
printf 'Dockerfile\n.dockerignore\n' >"$root/.dockerignore"
docker build -f "$root/Dockerfile" -t "$tag" "$root"
