"""Generated datasets keep their content: the decoded pixels and every other column of a seeded
generation are pinned to digests recorded with the renderers and generators as they were before the
fast paths (a model was pretrained on these renders; the encoded PNG bytes may change, pixels not)."""

import hashlib
import io
import json
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mgsd import png
from mgsd.data.generate import generate_rows
from mgsd.tasks import TASK_NAMES, get_task

# (pixels, other columns) digests of generate_rows(task, all levels, 6, split="fingerprint", seed=11),
# recorded before the palette renderers, the banded PNG writer and the fast solvers.
FINGERPRINTS = {
    "frozenlake": ("a954b4974f67516d00ab8df9895e2743", "c6ffa2cde4953cd1882c94e45be6ef00"),
    "maze": ("be069b8055a11eaa19f5200f27279382", "ee79cf284c063042d8fc903c68ff0a81"),
    "minibehaviour": ("40bd7c960dd59600754a2408c36b0cc6", "8463751d7a65047c7c9c71dabbec40d2"),
}


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generated_pixels_and_columns_are_unchanged(name):
    task = get_task(name)
    rows = generate_rows(task, list(task.levels), 6, split="fingerprint", seed=11, progress=False)
    pixels, other = hashlib.sha256(), hashlib.sha256()
    for r in rows:
        pixels.update(_rgb(r["image"]).tobytes())
        other.update(json.dumps({k: v for k, v in r.items() if k != "image"}, sort_keys=True).encode())
    assert (pixels.hexdigest()[:32], other.hexdigest()[:32]) == FINGERPRINTS[name]


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("size", [64, 100, 256, 300])
def test_render_png_decodes_to_render(name, size):
    task = get_task(name)
    for seed in range(3):
        state = task.generate(task.levels[seed % len(task.levels)], random.Random(seed))
        states = [state, {**state, "printer": None}] if name == "minibehaviour" else [state]
        for s in states:
            assert (_rgb(task.render_png(s, size)) == np.asarray(task.render(s, size))).all()


def _idat(data: bytes) -> bytes:
    """The IDAT payload of a PNG, checking every chunk's CRC on the way."""
    pos, out = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        if kind == b"IDAT":
            out += body
        pos += 12 + length
    return out


def test_bands_join_into_one_valid_png():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 11, 3), dtype=np.uint8)
    pixels[:20] = 9  # a compressible part and an incompressible one
    bands = [pixels[:1], pixels[1:20], pixels[20:21], pixels[21:]]
    data = png.assemble([png.band(b) for b in bands], 11, 37)
    assert (_rgb(data) == pixels).all()
    raw = zlib.decompress(_idat(data))  # zlib checks the combined Adler-32
    assert len(raw) == 37 * (11 * 3 + 1)
    with pytest.raises(ValueError, match="do not make up"):
        png.assemble([png.band(pixels[:20])], 11, 37)


def test_palette_png_holds_the_palette_colours():
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [(0, 0, 0), (255, 24, 16), (181, 143, 96)]
    data = png.encode_palette(indices, palette)
    zlib.decompress(_idat(data))
    assert (_rgb(data) == np.asarray(palette, np.uint8)[indices]).all()
    with pytest.raises(ValueError, match="1-256 colours"):
        png.encode_palette(indices, [])
