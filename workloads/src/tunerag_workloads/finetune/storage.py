"""The artifact store: a run folder addressed by URI through fsspec, with atomic folder publication.

A folder (checkpoint, adapter) is complete when its marker file exists. The marker is written last:
on a local or mounted filesystem the folder is assembled under a temporary name and renamed into
place (atomic on POSIX), on object stores the files are uploaded and the marker is uploaded last.
Readers only trust folders that have their marker.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunerag_workloads.contract import WorkloadError, resolve_uri


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
            if self.fs.exists(dest):
                self.fs.rm(dest, recursive=True)
            for f in sorted(local_dir.iterdir()):
                if f.name != marker:
                    self.fs.put_file(str(f), f"{dest}/{f.name}")
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
