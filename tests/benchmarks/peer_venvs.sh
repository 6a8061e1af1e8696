#!/usr/bin/env bash
# Virtual environments for the peer libraries the benchmarks compare against, outside the repo and
# never in requirements/dev.lock (they pin other versions: langchain-postgres wants pgvector<0.4).
# Usage: tests/benchmarks/peer_venvs.sh index|trl   (prints the venv's path)
#   index: langchain-postgres + llama-index-vector-stores-postgres (for index_peers.py)
#   trl:   requirements/dev.lock + trl (same torch/transformers/peft as ours; for finetune_throughput.py --trl)
set -euo pipefail
which="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache_root="${TUNERAG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunerag}"
venv="$cache_root/bench-$which"
if [[ -f "$venv/.complete" ]]; then
  echo "$venv"
  exit 0
fi
rm -rf "$venv"
uv venv --quiet --python "${TUNERAG_PYTHON:-python3}" "$venv" >&2
case "$which" in
  index)
    uv pip install --quiet --python "$venv/bin/python" \
      "langchain-postgres==0.0.19" "llama-index-vector-stores-postgres==0.9.0" "llama-index-core==0.14.25" numpy >&2 ;;
  trl)
    uv pip sync --quiet --python "$venv/bin/python" "$root/requirements/dev.lock" >&2
    uv pip install --quiet --python "$venv/bin/python" -c "$root/requirements/dev.lock" "trl==1.16.0" >&2 ;;
  *) echo "usage: $0 index|trl" >&2; exit 2 ;;
esac
touch "$venv/.complete"
echo "$venv"
