"""Chunking by tokens of the embedding model's own tokenizer.

- tokens: fixed windows of `size` tokens, consecutive windows sharing `overlap` tokens.
- recursive: paragraphs packed into chunks of at most `size` tokens; a paragraph longer than
  that falls back to token windows.
- markdown: ATX headings split the text into sections; every chunk of a section starts with the
  section's heading path (`# A` / `## B`), so a heading always travels with its text.

Chunk text is sliced from the source text by the tokenizer's offsets, so it is the original text,
not a lower-cased detokenization.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class Chunk:
    document: str
    chunk_index: int
    content: str
    heading_path: list[str] = field(default_factory=list)
    tokens: int = 0


class TokenCounter:
    """Tokenizes with offsets, without the model's length warnings."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def offsets(self, text: str) -> list[tuple[int, int]]:
        if not text:
            return []
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]

    def count(self, text: str) -> int:
        return len(self.offsets(text))


def _windows(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[str, int]]:
    if not offsets:
        return []
    step = max(1, size - overlap)
    out = []
    start = 0
    while True:
        end = min(start + size, len(offsets))
        piece = text[offsets[start][0]:offsets[end - 1][1]].strip()
        if piece:
            out.append((piece, end - start))
        if end >= len(offsets):
            return out
        start += step


def split_tokens(text: str, counter: TokenCounter, size: int, overlap: int) -> list[tuple[str, int]]:
    return _windows(text, counter.offsets(text), size, overlap)


def split_recursive(text: str, counter: TokenCounter, size: int, overlap: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    current: list[str] = []
    current_tokens = 0
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        n = counter.count(para)
        if n > size:
            if current:
                out.append(("\n\n".join(current), current_tokens))
                current, current_tokens = [], 0
            out.extend(split_tokens(para, counter, size, overlap))
            continue
        if current and current_tokens + n > size:
            out.append(("\n\n".join(current), current_tokens))
            current, current_tokens = [], 0
        current.append(para)
        current_tokens += n
    if current:
        out.append(("\n\n".join(current), current_tokens))
    return out


def markdown_sections(text: str) -> list[tuple[list[str], list[str], str]]:
    """(heading titles, heading lines, body) per section; headings inside code fences are text."""
    sections: list[tuple[list[str], list[str], str]] = []
    stack: list[tuple[int, str, str]] = []  # (level, title, line)
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append(([t for _, t, _ in stack], [line for _, _, line in stack], content))
        body.clear()

    for line in text.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip(), line.strip()))
        else:
            body.append(line)
    flush()
    if not sections and stack:  # headings only
        sections.append(([t for _, t, _ in stack], [], "\n".join(line for _, _, line in stack)))
    return sections


def split_markdown(text: str, counter: TokenCounter, size: int, overlap: int) -> list[tuple[str, int, list[str]]]:
    out: list[tuple[str, int, list[str]]] = []
    for titles, lines, body in markdown_sections(text):
        prefix = "\n".join(lines)
        prefix_tokens = counter.count(prefix) if prefix else 0
        if prefix_tokens > size // 2:  # very deep or long headings: keep only the innermost one
            prefix = lines[-1] if lines else ""
            prefix_tokens = counter.count(prefix) if prefix else 0
            if prefix_tokens > size // 2:
                prefix, prefix_tokens = "", 0
        budget = size - prefix_tokens
        for piece, n in split_tokens(body, counter, budget, min(overlap, budget - 1)):
            content = f"{prefix}\n{piece}" if prefix else piece
            out.append((content, n + prefix_tokens, titles))
    return out


def chunk_document(document: str, text: str, counter: TokenCounter, strategy: str, size: int, overlap: int) -> list[Chunk]:
    if strategy == "markdown":
        pieces = split_markdown(text, counter, size, overlap)
    elif strategy == "recursive":
        pieces = [(c, n, []) for c, n in split_recursive(text, counter, size, overlap)]
    else:
        pieces = [(c, n, []) for c, n in split_tokens(text, counter, size, overlap)]
    return [Chunk(document, i, content, titles, n) for i, (content, n, titles) in enumerate(pieces)]
