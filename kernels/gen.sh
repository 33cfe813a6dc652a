#!/bin/sh
# Regenerates the committed PTX from fold.cu with nvcc 11.8 (Debian bookworm
# non-free nvidia-cuda-toolkit). compute_90 for Hopper, compute_70 as the
# generic target the driver JIT-compiles for anything from Volta on.
set -eu
cd "$(dirname "$0")"
for arch in 90 70; do
	nvcc --ptx -O3 -arch=compute_$arch -o fold_compute$arch.ptx fold.cu
done
