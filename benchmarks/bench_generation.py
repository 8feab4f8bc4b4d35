"""Backbone benchmark: batched generation vs a per-sample ``generate`` loop, and teacher memory.

1. Throughput (tokens/s) of ``Backbone.generate`` on N prompts with 256x256 images, in batches,
   against a plain per-sample ``model.generate`` loop on the same model and prompts.
2. Peak resident memory of one on-policy distillation step (teacher scoring + student scoring with
   grad + backward) with the LoRA base as teacher (adapter disabled, one weight copy) vs a separately
   loaded teacher copy. Each variant runs in a fresh subprocess so the peaks are clean.

    python benchmarks/bench_generation.py [--preset tiny|small] [--prompts 32] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _memory import peak_mb, reset_peak  # benchmarks/_memory.py, beside this script
from PIL import Image, ImageDraw
from transformers.utils import logging as hf_logging

from mgsd.models import Backbone, init_tiny


def grid_image(rng: random.Random, n: int = 8, size: int = 256) -> Image.Image:
    """A random n x n grid render, like the task images."""
    img = Image.new("RGB", (size, size), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    cell = size // n
    for r in range(n):
        for c in range(n):
            colour = rng.choice([(230, 230, 250), (30, 60, 160), (240, 200, 40), (200, 30, 30)])
            draw.rectangle([c * cell + 1, r * cell + 1, (c + 1) * cell - 2, (r + 1) * cell - 2], fill=colour)
    return img


def prompts(n: int, seed: int = 0) -> tuple[list[str], list[Image.Image]]:
    rng = random.Random(seed)
    texts, images = [], []
    for _ in range(n):
        k = rng.randint(3, 8)
        start, goal = (rng.randrange(k), rng.randrange(k)), (rng.randrange(k), rng.randrange(k))
        extra = " Avoid every hole." * rng.randint(0, 3)
        texts.append(f"The map is {k}x{k}. Plan a path from ({start[0]},{start[1]}) to {goal}.{extra}")
        images.append(grid_image(rng, k))
    return texts, images


def per_sample_loop(
    bb: Backbone, texts: list[str], images: list[Image.Image], new_tokens: int
) -> tuple[int, float]:
    """A plain loop: one processor call and one ``model.generate`` per prompt."""
    total, t0 = 0, time.perf_counter()
    for text, image in zip(texts, images, strict=True):
        conv = [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image"}]}]
        prompt = bb.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        inputs = bb.processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = bb.model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                do_sample=True,
                top_k=0,
                eos_token_id=bb.eos_token_ids,
                pad_token_id=bb.pad_token_id,
            )
        total += out.shape[1] - inputs["input_ids"].shape[1]
    return total, time.perf_counter() - t0


def batched(
    bb: Backbone, texts: list[str], images: list[Image.Image], new_tokens: int, batch: int
) -> tuple[int, float]:
    """``Backbone.generate`` over batches (encoding included in the time, as in the loop)."""
    total, t0 = 0, time.perf_counter()
    for i in range(0, len(texts), batch):
        ctx = bb.encode_student(texts[i : i + batch], images[i : i + batch])
        gen = bb.generate(ctx, max_new_tokens=new_tokens)
        total += sum(len(s) for s in gen.sequences)
    return total, time.perf_counter() - t0


def distill_step(
    student: Backbone, teacher: Backbone | None, texts: list[str], images: list[Image.Image]
) -> None:
    """Sample, score with the teacher (text context), score the student with grad, backward."""
    n = len(texts)
    ctx = student.encode_student(texts, images)
    responses = student.generate(ctx, max_new_tokens=32).sequences
    teacher_ctx = student.encode_teacher(
        ["You plan on grids."] * n, [f"Symbolic map for: {t}" for t in texts]
    )
    if teacher is None:
        with student.teacher():
            lp_t = student.token_logprobs(teacher_ctx, responses)
    else:
        lp_t = teacher.token_logprobs(teacher_ctx, responses)
    lp_s = student.token_logprobs(ctx, responses, grad=True)
    advantage = (lp_t.logprobs - lp_s.logprobs.detach()) * lp_s.mask
    (-(advantage * lp_s.logprobs).sum() / lp_s.mask.sum()).backward()


def memory_worker(mode: str, model_dir: str, n: int) -> None:
    """Peak RSS (MB, JSON on stdout) of loading + one distillation step, above the post-import RSS."""
    texts, images = prompts(n, seed=1)
    baseline = reset_peak()
    student = Backbone.load(model_dir, device="cpu").add_lora(r=8, alpha=16)
    teacher = Backbone.load(model_dir, device="cpu").freeze() if mode == "separate" else None
    distill_step(student, teacher, texts, images)
    held = {
        id(p): p.numel() * p.element_size() for b in (student, teacher) if b for p in b.model.parameters()
    }
    result = {
        "mode": mode,
        "baseline_mb": baseline,
        "peak_mb": peak_mb(),
        "weights_held_mb": sum(held.values()) / 2**20,
    }
    print(json.dumps(result))


def measure_memory(model_dir: Path, n: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("adapter", "separate"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-worker",
            mode,
            "--model",
            str(model_dir),
            "--prompts",
            str(n),
        ]
        # Large blocks come from mmap and go back on free: RSS follows live tensors, not heap history.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--memory-prompts", type=int, default=8)
    parser.add_argument("--memory-worker", choices=["adapter", "separate"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.model, args.prompts)
        return 0

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_tiny(Path(tmp) / "model", preset=args.preset)
        bb = Backbone.load(model_dir, device="cpu")
        texts, images = prompts(args.prompts)
        print(
            f"{args.preset} preset: {bb.num_parameters() / 1e6:.1f}M parameters,"
            f" {torch.get_num_threads()} threads"
        )
        print(
            f"{args.prompts} prompts, 256x256 images ({bb.image_token_count()} tokens),"
            f" {args.new_tokens} new tokens"
        )
        batched(bb, texts[:2], images[:2], 4, batch=2)  # warm-up
        loop_tok, loop_s = per_sample_loop(bb, texts, images, args.new_tokens)
        loop_rate = loop_tok / loop_s
        print(
            f"  per-sample generate loop : {loop_tok:5d} tokens in {loop_s:6.2f} s = {loop_rate:7.1f} tok/s"
        )
        for batch in (8, args.prompts):
            tok, sec = batched(bb, texts, images, args.new_tokens, batch)
            print(
                f"  Backbone.generate, b={batch:<3d}: {tok:5d} tokens in {sec:6.2f} s"
                f" = {tok / sec:7.1f} tok/s"
                f"  ({tok / sec / loop_rate:.1f}x the loop)"
            )
        mem = measure_memory(model_dir, args.memory_prompts)
    report_memory(mem, args.memory_prompts)
    return 0


def report_memory(mem: dict[str, dict[str, float]], n: int) -> None:
    a, s = mem["adapter"], mem["separate"]
    print(
        f"one distillation step ({n} prompts), fresh process per variant, peak RSS above the post-import RSS:"
    )
    for name, m in (("adapter-as-teacher", a), ("separate teacher copy", s)):
        print(
            f"  {name:22s}: peak RSS {m['peak_mb']:7.1f} MB (+{m['peak_mb'] - m['baseline_mb']:6.1f} MB),"
            f" weights held {m['weights_held_mb']:6.1f} MB"
        )
    print(
        f"  separate / adapter: peak RSS {s['peak_mb'] / a['peak_mb']:.2f}x"
        f" ({s['peak_mb'] - a['peak_mb']:+.1f} MB),"
        f" weights held {s['weights_held_mb'] / a['weights_held_mb']:.2f}x"
    )


if __name__ == "__main__":
    raise SystemExit(main())
