"""Peak resident memory per process: one process vs two FSDP2 processes (gloo, CPU), ``small`` preset.

Each run is ``mgsd train plan`` as a full fine-tune of the LM (``lora.r=0``: every LM weight has
fp32 AdamW state, the case sharding is for), two optimizer steps, one micro-batch of one sample.
Under FSDP2 each rank keeps half of the weights, gradients and AdamW state (a block's weights are
whole only while it runs); the interpreter, torch, the data and the activations are not sharded.
"peak MB" is a process's whole resident-set peak (VmHWM), "start MB" its resident set before the
trainer starts, "peak - start" what training added, "state MB" the rank's fp32 weights,
gradients and AdamW moments (what sharding divides).

On a 2-core CPU at this size the whole peak is NOT lower with FSDP2: activations are not sharded,
and the process group, FSDP's gather buffers and loading the whole model before sharding it cost
more than the ~110 MB of state halving saves. Measured (2026-12-03, beside two busy training runs):
1 process peak 754 MB (+374 over start), FSDP2 ranks 815 / 849 MB (+434 / +468); state 217 vs 109 MB
(the vision tower is frozen, as ``lora.train_vision`` is off).
Re-measured 2026-12-04 (2-core AVX-512 machine, nothing else running): small 748 MB vs 821 / 848 MB
(1.13x); with ``--train-vision`` 870 vs 908 / 910 MB (1.05x; state 317 vs 159 MB). A memory timeline
of one rank shows where it goes: each FSDP2 backward holds about 90 MB more than one process
(gathered blocks, their unsharded gradients and the reduce-scatter buffers), and set-up adds ~60 MB
(the process group, the distributed modules, the whole model loaded before it is sharded).
``--preset paper-4b`` (Qwen3-VL-4B widths, 3 + 4 layers; LM full fine-tune, state 10.6 GB): one
process peaks at 14.8 GB; the two FSDP2 ranks do not fit beside each other in 24 GB (rank 0 was
killed by the OOM killer at 12.0 GB resident): every rank loads the whole model before sharding it,
the root (the tied 151,936 x 2560 embedding / head: 1.6 GB, and its gradient) is gathered whole,
and rank 0 gathers the full state dict to save it.
With rank-0 loading (``--loading rank0``, the default: accelerate's fsdp_cpu_ram_efficient_loading, on
in configs/accelerate/fsdp2.yaml; rank 1 builds the model on the meta device), 2026-12-04: small 778 MB
one process vs 810 / 842 MB per rank (1.08x; the peak is in backward, not at loading); paper-4b one
process 14.9 GB, and the two ranks still do not fit beside each other in 24 GB, with ``--logit-chunk
256`` too (rank 0 killed at 12.0 GB during training): each rank's 5.3 GB state shard plus the whole
tied embedding / head gathered in the root and its unsharded gradient (2 x 1.6 GB), the blocks'
gathered weights and the activations. A 32 GB machine (or GPUs) is needed to show the paper-shape
figure.

    python benchmarks/bench_fsdp_memory.py [--preset small] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import peak_mb, status_mb  # benchmarks/_memory.py, beside this script

_FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}


def worker(a: argparse.Namespace) -> None:
    from mgsd.config import load_config
    from mgsd.train.config import TrainConfig
    from mgsd.train.engines import local
    from mgsd.train.trainer import Trainer

    settings = {
        "objective": "plan",
        "model": a.model,
        "out": a.out,
        "train_data": [a.data],
        "max_steps": a.steps,
        "batch_size": int(os.environ.get("WORLD_SIZE", "1")),
        "micro_batch_size": 1,
        "progress": False,
        "save_every": 0,
        "lora": {"r": 0, "train_vision": a.train_vision},
        "logit_chunk": a.logit_chunk,
        "optim": {"lr": 1e-4, "schedule": "constant"},
    }
    cfg = load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    start = status_mb("VmRSS")
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.run()
    rank = os.environ.get("RANK", "0")
    # This rank's fp32 weights, gradients and two AdamW moments: what sharding divides.
    state = sum(local(p).numel() for p in trainer.params.values()) * 4 * 4 / 2**20
    record = {"seconds": time.perf_counter() - t0, "start_mb": start, "peak_mb": peak_mb(), "state_mb": state}
    (Path(a.report) / f"rank{rank}.json").write_text(json.dumps(record))


def spawn(a: argparse.Namespace, procs: int, model: Path, data: Path, tmp: Path) -> list[dict[str, Any]]:
    report = tmp / f"report-{procs}"
    report.mkdir()
    args = [
        __file__,
        "--worker",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(tmp / f"run-{procs}"),
    ]
    args += ["--report", str(report), "--steps", str(a.steps)]
    args += ["--train-vision"] if a.train_vision else []
    args += ["--logit-chunk", str(a.logit_chunk)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += args
        env |= _FSDP2_ENV | {"FSDP_CPU_RAM_EFFICIENT_LOADING": str(a.loading == "rank0").lower()}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(report.glob("rank*.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "tiny", "paper-4b"])
    parser.add_argument("--train-vision", action="store_true", help="the vision tower trains in full too")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--loading",
        default="rank0",
        choices=["rank0", "every-rank"],
        help="FSDP2: rank 0 alone reads the weights (configs/accelerate/fsdp2.yaml) or every rank does",
    )
    parser.add_argument(
        "--logit-chunk", type=int, default=0, help="the trainer's logit_chunk (paper config: 256)"
    )
    parser.add_argument(
        "--skip-one", action="store_true", help="only the FSDP2 run (the 1-process peak known)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model", "--data", "--out", "--report"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(a)
        return 0

    from mgsd.data.generate import generate_dataset
    from mgsd.models.tiny import init_tiny
    from mgsd.tasks import get_task

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = init_tiny(tmp / "model", preset=a.preset)
        generate_dataset(get_task("maze"), [3], 4, split="train", seed=0, out=tmp / "data", progress=False)
        part = "LM and vision tower" if a.train_vision else "LM (vision frozen)"
        loading = "rank 0 reads the weights" if a.loading == "rank0" else "every rank reads the weights"
        print(
            f"preset {a.preset}, full fine-tune of the {part}, {a.steps} steps, fp32, CPU,"
            f" logit_chunk {a.logit_chunk}; FSDP2: {loading}"
        )
        print(
            f"{'run':<18} {'wall s':>7} {'start MB':>9} {'peak MB':>8} {'peak - start':>13} {'state MB':>9}"
        )
        peaks = {}
        for procs in (2,) if a.skip_one else (1, 2):
            for rank, r in enumerate(spawn(a, procs, model, tmp / "data", tmp)):
                label = "1 process" if procs == 1 else f"FSDP2 2p, rank {rank}"
                added = r["peak_mb"] - r["start_mb"]
                row = f"{r['seconds']:>7.1f} {r['start_mb']:>9.0f} {r['peak_mb']:>8.0f} {added:>13.0f}"
                row += f" {r['state_mb']:>9.0f}"
                print(f"{label:<18} {row}")
                peaks.setdefault(procs, []).append((r["peak_mb"], added))
                peaks.setdefault(-procs, []).append(r["state_mb"])
        if a.skip_one:
            return 0
        one, two = peaks[1][0], max(peaks[2])
        whole, training = two[0] / one[0], two[1] / one[1]
        state = max(peaks[-2]) / peaks[-1][0]
        print(f"peak per process, FSDP2 2p / 1p: {whole:.2f} (whole), {training:.2f} (training)")
        print(f"weights + gradients + AdamW state per process, FSDP2 2p / 1p: {state:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
