"""mgsd.files: atomic writes and the one JSONL reader."""

from __future__ import annotations

import pytest

from mgsd.files import (
    append_jsonl,
    atomic_directory,
    atomic_write,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = write_json({"a": 1}, tmp_path / "x.json")

    def torn(tmp):
        tmp.write_text('{"a": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, torn)
    assert read_json(path) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_jsonl_records_end_at_newline_only(tmp_path) -> None:
    records = [{"text": "line\u2028still the same record\u0085"}, {"n": 2}]
    path = write_jsonl(records, tmp_path / "r.jsonl")
    append_jsonl([{"n": 3}], path)
    assert read_jsonl(path) == [*records, {"n": 3}]


def test_atomic_directory_replaces_only_on_success(tmp_path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(ValueError), atomic_directory(target) as tmp:
        (tmp / "w").write_text("2")
        raise ValueError("failed")
    assert (target / "w").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["model"]
