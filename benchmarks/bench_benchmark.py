"""Wall time of ``mgsd eval benchmark`` on a full-size VSP FrozenLake set with the tiny base.

The real VSP maps are not shipped, so the script writes a folder in their format (``level{3..8}/
{img,table,pure_text}/{k}``, 100 maps per level = 600 by default): our generator's maps, rendered at
the VSP size (64 px per cell), a table and a pure_text description each. It then runs the command
twice in-process, from an empty import cache and output directory (import + view + evaluation) and
again (everything cached: the resume path), and prints the times.

    python benchmarks/bench_benchmark.py [--per-level 100] [--limit N] [--model DIR] [--batch-size 32]
        [--max-new-tokens N]

``--limit`` evaluates N maps per level (the import still reads all of them) and prints the per-map
rate and the figure extrapolated to every map.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from mgsd.cli import main as mgsd_main
from mgsd.tasks import get_task


def write_vsp_folder(root: Path, per_level: int, seed: int = 0) -> int:
    """A VSP-format maps folder of generated FrozenLake maps; returns the number of maps."""
    task = get_task("frozenlake")
    symbol = {"S": "@", "G": "*", "H": "#", "F": "_"}
    count = 0
    for level in task.levels:
        rng = random.Random(f"vsp-bench/{seed}/{level}")
        for sub in ("img", "table", "pure_text"):
            (root / f"level{level}" / sub).mkdir(parents=True, exist_ok=True)
        for k in range(per_level):
            grid = task.generate(level, rng)["grid"]
            d = root / f"level{level}"
            task.render({"grid": grid}, size=64 * level).save(d / "img" / f"{k}.png")
            head = "| | " + " | ".join(f"Col {c + 1}" for c in range(level)) + " |"
            rows = [
                f"| Row {r + 1} | " + " | ".join(symbol[t] for t in row) + " |" for r, row in enumerate(grid)
            ]
            (d / "table" / f"{k}.txt").write_text("\n".join([head, *rows]) + "\n")
            cells = [(r, c, t) for r, row in enumerate(grid) for c, t in enumerate(row)]
            player = next((r, c) for r, c, t in cells if t == "S")
            goal = next((r, c) for r, c, t in cells if t == "G")
            holes = "".join(f" Row {r + 1}, Column {c + 1};" for r, c, t in cells if t == "H")
            text = (
                f"This is a {level}x{level} map.\n"
                + f"The player is at: row {player[0] + 1}, column {player[1] + 1};\n"
                + (f"The hole(s) are at:{holes}\n" if holes else "There is no holes in this map;\n")
                + f"The goal is at: Row {goal[0] + 1}, Column {goal[1] + 1}."
            )
            (d / "pure_text" / f"{k}.txt").write_text(text)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-level", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="maps evaluated per level (default: all)")
    parser.add_argument("--model", default=None, help="default: the shipped tiny base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the paper's 4096")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.model is None:
        from mgsd.pipeline import shipped_base

        args.model = str(shipped_base())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n_maps = write_vsp_folder(root / "vsp", args.per_level)
        print(f"wrote {n_maps} VSP-format maps in {time.perf_counter() - t0:.1f} s")
        cmd = [
            "eval",
            "benchmark",
            "--vsp",
            str(root / "vsp"),
            "--model",
            args.model,
            "--out",
            str(root / "out"),
            "--cache-dir",
            str(root / "cache"),
            "--batch-size",
            str(args.batch_size),
            "--quiet",
        ]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if args.max_new_tokens:
            cmd += ["--max-new-tokens", str(args.max_new_tokens)]
        from mgsd.eval.benchmark import prepare_set

        t0 = time.perf_counter()
        prepare_set("vsp", root / "vsp", root / "cache", progress=False)
        t_import = time.perf_counter() - t0
        times = []
        for _ in range(2):  # evaluation (imports cached), then the resume path
            t0 = time.perf_counter()
            assert mgsd_main(cmd) == 0
            times.append(time.perf_counter() - t0)
        evaluated = n_maps if not args.limit else min(args.limit, args.per_level) * 6
        print(f"\nmaps evaluated: {evaluated} of {n_maps}; batch size {args.batch_size}")
        print(f"import + 256-px view of {n_maps} maps (cached by content afterwards): {t_import:.1f} s")
        print(f"evaluation of {evaluated} maps: {times[0]:.1f} s ({times[0] / evaluated:.2f} s per map)")
        print(f"rerun with everything cached (resume path): {times[1]:.1f} s")
        total = t_import + times[0] * n_maps / evaluated
        label = "measured" if evaluated == n_maps else "extrapolated from the evaluated maps"
        print(f"the whole command on all {n_maps} maps from an empty cache: {total:.0f} s ({label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
