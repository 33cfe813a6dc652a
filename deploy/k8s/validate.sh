#!/usr/bin/env bash
# validate.sh: renders deploy/k8s with kustomize (kubectl kustomize, offline)
# and checks every object against the Kubernetes API types (check/, a small
# separate Go module; needs the Go module proxy the first time).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
kubectl kustomize . >"$out"
(cd check && go run . "$out")
