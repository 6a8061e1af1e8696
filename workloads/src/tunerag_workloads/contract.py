"""The contract between the operator and a workload container (see docs/design-notes.md).

- Input: a JSON file (path in argv[1], or $TUNERAG_SPEC) holding
  {"kind", "namespace", "name", "generation", "spec": {...camelCase spec...}}.
  Secrets arrive as environment variables (e.g. TUNERAG_DB_URI), never in the file.
- Progress: JSON lines on stdout prefixed with `TUNERAG_PROGRESS `; the operator tails the log.
- Result: one compact JSON object (at most 4 KiB, the kubelet's limit) written to
  $TUNERAG_RESULT_PATH (default /dev/termination-log, the container's termination message).
  Success: {"ok": true, ...}; failure the user can fix: {"ok": false, "reason", "message"} and
  exit code 2 (the Job fails at once); a transient failure (a dependency that went away mid-run):
  the same with "retryable": true and exit code 3, which the Job retries with back-off, the work
  already committed kept; anything else is a bug: exit code 1 with a traceback in the log.
- URIs: pvc://claim/path resolves to $TUNERAG_PVC_ROOT/claim/path (default /mnt/pvc), where the
  operator mounts each claim; file:// is a local path; other schemes go to fsspec as they are.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROGRESS_PREFIX = "TUNERAG_PROGRESS "
RESULT_LIMIT = 4096


EXIT_USER_ERROR, EXIT_RETRYABLE = 2, 3


class WorkloadError(Exception):
    """A failure the user can fix (bad data, missing file, unreachable database), or with
    `retryable` one that a new attempt may not meet (a database restarted mid-run)."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


def load_request(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    source = Path(path or os.environ.get("TUNERAG_SPEC", "/etc/tunerag/spec.json"))
    try:
        request: dict[str, Any] = json.loads(source.read_text())
    except FileNotFoundError as exc:
        raise WorkloadError("SpecNotFound", f"spec file {source} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise WorkloadError("InvalidSpec", f"spec file {source} is not JSON: {exc}") from exc
    return request


def report_progress(**fields: Any) -> None:
    print(PROGRESS_PREFIX + json.dumps(fields, separators=(",", ":"), default=str), flush=True)


def write_result(result: dict[str, Any]) -> None:
    text = json.dumps(result, separators=(",", ":"), default=str)
    if len(text.encode()) > RESULT_LIMIT:
        raise ValueError(f"result is {len(text.encode())} bytes; the limit is {RESULT_LIMIT}: store details in the artifact store")
    Path(os.environ.get("TUNERAG_RESULT_PATH", "/dev/termination-log")).write_text(text)


CLAIM_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def resolve_uri(uri: str) -> str:
    """Maps a spec URI to what fsspec or the filesystem can open inside the pod.

    A pvc:// URI stays inside its claim's mount: one that names no valid claim (`pvc:///etc`), has
    `..` segments, or reaches outside through a symbolic link is refused (InvalidUri), as is any
    URI with control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise WorkloadError("InvalidUri", f"the URI {uri!r} contains control characters")
    if uri.startswith("pvc://"):
        claim, _, rest = uri.removeprefix("pvc://").partition("/")
        if not CLAIM_NAME.fullmatch(claim) or ".." in rest.split("/"):
            raise WorkloadError("InvalidUri", f"the URI {uri!r} is not pvc://<claim>/<path> inside the claim")
        volume = Path(os.environ.get("TUNERAG_PVC_ROOT", "/mnt/pvc")) / claim
        target = Path(os.path.normpath(f"{volume}/{rest}"))
        if escapes(str(volume), str(target)):
            raise WorkloadError("InvalidUri", f"the URI {uri!r} leads outside the claim {claim} (a symbolic link?)")
        return str(target)
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return uri


def escapes(root: str, path: str) -> bool:
    """Whether the local `path`, symbolic links followed, lies outside `root` (itself resolved):
    a link in a volume must not make a workload read the container's own files (its environment
    in /proc/self/environ holds its secrets)."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real != real_root and not real.startswith(real_root.rstrip("/") + "/")


def run(main: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None = None) -> None:
    """Runs a workload's main function under the contract and exits with its code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = main(load_request(args[0] if args else None))
        write_result({"ok": True, **result})
    except WorkloadError as exc:
        print(f"error: {exc.reason}: {exc.message}", file=sys.stderr, flush=True)
        write_result({"ok": False, "reason": exc.reason, "message": exc.message[:3000]}
                     | ({"retryable": True} if exc.retryable else {}))
        sys.exit(EXIT_RETRYABLE if exc.retryable else EXIT_USER_ERROR)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
