#!/usr/bin/env bash
# Creates (or reuses) a virtual environment for a lock file, cached outside the clone and keyed by
# the lock file's digest, and prints its path. Usage: .ci/venv.sh requirements/dev.lock
# Several lock files make one environment (keyed by all of them, in order):
# .ci/venv.sh requirements/dev.lock requirements/mutation.lock
# The project's own packages are not installed into it (the clone moves between runs); callers put
# operator/src, workloads/src and tests on PYTHONPATH instead.
set -euo pipefail
cache_root="${TUNERAG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunerag}"
name="$(for lock in "$@"; do basename "$lock" .lock; done | paste -sd+ -)"
key="$(cat "$@" | sha256sum | cut -c1-16)"
venv="$cache_root/venvs/$name-$key"
if [[ -f "$venv/.complete" ]]; then
  echo "$venv"
  exit 0
fi
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv >&2
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
uv venv --quiet --python "${TUNERAG_PYTHON:-python3}" "$venv" >&2
VIRTUAL_ENV="$venv" uv pip sync --quiet --python "$venv/bin/python" "$@" >&2
touch "$venv/.complete"
echo "$venv"
