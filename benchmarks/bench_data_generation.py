"""Generation throughput per task: instance + optimal plan + 256x256 render + PNG encoding, one core.

Prints samples/s and the ratio to the reference generators' throughput (issue #2 figures, measured on
one core of this machine kind writing PNG and text files: FrozenLake L6 41/s, Maze L5 356/s,
MiniBehaviour L6 203/s).

    .venv/bin/python benchmarks/bench_data_generation.py [--n 600]
"""

from __future__ import annotations

import argparse
import time

from mgsd.data.generate import generate_rows
from mgsd.tasks import get_task

REFERENCE = {("frozenlake", 6): 41.0, ("maze", 5): 356.0, ("minibehaviour", 6): 203.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600, help="samples per task")
    args = ap.parse_args()
    print(
        f"{'task':<15}{'level':>6}{'1 core/s':>10}{'ratio':>7}{'2 workers/s':>13}{'ratio':>7}"
        f"{'no-render/s':>13}{'reference/s':>13}"
    )
    for (name, level), ref in REFERENCE.items():
        task = get_task(name)
        generate_rows(task, [level], 20, split="warmup", seed=1, progress=False)  # sprite caches etc.
        t0 = time.perf_counter()
        generate_rows(task, [level], args.n, split="bench", seed=0, progress=False)
        full = args.n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_rows(task, [level], args.n, split="bench", seed=0, progress=False, workers=2)
        two = args.n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_rows(task, [level], args.n, split="bench", seed=0, render=False, progress=False)
        bare = args.n / (time.perf_counter() - t0)
        print(
            f"{name:<15}{level:>6}{full:>10.0f}{full / ref:>6.1f}x{two:>13.0f}{two / ref:>6.1f}x"
            f"{bare:>13.0f}{ref:>13.0f}"
        )


if __name__ == "__main__":
    main()
