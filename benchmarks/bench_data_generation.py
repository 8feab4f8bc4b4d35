"""Generation throughput per task against the reference generators (issue #12 item 2: goal 10x).

The reference figures (issue #2, one core of this machine kind, writing PNG and text files):
FrozenLake L6 41/s, Maze L5 356/s, MiniBehaviour L6 203/s. Three parts:

1. where a sample's time goes, in-process, one core: instance generation, solve, state key, render
   (``Task.render``, pixels only), ``render_png`` (the path generation takes: pixels and PNG), the
   parquet write, and process start-up (a whole ``mgsd data generate`` of one sample);
2. the floor: encoding one 256x256 render with the encoder generation uses (``mgsd.png``: filter
   none and zlib level 1 for RGB; palette, up filter, zlib level 1 RLE for the palette images), from
   pixels, nothing cached; FrozenLake's ``render_png`` joins cached row pieces and goes below it;
3. the whole process, ``mgsd data generate`` of ``--n`` samples (subprocess), 1 and 2 workers,
   median of ``--repeats`` runs. ``--baseline-src SRC`` (another checkout's ``src``) times that
   code's whole process too, alternated with ours run by run, so a busy machine hits both alike.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_generation.py [--n 5000] [--repeats 3]

Last measured (2-core AMD EPYC with AVX-512, 2026-12-04, quiet), 5,000 samples, whole process, median
of 3, 1 worker / 2 workers vs the reference: FrozenLake L6 1497/s 36.5x / 1663/s 40.6x; Maze L5 2682/s
7.5x / 3762/s 10.6x; MiniBehaviour L6 2811/s 13.8x / 3874/s 19.1x; start-up 0.23 s (the writer no longer
imports pandas). Before (2026-12-03, machine quiet during the run, load < 1.1), 5,000 samples,
whole process, median of 3, 1 worker / 2 workers vs the reference: FrozenLake L6 979/s 23.9x /
1187/s 28.9x; Maze L5 1618/s 4.5x / 1748/s 4.9x; MiniBehaviour L6 1737/s 8.6x / 2334/s 11.5x;
start-up (one sample, whole process) 0.6 s. The code before the fast paths, alternated with it:
195, 522, 335/s (ours 5.0x, 3.1x, 5.2x of it). Floor (one render encoded from pixels): 2.05 ms
RGB FrozenLake, 0.12 ms palette Maze and MiniBehaviour.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mgsd import png
from mgsd.data.generate import generate_rows, sample_seed
from mgsd.data.io import write_rows
from mgsd.tasks import get_task

REFERENCE = {("frozenlake", 6): 41.0, ("maze", 5): 356.0, ("minibehaviour", 6): 203.0}
SRC = Path(__file__).resolve().parents[1] / "src"


def _per_sample(fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, list[Any]]:
    """Milliseconds per item of ``fn`` over ``items``, and its results."""
    t0 = time.perf_counter()
    out = [fn(x) for x in items]
    return (time.perf_counter() - t0) / len(items) * 1e3, out


def _floor_ms(name: str, image: np.ndarray, task: Any, state: dict[str, Any]) -> float:
    """Encoding one render from its pixels with generation's encoder, nothing cached (best of 20)."""
    if name == "frozenlake":
        encode = lambda: png.encode_rgb(image)  # noqa: E731
    else:
        module = sys.modules[type(task).__module__]
        drawing = sys.modules[module.__name__ + "_drawing"]
        palette = np.asarray(drawing.PALETTE, np.uint8)
        indices = np.argmax((image[:, :, None, :] == palette[None, None]).all(-1), axis=-1).astype(np.uint8)
        encode = lambda: png.encode_palette(indices, drawing.PALETTE)  # noqa: E731
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        encode()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def breakdown(name: str, level: int, n: int) -> dict[str, float]:
    """Milliseconds per sample of each stage (one core, this process)."""
    task = get_task(name)
    seeds = [sample_seed(0, name, "bench", level, a) for a in range(n)]
    ms: dict[str, float] = {}
    ms["generate"], states = _per_sample(lambda s: task.generate(level, random.Random(s)), seeds)
    ms["solve"], plans = _per_sample(task.solve, states)
    ms["state key"], keys = _per_sample(task.dump_generated, states)
    ms["render"], images = _per_sample(lambda s: np.asarray(task.render(s)), states)
    ms["render_png"], pngs = _per_sample(task.render_png, states)
    rows = [
        {
            "id": f"{name}/bench/{i:05d}",
            "task": name,
            "level": level,
            "split": "bench",
            "state": k,
            "image": b,
            "optimal_plan": task.format_plan(p),
            "optimal_length": len(p),
            "source": "mgsd",
        }
        for i, (k, b, p) in enumerate(zip(keys, pngs, plans, strict=True))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_rows(rows, Path(tmp) / "x.parquet")
        ms["parquet"] = (time.perf_counter() - t0) / n * 1e3
    ms["floor"] = _floor_ms(name, images[0], task, states[0])
    ms["png KB"] = sum(map(len, pngs)) / n / 1024
    return ms


# ``mgsd data generate`` with the worker count set the way any checkout reads it (older ones have no
# ``--workers`` flag): through ``default_workers``.
PROBE = (
    "import sys; import mgsd.data.generate as g; g.default_workers = lambda: int(sys.argv[1])\n"
    "from mgsd.cli import main; sys.exit(main(sys.argv[2:]))"
)


def whole_process(src: Path, name: str, level: int, n: int, workers: int) -> float:
    """Seconds for ``mgsd data generate`` of ``n`` samples with ``src`` on the path (subprocess)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", PROBE, str(workers), "data", "generate", "--task", name]
        cmd += ["--levels", str(level), "--per-level", str(n), "--seed", "0", "--out", tmp]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def _whole_table(args: argparse.Namespace) -> None:
    print(f"\nwhole process, mgsd data generate --per-level {args.n}, median of {args.repeats} (samples/s)")
    cols = ["ours 1w", "ratio", "ours 2w", "ratio", "startup s"]
    if args.baseline_src:
        cols += ["base 1w", "ours/base"]
    print(f"{'task':<15}{'level':>6}" + "".join(f"{c:>11}" for c in cols))
    for (name, level), ref in REFERENCE.items():
        t1, t2, tb = [], [], []
        for _ in range(args.repeats):  # alternated: a load change hits all three alike
            t1.append(whole_process(SRC, name, level, args.n, 1))
            t2.append(whole_process(SRC, name, level, args.n, 2))
            if args.baseline_src:
                tb.append(whole_process(Path(args.baseline_src), name, level, args.n, 1))
        start = statistics.median(whole_process(SRC, name, level, 1, 1) for _ in range(args.repeats))
        one, two = args.n / statistics.median(t1), args.n / statistics.median(t2)
        cells = [f"{one:.0f}", f"{one / ref:.1f}x", f"{two:.0f}", f"{two / ref:.1f}x", f"{start:.2f}"]
        if tb:
            base = args.n / statistics.median(tb)
            cells += [f"{base:.0f}", f"{one / base:.1f}x"]
        print(f"{name:<15}{level:>6}" + "".join(f"{c:>11}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples per task")
    ap.add_argument("--breakdown-n", type=int, default=2000, help="samples per task for the breakdown")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-src", default=None, help="another checkout's src/ to time alike")
    ap.add_argument("--skip-whole", action="store_true", help="only the in-process breakdown")
    args = ap.parse_args()
    print(f"per-sample breakdown, one core, {args.breakdown_n} samples (ms per sample)")
    stages = ["generate", "solve", "state key", "render", "render_png", "parquet", "floor", "png KB"]
    print(f"{'task':<15}{'level':>6}" + "".join(f"{s:>12}" for s in stages) + f"{'loop/s':>9}")
    for name, level in REFERENCE:
        generate_rows(get_task(name), [level], 20, split="warmup", seed=1, progress=False)
        ms = breakdown(name, level, args.breakdown_n)
        loop = 1e3 / sum(ms[s] for s in ("generate", "solve", "state key", "render_png", "parquet"))
        print(f"{name:<15}{level:>6}" + "".join(f"{ms[s]:>12.3f}" for s in stages) + f"{loop:>9.0f}")
    print("floor: one 256x256 render encoded from its pixels by mgsd.png (RGB: filter none, zlib 1;")
    print("palette: up filter, zlib 1 RLE), best of 20; loop/s excludes render (render_png includes it)")
    if not args.skip_whole:
        _whole_table(args)


if __name__ == "__main__":
    main()
