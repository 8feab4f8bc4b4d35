"""Files on disk, written so that nothing half-written ever looks complete.

Every writer goes to a hidden sibling (``.NAME.tmp``) and renames it over the target, which is atomic
on one filesystem: a killed process leaves the old file or the new one, never a torn one. JSONL has
one reader here: records end at "\n" only (``str.splitlines`` would also split inside a string
holding U+2028 or U+0085, which JSON leaves unescaped with ``ensure_ascii=False``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """The hidden temporary name beside ``path`` that its writer renames over it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, mkdir: bool = False) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike[str], text: str, *, mkdir: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mkdir=mkdir)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mkdir: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mkdir=mkdir)


def write_json(obj: Any, path: str | os.PathLike[str], *, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON with a final newline, written atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL text, split at "\n" only."""
    return text.split("\n")


def jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, jsonl_text(records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL file; blank lines are skipped."""
    return [json.loads(line) for line in jsonl_lines(Path(path).read_text(encoding="utf-8")) if line.strip()]


def append_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Append records and flush them to disk (a log that a reader may follow while it grows)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(jsonl_text(records))
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only if the block succeeds.

    Hidden siblings left by an earlier writer of ``target`` that was killed are removed first (one
    writer per target is the contract).
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary directory
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
