"""Training-step time alone vs beside one busy CPU process, per OpenMP wait policy (issue #12 item 5).

torch's intra-op threads (GNU OpenMP) spin-wait between parallel regions. On 2 cores with another
CPU-bound process, a spinning thread holds the core the other thread needs, and a step slowed 7-40x.
This script runs the same workload (the shipped tiny base: forward + backward + AdamW on a batch of
8 x 256 text tokens) in fresh processes:

* alone, and beside one busy process (a pure-Python loop, like a second run or a test suite);
* with torch's default wait policy, and with ``OMP_WAIT_POLICY=PASSIVE`` (what ``mgsd`` sets for its
  training and evaluation commands unless the variable is already set).

It prints the median step time of each and the slowdown ratio (beside / alone). Measured
2026-12-02 (2-core AMD EPYC, AVX2, fp32, 16 steps): default 0.445 s alone, 1.394 s beside (3.1x);
PASSIVE 0.437 s, 0.845 s (1.9x). Two shorter runs: 2.7x vs 2.2x and 3.6x vs 1.4x.

    .venv/bin/python benchmarks/bench_threads.py [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

WORKLOAD = r"""
import statistics, sys, time
import torch
from transformers import AutoModelForImageTextToText
from mgsd.pipeline import shipped_base
torch.manual_seed(0)
model = AutoModelForImageTextToText.from_pretrained(str(shipped_base()), dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(10, 2000, (8, 256))
times = []
for step in range(int(sys.argv[1]) + 2):
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
print(statistics.median(times[2:]))
"""


def step_time(steps: int, threads: int, policy: str | None, busy: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKLOAD, str(steps)], env=env, capture_output=True, text=True, check=True
        )
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"{'OMP_WAIT_POLICY':<18}{'alone s/step':>14}{'beside busy':>13}{'slowdown':>10}")
    for policy in (None, "PASSIVE"):
        alone = step_time(args.steps, args.threads, policy, busy=False)
        beside = step_time(args.steps, args.threads, policy, busy=True)
        print(f"{policy or '(default)':<18}{alone:>14.3f}{beside:>13.3f}{beside / alone:>9.1f}x")


if __name__ == "__main__":
    main()
