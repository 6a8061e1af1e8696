"""Listing, reading and text extraction of source documents (fsspec: file://, pvc://, s3://, ...)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunerag_workloads.contract import WorkloadError, escapes, resolve_uri

from .spec import Source

EXTENSIONS: dict[str, str] = {
    ".txt": "text", ".text": "text", ".rst": "text", ".log": "text", ".csv": "text",
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".pdf": "pdf",
}


class SkipFile(Exception):
    """A document that cannot be read or decoded; reported, never fatal."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source root, posix separators: the document's key
    full_path: str  # what the filesystem opens
    format: str | None  # None: not a format this run reads
    outside: bool = False  # a symbolic link out of the source folder: never read


@dataclass
class Document:
    path: str
    format: str
    text: str
    content_hash: str


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob to regex over '/'-separated relative paths: `**` spans directories, `*` and `?` do not."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(path: str, patterns: list[str]) -> bool:
    return any(glob_regex(p.lstrip("/")).match(path) for p in patterns)


def _filesystem(uri: str) -> tuple[Any, str]:
    target = resolve_uri(uri)
    try:
        fs, root = fsspec.core.url_to_fs(target)
    except (ImportError, ValueError) as exc:
        raise WorkloadError("SourceUnsupported", f"cannot open source {uri}: {exc}") from exc
    return fs, root


def list_source(source: Source, source_dir: str | None = None) -> tuple[Any, list[SourceFile]]:
    """All files under the source that match include and not exclude, sorted by path.

    With `source_dir` (a mounted ConfigMap), its top-level files are the documents; the
    kubelet's `..data` and timestamped folders are ignored."""
    if source_dir:
        fs, root = fsspec.filesystem("file"), source_dir.rstrip("/")
        if not os.path.isdir(root):
            raise WorkloadError("SourceNotFound", f"the mounted ConfigMap directory {root} does not exist")
        names = sorted(n for n in os.listdir(root) if not n.startswith(".") and os.path.isfile(os.path.join(root, n)))
        pairs = [(n, os.path.join(root, n)) for n in names]
    else:
        if not source.uri:
            raise WorkloadError("InvalidSpec", "spec.source.uri is not set and no ConfigMap is mounted (TUNERAG_SOURCE_DIR)")
        fs, root = _filesystem(source.uri)
        root = root.rstrip("/") or "/"
        try:
            if fs.isfile(root):
                pairs = [(root.rsplit("/", 1)[-1], root)]
            elif fs.isdir(root):
                found = fs.find(root, withdirs=False)
                prefix = root if root.endswith("/") else root + "/"
                pairs = [(p[len(prefix):] if p.startswith(prefix) else p.rsplit("/", 1)[-1], p) for p in found]
            else:
                raise WorkloadError("SourceNotFound", f"the source {source.uri} does not exist")
        except WorkloadError:
            raise
        except (OSError, PermissionError) as exc:
            raise WorkloadError("SourceUnreadable", f"cannot list the source {source.uri}: {type(exc).__name__}: {exc}") from exc
    local = isinstance(fs, LocalFileSystem)
    files = []
    for rel, full in sorted(pairs):
        rel = rel.replace(os.sep, "/")
        if any(part.startswith("..") for part in rel.split("/")):
            continue
        if not matches(rel, source.include) or matches(rel, source.exclude):
            continue
        fmt = EXTENSIONS.get(os.path.splitext(rel)[1].lower())
        files.append(SourceFile(rel, full, fmt if fmt in source.formats else None, local and escapes(root, full)))
    return fs, files


OUTSIDE = "a symbolic link to a path outside the source folder"


def read_bytes(fs: Any, file: SourceFile) -> bytes:
    if file.outside:
        raise SkipFile(OUTSIDE)
    try:
        data: bytes = fs.cat_file(file.full_path)
    except (OSError, PermissionError) as exc:
        raise SkipFile(f"unreadable: {type(exc).__name__}: {exc.strerror or exc}") from exc
    return data


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_text(data: bytes, fmt: str) -> str:
    """Text of a document; raises SkipFile with a reason when it cannot be decoded."""
    if fmt == "pdf":
        text = _pdf_text(data)
    elif fmt == "html":
        text = _html_text(_decode(data))
    else:
        text = _decode(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SkipFile("no extractable text")
    return text


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise SkipFile("binary content (NUL bytes) in a text format")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkipFile(f"not UTF-8 text (invalid byte at offset {exc.start})") from exc


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise SkipFile("not a PDF file (no %PDF- header)")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings would repeat our skip reason
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise SkipFile("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SkipFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError, RecursionError) as exc:
        raise SkipFile(f"corrupt PDF: {type(exc).__name__}: {str(exc)[:120]}") from exc
    return "\n\n".join(p.strip() for p in pages if p.strip())


_BLOCKS = ("p", "div", "li", "tr", "br", "section", "article", "pre", "blockquote", "table", "ul", "ol", "dd", "dt")


def _html_text(html: str) -> str:
    """Visible text of an HTML page, headings turned into markdown headings (so the markdown
    chunker keeps them with their sections)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head", "svg", "iframe"]):
        tag.decompose()
    for level in range(1, 7):
        for tag in soup.find_all(f"h{level}"):
            title = " ".join(tag.get_text(" ").split())
            tag.replace_with(f"\n\n{'#' * level} {title}\n\n" if title else "\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    lines = [" ".join(line.split()) for line in soup.get_text().splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def iter_hashes(fs: Any, files: list[SourceFile]) -> Iterator[tuple[SourceFile, str | None, str | None]]:
    """(file, content hash, skip reason) for every file, reading each once in full."""
    for file in files:
        if file.outside:
            yield file, None, OUTSIDE
            continue
        if file.format is None:
            yield file, None, "format not enabled or not supported"
            continue
        try:
            yield file, content_hash(read_bytes(fs, file)), None
        except SkipFile as exc:
            yield file, None, str(exc)
