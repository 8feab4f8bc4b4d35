"""Stage-2 steps with the rollouts sampled by ``model.generate`` vs with finished rows leaving the batch.

The default experiment's stage-2 step (``configs/default.yaml``: batch 8, up to 128 new tokens,
temperature 1, LoRA r=16, full-vocabulary reverse KL, the privileged text teacher) on the shipped
tiny base, whose answers end at different lengths, as a trained student's do. Two variants of our
own trainer, alternated run by run in one process:

* ``generate``: ``Backbone.generate(..., shrink=False)``, i.e. ``model.generate``, which keeps a
  finished row in every later step until the batch's longest row ends (the code before);
* ``shrinking``: the default, ``generation.decode_shrinking`` with a ``Sampler`` that draws what
  ``model.generate`` draws (the whole batch's multinomial), so both variants sample the same tokens:
  the benchmark checks that every step's logged rollout success, response length and loss agree.

A step's time is the wall time between the ends of consecutive optimizer steps after ``--warmup``
steps; the median over all timed steps of all rounds is reported, with the sampling time alone.

Measured 2026-12-04 (2-core AMD EPYC with AVX-512, quiet; mean answer 30 tokens): with
``OMP_WAIT_POLICY=PASSIVE`` (what ``mgsd`` sets) step 2.70 -> 1.71 s (1.58x), sampling 2.15x; with
torch's default wait policy, before decode steps ran on one thread, step 1.06x, sampling 1.17x.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_rollouts.py [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from mgsd.config import load_config
from mgsd.data.generate import generate_dataset
from mgsd.pipeline.base_model import shipped_base
from mgsd.tasks import get_task
from mgsd.train.config import TrainConfig
from mgsd.train.trainer import Trainer

LEVELS = {"frozenlake": [4], "maze": [4], "minibehaviour": [6]}


class TimedTrainer(Trainer):
    """Our trainer with the end time of each step recorded, and optionally ``model.generate``."""

    def __init__(self, cfg: TrainConfig, *, shrink: bool) -> None:
        super().__init__(cfg)
        self.ticks: list[float] = []
        self.records: list[dict[str, Any]] = []
        if not shrink:
            self.bb.generate = functools.partial(self.bb.generate, shrink=False)  # type: ignore[method-assign]

    def _log(self, record: dict[str, Any]) -> None:
        self.ticks.append(time.perf_counter())
        self.records.append(record)
        super()._log(record)


def config(data: Path, out: Path, steps: int, batch: int) -> TrainConfig:
    settings = {
        "objective": "opsd",
        "model": str(shipped_base()),
        "out": str(out),
        "train_data": [str(data)],
        "max_steps": steps,
        "batch_size": batch,
        "micro_batch_size": batch,
        "progress": False,
        "save_every": 0,
        "log_every": 1,
        "lora": {"r": 16, "alpha": 32},
        "optim": {"lr": 2e-4, "schedule": "constant"},
        "opsd": {"loss": "full", "max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0},
    }
    return load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = a.batch * (a.steps + a.warmup)
        for name, levels in LEVELS.items():
            per = -(-n // len(LEVELS))
            generate_dataset(get_task(name), levels, per, split="train", seed=0, out=data, progress=False)
        times: dict[str, list[float]] = {"generate": [], "shrinking": []}
        gen_s: dict[str, list[float]] = {"generate": [], "shrinking": []}
        logs: dict[str, list[tuple[float, ...]]] = {}
        for r in range(a.rounds):
            for variant in ("generate", "shrinking"):
                cfg = config(data, Path(tmp) / f"{variant}{r}", a.warmup + a.steps, a.batch)
                tr = TimedTrainer(cfg, shrink=variant == "shrinking")
                tr.run()
                ticks = tr.ticks
                times[variant] += [
                    b - x for x, b in zip(ticks[a.warmup - 1 :], ticks[a.warmup :], strict=False)
                ]
                recs = [x for x in tr.records if "response_tokens" in x]
                gen_s[variant] += [
                    x["response_tokens"] * a.batch / x["gen_tokens_per_s"] for x in recs[a.warmup :]
                ]
                keys = ("rollout_success", "response_tokens", "loss")
                logs.setdefault(variant, [tuple(round(x[k], 5) for k in keys) for x in recs])
        same = logs["generate"] == logs["shrinking"]
        lengths = [x[1] for x in logs["shrinking"]]
        print(
            f"stage 2 on the shipped tiny base, batch {a.batch}, up to 128 new tokens, {a.rounds} rounds x"
            f" {a.steps} timed steps; mean response {statistics.mean(lengths):.0f} tokens"
        )
        for v in times:
            step_s, sample_s = statistics.median(times[v]), statistics.median(gen_s[v])
            print(f"  {v:<10} step {step_s:.3f} s (sampling {sample_s:.3f} s)")
        step = statistics.median(times["generate"]) / statistics.median(times["shrinking"])
        gen = statistics.median(gen_s["generate"]) / statistics.median(gen_s["shrinking"])
        print(f"  shrinking vs generate: step {step:.2f}x, sampling {gen:.2f}x")
        print(f"  same rollouts and losses every step: {same}")


if __name__ == "__main__":
    main()
