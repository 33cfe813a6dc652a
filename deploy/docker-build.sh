#!/usr/bin/env bash
# docker-build.sh [TAG]: builds the static binary on the host (make build),
# then the FROM-scratch image fedcluster:cpu (or TAG) from Dockerfile.cpu.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
tag=${1:-fedcluster:cpu}
make build
# The image must get a static binary: refuse a dynamically linked one.
if file bin/fedcluster 2>/dev/null | grep -q 'dynamically linked'; then
	echo "docker-build.sh: bin/fedcluster is dynamically linked; build it with CGO_ENABLED=0" >&2
	exit 1
fi
docker build -f Dockerfile.cpu -t "$tag" .
