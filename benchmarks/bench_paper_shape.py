"""One stage-1 step and one stage-2 step at Qwen3-VL-4B's real shapes, on CPU: time and peak memory.

The ``paper-4b`` preset (``mgsd.models.tiny.PRESETS``) has Qwen3-VL-4B-Instruct's exact widths
(text hidden 2560, 32 query / 8 KV heads of 128, MLP 9728, 151,936 vocabulary rows, rope theta 5e6;
vision hidden 1024, 16 heads, MLP 4096, 2304 learned positions, three deepstack mergers) with the
layers cut from 36 + 24 to 3 + 4: about 0.85B random parameters, 3.4 GB in fp32. It cannot plan;
it pushes the real tensor shapes (the 151,936-wide head, 128-wide heads with GQA 4:1, the
interleaved M-RoPE sections of a 128 head, deepstack) through the trainer's every code path:

* stage 1: ``mgsd train perception`` as ``mgsd run`` configures it (LoRA r=16 on the LM, the vision
  tower and merger trained in full at a fifth of the lr, symbolic replay, grounding loss off);
* stage 2: ``mgsd train opsd`` (sampled-token reverse-KL advantage, the adapter-off base as the
  privileged text teacher, ``logit_chunk`` so no (tokens x 151,936) fp32 tensor is held).

Each stage runs in a fresh subprocess of its own; "peak MB" is its whole resident-set peak
(VmHWM: weights, optimizer, activations), "start MB" the resident set before the trainer starts.

Measured (2-core AMD EPYC, AVX2, one thread, 2026-12-02, beside a training run on the other core):
0.86B parameters built and saved in 24 s; stage 1 25.4 s wall (load, one step, save), peak 4847 MB;
stage 2 53.2 s, peak 4419 MB (adapter-off teacher: one copy of the weights).

    python benchmarks/bench_paper_shape.py [--preset paper-4b] [--batch 2] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import peak_mb, status_mb  # benchmarks/_memory.py, beside this script


def worker(a: argparse.Namespace) -> dict[str, Any]:
    from mgsd.config import load_config
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import Trainer

    common = {
        "model": a.model,
        "out": a.out,
        "train_data": [a.data],
        "max_steps": 1,
        "batch_size": a.batch,
        "micro_batch_size": a.batch,
        "progress": False,
        "save_every": 0,
        "eval_every": 0,
        "log_every": 1,
        "logit_chunk": 256,
        "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
    }
    if a.worker == "stage1":
        stage = {
            "objective": "perception",
            "replay_symbolic": 0.3,
            "optim": {"lr": 1e-3, "warmup_ratio": 0.1, "vision_lr_scale": 0.2},
        }
    else:
        stage = {
            "objective": "opsd",
            "optim": {"lr": 2e-4, "schedule": "constant"},
            "opsd": {"teacher": "base", "loss": "sampled", "max_new_tokens": a.new_tokens},
        }
    settings = common | stage
    cfg = load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    start = status_mb("VmRSS")  # the interpreter and imports
    t0 = time.perf_counter()
    Trainer(cfg).run()  # loads the 3.4 GB model, builds the data, one step, saves
    return {"seconds": time.perf_counter() - t0, "start_mb": start, "peak_mb": peak_mb()}


def spawn(a: argparse.Namespace, stage: str, model: Path, data: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", stage, "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), "--batch", str(a.batch), "--new-tokens", str(a.new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-4b", choices=["paper-4b", "small", "tiny"])
    parser.add_argument("--batch", type=int, default=2, help="samples per step (one micro-batch)")
    parser.add_argument("--new-tokens", type=int, default=32, help="stage-2 rollout length cap")
    for hidden in ("--worker", "--model", "--data", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return 0

    from mgsd.data.generate import generate_dataset
    from mgsd.models.tiny import PRESETS, init_tiny
    from mgsd.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = init_tiny(Path(tmp) / "model", preset=a.preset)
        built = time.perf_counter() - t0
        data = Path(tmp) / "data"
        for name, level in (("frozenlake", 3), ("maze", 3), ("minibehaviour", 6)):
            task = get_task(name)
            generate_dataset(task, [level], a.batch, split="train", seed=0, out=data, progress=False)
        dims = PRESETS[a.preset]
        print(
            f"paper-shape check: preset {a.preset} (text {dims.layers} layers x hidden {dims.hidden},"
            f" vocab rows {dims.vocab_rows or 'tokenizer'};"
            f" vision {dims.vision_depth} x {dims.vision_hidden}),"
            f" built and saved in {built:.0f} s; batch {a.batch}, fp32, CPU"
        )
        print(f"{'stage':<8} {'wall s':>7} {'start MB':>9} {'peak MB':>8}   (wall: load, one step, save)")
        for stage in ("stage1", "stage2"):
            r = spawn(a, stage, model, data, Path(tmp) / stage)
            print(f"{stage:<8} {r['seconds']:>7.1f} {r['start_mb']:>9.0f} {r['peak_mb']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
