#!/usr/bin/env bash
# Validates deploy/ offline: kustomize renders the base and the example
# overlay, kubernetes-validate --strict (schemas bundled in the package, no
# network) accepts every object for the pinned Kubernetes version, and
# yamllint is clean. Needs kubectl, kubernetes-validate and yamllint on PATH
# (.ci/run installs the last two with pip).
# Usage: deploy/k8s/validate.sh [KUBERNETES_VERSION]   (default 1.31.0)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:-1.31.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A copy with a throwaway key: never touch a real key in the overlay.
cp -r deploy/k8s "$tmp/k8s"
head -c 32 /dev/urandom >"$tmp/k8s/overlays/example/authkey"
for target in base overlays/example; do
    out="$tmp/$(echo "$target" | tr / -).yaml"
    kubectl kustomize "$tmp/k8s/$target" >"$out"
    objects=$(grep -c '^kind:' "$out")
    kubernetes-validate --kubernetes-version "$version" --strict --quiet "$out"
    echo "deploy/k8s/$target: $objects objects valid for Kubernetes $version (strict)"
done
yamllint --strict -c deploy/.yamllint.yaml deploy/
echo "yamllint: deploy/ clean"
