"""Condition and Event messages quote what users and workloads wrote (file names, pod output):
what kubectl would print raw to a terminal is escaped, and nothing else changes."""

from __future__ import annotations

from tunerag_operator.conditions import printable, set_condition


def test_terminal_escapes_and_bidi_overrides_are_escaped_in_messages() -> None:
    hostile = "Skipped 1 unreadable files: notes/\x1b[2J\x1b]0;owned\x07evil\u202egpj.md: not UTF-8\x00"
    (cond,) = set_condition([], "Ready", "True", "Ready", hostile, 1)
    assert cond["message"] == "Skipped 1 unreadable files: notes/\\x1b[2J\\x1b]0;owned\\x07evil\\u202egpj.md: not UTF-8\\x00"
    assert cond["message"].isprintable()
    (again,) = set_condition([cond], "Ready", "True", "Ready", hostile, 1)  # the same on an existing condition
    assert again["message"] == cond["message"]


def test_ordinary_text_is_left_alone() -> None:
    text = "Indexed 3 documents into 7 chunks (docs_v1). Café, 東京, emoji 🙂.\nSecond line."
    assert printable(text) == text
