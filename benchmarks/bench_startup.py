"""Start-up of the light sub-commands, whole process, median of repeated runs (issue #12 item 1).

Goals: ``mgsd --version`` under 0.3 s; ``mgsd data generate`` reaching its first sample under 0.6 s
(measured as the whole process for one sample, which also includes the parquet write). Also prints
which heavy libraries each command imported (none of torch, transformers, matplotlib should be).

    .venv/bin/python benchmarks/bench_startup.py [--repeats 7]

Give it the machine: on 2 cores any other busy process doubles these figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "matplotlib", "datasets", "pandas")
# Runs mgsd's main() and reports which heavy modules ended up imported.
PROBE = (
    "import sys; from mgsd.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
)


def timed(args: list[str], repeats: int) -> tuple[float, str]:
    times, heavy = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"mgsd {' '.join(args)} failed: {p.stderr.strip().splitlines()[-1]}")
        heavy = next(ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY")).split(" ", 1)[1]
    return statistics.median(times), heavy or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d"
        gen = [
            "data",
            "generate",
            "--task",
            "maze",
            "--levels",
            "3",
            "--per-level",
            "1",
            "--split",
            "bench",
            "--out",
        ]
        plans = ["eval", "plans", "--oracle", "--data"]
        commands = {
            "--version": ["--version"],
            "--help": ["--help"],
            "data generate (1 sample)": [*gen, str(data)],
            "eval plans --oracle": [*plans, str(data / "maze-bench.parquet"), "--out", str(Path(tmp) / "e")],
        }
        print(f"{'command':<28}{'median s':>10}  heavy imports")
        base = statistics.median(_bare() for _ in range(args.repeats))
        print(f"{'bare python':<28}{base:>10.3f}  -")
        for name, argv in commands.items():
            t, heavy = timed(argv, args.repeats)
            print(f"{name:<28}{t:>10.3f}  {heavy}")


def _bare() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
