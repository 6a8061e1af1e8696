"""The artifact store: a run folder addressed by URI through fsspec, with atomic folder publication.

A folder (checkpoint, adapter) is complete when its marker file exists. The marker is written last:
on a local or mounted filesystem the folder is assembled under a temporary name and renamed into
place (atomic on POSIX), on object stores the files are uploaded and the marker is uploaded last.
Readers only trust folders that have their marker. On object stores every uploaded file's size is
checked before the marker goes up, and `retrying` runs a publication again, with exponential backoff,
while the store fails (each retry is a progress event), so an outage of the store during publishing
delays the run instead of failing it or leaving a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunerag_workloads.contract import WorkloadError, report_progress, resolve_uri

T = TypeVar("T")


def retry_budget() -> float:
    """Seconds a publication keeps retrying a failing store ($TUNERAG_STORE_RETRY_BUDGET_SECONDS,
    default 600); past it the pod ends as retryable (exit code 3) and the Job's retry takes over."""
    return float(os.environ.get("TUNERAG_STORE_RETRY_BUDGET_SECONDS", "600"))


def retrying(what: str, fn: Callable[[], T], *, phase: str = "Publishing", base: float = 1.0, cap: float = 30.0,
             budget: float | None = None) -> T:
    """`fn()`, run again after base * 2^n seconds (capped, jittered) while it raises anything but a
    WorkloadError, until `budget` seconds have passed; then the last error is raised. Each retry is a
    progress record (event storeRetry: what failed, the error, the attempt and the delay), and a
    success after retries one more (event storeRecovered). Past the budget: a retryable
    WorkloadError ArtifactStoreUnreachable."""
    deadline = time.monotonic() + (retry_budget() if budget is None else budget)
    attempt = 0
    while True:
        try:
            value = fn()
        except WorkloadError:
            raise
        except Exception as exc:  # fsspec backends raise many types (OSError, botocore, aiohttp)
            attempt += 1
            delay = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            if time.monotonic() + delay > deadline:
                report_progress(phase=phase, event="storeFailed", attempt=attempt, what=what,
                                message=f"{type(exc).__name__}: {exc}"[:500])
                # Transient, not the user's: exit code 3, and the Job's next pod resumes from the
                # checkpoint; when the Job's retries are spent too, the run fails with this reason.
                raise WorkloadError("ArtifactStoreUnreachable",
                                    f"the artifact store failed to {what} {attempt} times: {type(exc).__name__}: {exc}"[:1000],
                                    retryable=True) from exc
            report_progress(phase=phase, event="storeRetry", attempt=attempt, what=what,
                            delaySeconds=round(delay, 1), message=f"{type(exc).__name__}: {exc}"[:500])
            time.sleep(delay)
            continue
        if attempt:
            report_progress(phase=phase, event="storeRecovered", attempts=attempt + 1, what=what)
        return value


class Store:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(resolve_uri(self.uri))
        except (ImportError, ValueError) as exc:
            raise WorkloadError("ArtifactStoreUnreachable", f"cannot open artifact store {uri}: {exc}") from exc
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}".rstrip("/")

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def check_writable(self) -> None:
        probe = self.path(f".tunerag-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm(probe)
        except Exception as exc:  # fsspec backends raise many types (OSError, botocore, aiohttp)
            raise WorkloadError("ArtifactStoreUnreachable",
                                f"cannot write to the artifact store {self.uri}: {type(exc).__name__}: {exc}") from exc

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def list_dirs(self, rel: str) -> list[str]:
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(p, detail=True) if e["type"] == "directory"]

    def write_json(self, rel: str, data: Any) -> str:
        return self.write_text(rel, json.dumps(data, indent=2, sort_keys=True, default=str))

    def write_text(self, rel: str, text: str) -> str:
        """Writes a whole file (UTF-8): renamed into place on local filesystems, one upload elsewhere."""
        self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            tmp = self.path(rel) + f".tmp-{uuid.uuid4().hex[:8]}"
            Path(tmp).write_text(text, encoding="utf-8")
            os.replace(tmp, self.path(rel))
        else:
            self.fs.pipe_file(self.path(rel), text.encode())
        return self.uri_of(rel)

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "r") as f:
            return json.load(f)

    def put_folder(self, local_dir: Path, rel: str, marker: str) -> str:
        """Publishes local_dir at rel; `marker` (a file in local_dir) is made visible last."""
        dest = self.path(rel)
        parent = dest.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copytree(local_dir, tmp)
            if os.path.exists(dest):  # an incomplete or superseded copy from an earlier attempt
                old = f"{dest}.old-{uuid.uuid4().hex[:8]}"
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        else:
            # An earlier attempt's copy goes first, marker included: until this attempt's marker is
            # up, nothing here claims to be complete.
            self.fs.invalidate_cache(dest)
            if self.fs.exists(dest):
                self.fs.rm(dest, recursive=True)
            files = [f for f in sorted(local_dir.iterdir()) if f.name != marker]
            for f in files:
                self.fs.put_file(str(f), f"{dest}/{f.name}")
            self.fs.invalidate_cache(dest)
            for f in files:  # what the store holds now is what was sent, before the marker says so
                stored = self.fs.info(f"{dest}/{f.name}").get("size")
                if stored != f.stat().st_size:
                    raise OSError(f"{self.uri_of(rel)}/{f.name} holds {stored} bytes, not {f.stat().st_size}")
            self.fs.put_file(str(local_dir / marker), f"{dest}/{marker}")
        return self.uri_of(rel)

    def get_folder(self, rel: str, local_dir: Path) -> Path:
        local_dir.mkdir(parents=True, exist_ok=True)
        src = self.path(rel)
        for entry in self.fs.ls(src, detail=True):
            if entry["type"] == "file":
                self.fs.get_file(entry["name"], str(local_dir / entry["name"].rstrip("/").rsplit("/", 1)[-1]))
        return local_dir

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)
