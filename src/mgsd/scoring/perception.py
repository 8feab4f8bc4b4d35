"""Scoring answers to the perception questions of a task (exact, set-based, strict).

Answers are ``key: value`` lines, the facts block a reasoned plan answer starts with (numbered
sections ``1. ...`` are read too). Each question's answer section is compared with the target
according to the question's kind:
``size`` (``NxN`` or a bare N), ``position`` (exactly one ``(r,c)``), ``cells`` (the set of ``(r,c)``;
``none`` = empty), ``open_dirs`` (a box-drawing grid, or ``(r,c): words`` per line; a dict of sets),
``actions`` (the set of words up/right/down/left). A section that is missing or unparseable is
wrong — an empty answer never matches an empty target by accident (the reference's perception
scorer did exactly that).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mgsd.tasks import MOVE_WORDS, PerceptionItem
from mgsd.tasks.maze import GLYPH_MOVES

# Linear on untrusted answers: "^[ \t]*" (not "^\s*", which rescans every following blank line from
# each line start) and a digit run matched only from its first digit ("(?<!\d)").
_SECTION = re.compile(r"^[ \t]*(\d+)\s*[.)]\s?", re.MULTILINE)
_CELL = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_SIZE = re.compile(r"(?<!\d)(\d+)\s*[x×X*]\s*(\d+)")
_WORDS = ("up", "right", "down", "left")
_NONE = re.compile(r"\b(none|empty|no cells?|nothing)\b", re.IGNORECASE)


def split_keyed(text: str, keys: Sequence[str]) -> dict[str, str]:
    """``key: value`` sections of an answer (a value may run over the following lines, as a maze
    grid does); keys not in ``keys`` are not section marks; later duplicates are ignored."""
    if not keys:
        return {}
    pattern = re.compile(
        r"^[ \t]*(" + "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True)) + r")\s*:[ \t]*",
        re.MULTILINE,
    )
    marks = list(pattern.finditer(text or ""))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(m.group(1), text[m.end() : end].strip())
    return out


def split_sections(text: str) -> dict[int, str]:
    """Numbered sections ``1. ...`` (or ``1) ...``) of an answer; later duplicates are ignored."""
    marks = list(_SECTION.finditer(text or ""))
    out: dict[int, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(int(m.group(1)), text[m.end() : end].strip())
    return out


def _size(s: str) -> tuple[int, int] | None:
    m = _SIZE.search(s)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"\d+", s)
    return (int(m.group()), int(m.group())) if m else None


def _cells(s: str) -> frozenset[tuple[int, int]] | None:
    cells = frozenset((int(a), int(b)) for a, b in _CELL.findall(s))
    if cells:
        return cells
    return frozenset() if _NONE.search(s) else None


def _position(s: str) -> tuple[int, int] | None:
    cells = _CELL.findall(s)
    return (int(cells[0][0]), int(cells[0][1])) if len(cells) == 1 else None


def _words(s: str) -> frozenset[str] | None:
    found = frozenset(w for w in _WORDS if re.search(rf"\b{w}\b", s, re.IGNORECASE))
    if found:
        return found
    return frozenset() if _NONE.search(s) else None


def _glyph_grid(s: str) -> dict[tuple[int, int], frozenset[str]] | None:
    """A maze drawn with ``GLYPHS`` (one character per cell, one row per line); None if any is foreign."""
    rows = [line.strip() for line in s.splitlines() if line.strip()]
    if not rows or any(ch not in GLYPH_MOVES for row in rows for ch in row):
        return None
    return {
        (r, c): frozenset(MOVE_WORDS[m] for m in GLYPH_MOVES[ch])
        for r, row in enumerate(rows)
        for c, ch in enumerate(row)
    }


def _open_dirs(s: str) -> dict[tuple[int, int], frozenset[str]] | None:
    if not _CELL.search(s):
        return _glyph_grid(s)
    table: dict[tuple[int, int], frozenset[str]] = {}
    for line in s.splitlines():
        m = _CELL.search(line)
        if not m:
            continue
        words = _words(line[m.end() :])
        if words is None:
            return None
        table[(int(m.group(1)), int(m.group(2)))] = words
    return table or None


_PARSERS = {"size": _size, "position": _position, "cells": _cells, "actions": _words, "open_dirs": _open_dirs}


def parse_section(kind: str, text: str) -> Any:
    """The parsed value of one answer section, or None when it cannot be read."""
    if kind not in _PARSERS:
        raise ValueError(f"unknown perception question kind {kind!r}")
    return _PARSERS[kind](text)


def score_perception(items: Sequence[PerceptionItem], response: str | None) -> dict[str, Any]:
    """Per-question correctness (by item key) and whether all questions are right.

    Answers are read as ``key: value`` lines (the facts format); an answer with no such line is read
    as numbered sections ``1. ...`` in question order instead."""
    keyed = split_keyed(response or "", [item.key for item in items])
    numbered = {} if keyed else split_sections(response or "")
    per_question: dict[str, bool] = {}
    for i, item in enumerate(items, start=1):
        target = parse_section(item.kind, item.answer)
        if target is None:
            raise ValueError(f"target answer of {item.key!r} does not parse: {item.answer!r}")
        section = keyed.get(item.key) if keyed else numbered.get(i)
        got = parse_section(item.kind, section) if section is not None else None
        per_question[item.key] = got is not None and got == target
    return {
        "questions": per_question,
        "all_correct": all(per_question.values()),
        "accuracy": sum(per_question.values()) / len(per_question) if per_question else 0.0,
    }
