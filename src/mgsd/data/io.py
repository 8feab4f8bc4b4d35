"""Reading and writing mgsd datasets: parquet files of the Hugging Face ``datasets`` format.

A dataset directory holds one or more ``*.parquet`` files (one per task and split) with the columns
of ``COLUMNS``; ``image`` uses the ``datasets.Image`` feature (PNG bytes), so
``datasets.load_dataset("parquet", data_files="DIR/*.parquet")`` reads it too. Files are written to a
temporary name and renamed, so a killed run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mgsd.files import atomic_write, write_json

COLUMNS: dict[str, str] = {
    "id": "string",
    "task": "string",
    "level": "int32",
    "split": "string",
    "state": "string",  # canonical JSON of the task state
    "image": "image",  # PNG bytes
    "optimal_plan": "string",  # answer format: "UUR" or "U,PICK,R,DROP"
    "optimal_length": "int32",  # number of actions, PICK/DROP included
    "source": "string",  # "mgsd", "vsp", "visualplanning"
}


class DataError(ValueError):
    """A dataset that cannot be read or has the wrong schema."""


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence the ``datasets`` progress bars for one write (our own bar already shows progress)."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _schema() -> pa.Schema:
    """The parquet schema, with the Hugging Face ``datasets`` feature metadata, so that
    ``datasets.load_dataset("parquet", ...)`` reads ``image`` as an Image feature. Written with pyarrow
    directly: importing ``datasets`` alone took longer than generating a few hundred samples."""
    arrow = {"string": pa.string(), "int32": pa.int32()}
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field(k, image if v == "image" else arrow[v]) for k, v in COLUMNS.items()]
    features = {
        k: {"_type": "Image"} if v == "image" else {"dtype": v, "_type": "Value"} for k, v in COLUMNS.items()
    }
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: ~3x faster than the default for a few % larger files.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# Rows per Arrow chunk: a binary column's 32-bit offsets cap a chunk at 2 GiB of PNG bytes.
_CHUNK_ROWS = 2000


def _array(values: Sequence[Any], kind: str, column: str) -> pa.Array:
    """One column of a chunk, built from its buffers: ``pa.array`` on Python objects imports pandas
    (~0.2 s, longer than writing a few thousand rows) to test for pandas types."""
    n = len(values)
    valid = np.array([v is not None for v in values], dtype=bool)
    nulls = int(n - valid.sum())
    mask = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    if kind == "int32":
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values if v is not None):
            raise DataError(f"column {column} must hold integers")
        data = np.array([0 if v is None else v for v in values], dtype=np.int64)
        if n and (data.min() < -(2**31) or data.max() >= 2**31):
            raise DataError(f"column {column} holds an integer outside int32")
        return pa.Array.from_buffers(pa.int32(), n, [mask, pa.py_buffer(data.astype(np.int32))], nulls)
    if kind == "string":
        if any(not isinstance(v, str) for v in values if v is not None):
            raise DataError(f"column {column} must hold strings")
        blobs = [b"" if v is None else v.encode() for v in values]
    else:
        if any(not isinstance(v, (bytes, bytearray)) for v in values if v is not None):
            raise DataError(f"column {column} must hold bytes")
        blobs = [b"" if v is None else bytes(v) for v in values]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    data = pa.py_buffer(b"".join(blobs))
    return pa.Array.from_buffers(
        pa.string() if kind == "string" else pa.binary(), n, [mask, pa.py_buffer(offsets), data], nulls
    )


def _table(cols: dict[str, list[Any]]) -> pa.Table:
    """The rows as an Arrow table of ``_schema()``, in chunks of ``_CHUNK_ROWS``."""
    schema = _schema()
    image_type = schema.field("image").type
    n = len(cols["id"])
    batches = []
    for start in range(0, n, _CHUNK_ROWS) or [0]:
        part = {k: v[start : start + _CHUNK_ROWS] for k, v in cols.items()}
        arrays = []
        for k, kind in COLUMNS.items():
            if kind == "image":
                images = _array(part[k], "binary", k)
                paths = pa.nulls(len(images), pa.string())
                arrays.append(pa.StructArray.from_arrays([images, paths], fields=list(image_type)))
            else:
                arrays.append(_array(part[k], kind, k))
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows (with ``image`` as PNG bytes) to one parquet file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, list[Any]] = {k: [] for k in COLUMNS}
    for r in rows:
        missing = [k for k in COLUMNS if k not in r]
        if missing:
            raise DataError(f"row {r.get('id')!r} lacks column(s) {', '.join(missing)}")
        for k in COLUMNS:
            cols[k].append(r[k])
    table = _table(cols)
    # Row groups of 100 rows, as ``datasets`` writes image columns: a reader can stream them. The PNG
    # bytes are stored as they are: a dictionary of them or snappy on deflated data halved the speed
    # of the write for nothing.
    text = [k for k in COLUMNS if COLUMNS[k] == "string"]
    return atomic_write(
        path,
        lambda tmp: pq.write_table(
            table,
            tmp,
            row_group_size=100,
            use_dictionary=text,
            compression={
                **{k: "snappy" for k in [*text, "level", "optimal_length", "image.path"]},
                "image.bytes": "none",
            },
        ),
    )


def parquet_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The parquet files of dataset directories (or files), sorted; DataError if there are none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".parquet":
            files.append(p)
        elif p.is_dir():
            found = sorted(p.glob("*.parquet"))
            if not found:
                raise DataError(f"no .parquet files in dataset directory {p}")
            files.extend(found)
        else:
            raise DataError(f"dataset not found: {p}")
    return files


def read_rows(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """All rows of one or more datasets; ``image`` comes back as PNG bytes. Checks schema and ids."""
    rows: list[dict[str, Any]] = []
    want = list(columns) if columns is not None else list(COLUMNS)
    for f in parquet_files(paths):
        try:  # ParquetFile, not read_table: the latter imports pyarrow.dataset and pandas (~0.7 s)
            pf = pq.ParquetFile(f)
            missing = [c for c in want if c not in pf.schema_arrow.names]
            table = None if missing else pf.read(columns=want)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"cannot read {f}: {exc}") from None
        if table is None:
            raise DataError(f"{f} is not an mgsd dataset: missing column(s) {', '.join(missing)}")
        for r in table.to_pylist():
            if "image" in r:
                img = r["image"]
                r["image"] = img.get("bytes") if isinstance(img, dict) else img
            rows.append(r)
    seen: set[str] = set()
    for r in rows:
        if "id" in r:
            if r["id"] in seen:
                raise DataError(f"duplicate sample id {r['id']!r}")
            seen.add(r["id"])
    return rows


def tree_fingerprint(
    paths: str | os.PathLike | Iterable[str | os.PathLike], suffixes: Sequence[str] | None = None
) -> str:
    """A content hash of files (and of the files under directories, recursively) whose names end in
    one of ``suffixes`` (all files when None): names relative to their root plus bytes, in sorted
    order. It keys results by what produced them (a dataset or weights rewritten at the same path
    change it; a copy elsewhere does not); a path that does not exist contributes nothing."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    h = hashlib.blake2b(digest_size=16)
    for i, root in enumerate(map(Path, paths)):
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
        h.update(f"root:{i}\0".encode())  # the position, not the name: a copied directory is the same
        for f in files:
            if suffixes is not None and not f.name.endswith(tuple(suffixes)):
                continue
            if any(part.startswith(".") for part in f.relative_to(root).parts if f != root):
                continue  # hidden files: temporary writes, caches
            h.update(f"file:{f.relative_to(root) if f != root else f.name}\0".encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def decode_image(data: bytes | Image.Image) -> Image.Image:
    """PNG bytes to an RGB PIL image; DataError naming the problem if it is not an image."""
    if isinstance(data, Image.Image):
        return data.convert("RGB")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise DataError(f"corrupt image: {exc}") from None
    return img.convert("RGB")


def write_manifest(out: Path, name: str, info: dict[str, Any]) -> None:
    """A small JSON description next to the data (generator settings, counts)."""
    write_json(info, out / name, sort_keys=True)
