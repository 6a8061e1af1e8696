#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the pinned Go modules in tests/substrate/go and caches the
# binaries outside the clone, keyed by a digest of the go.mod/go.sum/main.go files. Prints the
# directory that holds both binaries. A second run with the same pins is a cache hit (no Go work).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TUNERAG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunerag}"
key="$(cd "$here/go" && cat */go.mod */go.sum */main.go | sha256sum | cut -c1-16)"
out="$cache_root/controlplane/$key"
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi
# One build at a time (a `make test` and a `make quickstart` started together): the second waits
# for the first, then finds its binaries. Without the lock the later one's rename removed the
# earlier one's result.
mkdir -p "$cache_root/controlplane"
exec 9>"$cache_root/controlplane/.lock"
flock 9
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath"
for component in etcd kube-apiserver; do
  start=$(date +%s)
  (cd "$here/go/$component" && go build -ldflags="-s -w" -o "$out.tmp/$component" .)
  echo "built $component in $(( $(date +%s) - start ))s" >&2
done
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
