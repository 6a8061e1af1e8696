#!/usr/bin/env bash
# Builds versitygw (github.com/versity/versitygw: a real S3 gateway over a POSIX folder) from the
# pinned Go module in tests/substrate/go-s3/versitygw and caches the binary outside the clone,
# keyed by a digest of its go.mod/go.sum, as build-controlplane.sh does for kube-apiserver/etcd
# (a folder of its own, so these pins do not change the control plane's key). Prints the path of
# the binary. A second run with the same pins is a cache hit (no Go work).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TUNERAG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunerag}"
module="$here/go-s3/versitygw"
key="$(cd "$module" && cat go.mod go.sum | sha256sum | cut -c1-16)"
out="$cache_root/s3/$key"
if [[ -x "$out/versitygw" ]]; then
  echo "$out/versitygw"
  exit 0
fi
# One build at a time, as build-controlplane.sh: a second set-up waits, then finds the binary.
mkdir -p "$cache_root/s3"
exec 9>"$cache_root/s3/.lock"
flock 9
if [[ -x "$out/versitygw" ]]; then
  echo "$out/versitygw"
  exit 0
fi
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath"
start=$(date +%s)
# The module declares versitygw's command as a `tool`: it builds the upstream main package as is.
(cd "$module" && go build -ldflags="-s -w" -o "$out.tmp/versitygw" github.com/versity/versitygw/cmd/versitygw)
echo "built versitygw in $(( $(date +%s) - start ))s" >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/versitygw"
