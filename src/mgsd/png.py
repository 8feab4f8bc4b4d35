"""A minimal PNG writer for the task renders: 8-bit RGB or palette images.

Why not PIL: its encoder tries every filter on every row, which cost more than the rest of a sample
together; our renders are flat colours (palette) or tiles repeated across a map (RGB), where one
fixed filter compresses as well. A palette image is stored as one byte per pixel plus a PLTE
chunk: decoded to RGB it is the same pixels, in a third of the raw bytes.

An RGB image may be assembled from *bands* (runs of whole rows) compressed independently
(``band``): a band's deflate piece ends byte-aligned and is a pure function of its rows, so a
renderer can cache the pieces of bands it draws again and again, and ``assemble`` joins them into
one valid zlib stream. The bytes of a PNG depend only on its pixels and on how it was cut into bands.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level 1: the fastest that still compresses; higher levels gained < 10% in size at 2-3x time.
LEVEL = 1
_ADLER_MOD = 65521
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final, empty fixed-Huffman deflate block
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level hint


class Band(NamedTuple):
    """Rows compressed on their own: the raw deflate piece, the rows' Adler-32 and raw length."""

    piece: bytes
    adler: int
    length: int


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _header(width: int, height: int, colour_type: int) -> bytes:
    return SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


def _scanlines(pixels: np.ndarray) -> bytes:
    """The raw image data: each row prefixed by its filter byte (0, none)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    raw = np.zeros((rows.shape[0], rows.shape[1] + 1), np.uint8)
    raw[:, 1:] = rows
    return raw.tobytes()


def encode_palette(indices: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> bytes:
    """PNG bytes of an ``H x W`` uint8 array of indices into ``palette`` (at most 256 RGB colours).

    Rows use filter 2 (up) and zlib's run-length strategy: flat-colour drawings become runs of zeros
    below the first row, which compress to about half the size of filter none, a little faster."""
    if indices.dtype != np.uint8 or indices.ndim != 2:
        raise ValueError(f"palette pixels must be a 2-D uint8 array, got {indices.dtype} {indices.shape}")
    if not 0 < len(palette) <= 256:
        raise ValueError(f"a PNG palette holds 1-256 colours, got {len(palette)}")
    plte = bytes(v for colour in palette for v in colour)
    h, w = indices.shape
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = 2
    raw[0, 1:] = indices[0]
    np.subtract(indices[1:], indices[:-1], out=raw[1:, 1:])  # wraps modulo 256, as PNG's filter does
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = comp.compress(raw.tobytes()) + comp.flush()
    return _header(w, h, 3) + _chunk(b"PLTE", plte) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def to_rgb_image(indices: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> Image.Image:
    """The RGB PIL image of palette indices (what decoding ``encode_palette``'s PNG gives)."""
    image = Image.fromarray(indices, "P")
    image.putpalette(bytes(v for colour in palette for v in colour))
    return image.convert("RGB")


def encode_rgb(pixels: np.ndarray) -> bytes:
    """PNG bytes of an ``H x W x 3`` uint8 RGB array (one band)."""
    return assemble([band(pixels)], pixels.shape[1], pixels.shape[0])


def band(rows: np.ndarray) -> Band:
    """Compress whole RGB rows (``h x W x 3`` uint8) into a piece ``assemble`` can join to others."""
    if rows.dtype != np.uint8 or rows.ndim != 3 or rows.shape[2] != 3:
        raise ValueError(f"RGB rows must be an h x W x 3 uint8 array, got {rows.dtype} {rows.shape}")
    raw = _scanlines(rows)
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)  # raw deflate: no header, no checksum
    piece = comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)  # ends on a byte, not final
    return Band(piece, zlib.adler32(raw), len(raw))


def _adler_combine(a: int, b: int, length_b: int) -> int:
    """The Adler-32 of two byte strings joined, from theirs (zlib's adler32_combine)."""
    s1 = ((a & 0xFFFF) + (b & 0xFFFF) - 1) % _ADLER_MOD
    s2 = ((a >> 16) + (b >> 16) + length_b * ((a & 0xFFFF) - 1)) % _ADLER_MOD
    return (s2 << 16) | s1


def assemble(bands: Sequence[Band], width: int, height: int) -> bytes:
    """An RGB PNG of ``bands`` stacked top to bottom (together ``height`` rows of ``width`` px)."""
    if sum(b.length for b in bands) != height * (3 * width + 1):
        raise ValueError(f"bands do not make up {height} rows of {width} RGB pixels")
    adler = 1
    for b in bands:
        adler = _adler_combine(adler, b.adler, b.length)
    data = b"".join([_ZLIB_HEADER, *(b.piece for b in bands), _FINAL_EMPTY_BLOCK, struct.pack(">I", adler)])
    return _header(width, height, 2) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
