"""Evaluation throughput: batched local generation vs a per-sample loop, and the API path.

Same tiny model, same held-out samples (image modality), same ``max_new_tokens``, greedy:

1. ``evaluate_model`` with ``LocalBackend(batch_size=B)``  (batched, one task per batch; greedy rows
   leave the batch when they end, ``generation.decode_shrinking``, and the instruction the rows share
   is prefilled once, models/prefix.py); and the same with ``share_prefix=False``;
2. the same through ``model.generate`` (``shrink=False``: finished rows stay until the batch ends);
3. ``evaluate_model`` with ``LocalBackend(batch_size=1)``  (one generate call per sample);
4. ``evaluate_model`` through ``mgsd serve`` on 127.0.0.1 with the OpenAI client (concurrency B,
   the server batching concurrent requests up to B).

Each run starts from an empty output directory (no cache). Prints samples/s and the ratios, and a
floor: how much cheaper per row the language model's matrix products are at ``--batch`` rows than
at one (one thread), the ceiling of what batching does to that part of a decode step.

    python benchmarks/bench_eval.py [--preset tiny|small | --model DIR] [--per-level 4] [--new-tokens 32]
        [--batch 8]

A random preset writes every answer to ``--new-tokens`` (no row ends early, so 1 and 2 tie); a
trained model (``--model shipped`` for the package's tiny base) ends its answers at different
lengths, as in a real evaluation.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from mgsd.backends.base import GenerationConfig
from mgsd.backends.local import LocalBackend
from mgsd.backends.openai_compat import OpenAIBackend
from mgsd.backends.serve import MGSDServer
from mgsd.data.generate import generate_dataset
from mgsd.eval.model import evaluate_model
from mgsd.models import Backbone, init_tiny
from mgsd.tasks import get_task


def timed(backend: object, data: Path, out: Path, gen: GenerationConfig, batch: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    m = evaluate_model(backend, [data], out, gen=gen, batch_size=batch, progress=False)  # type: ignore[arg-type]
    return m["n"], time.perf_counter() - t0


def linear_floor(bb: Backbone, rows: int, repeats: int = 200) -> float:
    """How much cheaper per row a decode step's matrix products get at ``rows`` rows than at one:
    the sum over the LM's linear layers (the head included) of rows x time(1 row) / time(rows rows),
    time-weighted. A batched decode cannot beat per-sample decoding by more than this on its
    products (the rest of a step, Python and small ops, amortises further)."""
    import torch.nn.functional as F

    def time_of(x: torch.Tensor, w: torch.Tensor) -> float:
        for _ in range(10):
            F.linear(x, w)
        t0 = time.perf_counter()
        for _ in range(repeats):
            F.linear(x, w)
        return (time.perf_counter() - t0) / repeats

    # The language model's linears (the vision tower runs in the prefill only), counted per shape.
    shapes: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for name, m in bb.model.named_modules():
        if isinstance(m, torch.nn.Linear) and "visual" not in name:
            shapes.setdefault(tuple(m.weight.shape), []).append(m.weight.detach())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a small model's decode steps run (models/generation.py)
    try:
        one = many = 0.0
        for ws in shapes.values():
            k = ws[0].shape[1]
            one += len(ws) * time_of(torch.randn(1, k), ws[0])
            many += len(ws) * time_of(torch.randn(rows, k), ws[0])
    finally:
        torch.set_num_threads(threads)
    return rows * one / many


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument(
        "--model", help="a model directory instead of a random preset ('shipped': the tiny base)"
    )
    parser.add_argument("--per-level", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-api", action="store_true", help="skip the mgsd serve measurement")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        for name, levels in (("frozenlake", [3, 4, 5, 6]), ("maze", [3, 4, 5, 6])):
            generate_dataset(
                get_task(name),
                levels,
                args.per_level,
                split="test",
                seed=0,
                out=data,
                progress=False,
                workers=1,
            )
        if args.model:
            from mgsd.pipeline.base_model import shipped_base

            bb = Backbone.load(shipped_base() if args.model == "shipped" else args.model, device="cpu")
        else:
            bb = Backbone.load(init_tiny(root / "model", preset=args.preset), device="cpu")
        gen = GenerationConfig(max_new_tokens=args.new_tokens)
        print(
            f"{args.model or args.preset + ' preset'} ({bb.num_parameters() / 1e6:.1f}M parameters),"
            f" {torch.get_num_threads()} threads, max_new_tokens {args.new_tokens}, greedy, image modality"
        )
        timed(
            LocalBackend(bb, batch_size=args.batch), data, root / "warmup", gen, args.batch
        )  # first-call costs

        n, t_batched = timed(LocalBackend(bb, batch_size=args.batch), data, root / "batched", gen, args.batch)
        hf = LocalBackend(bb, batch_size=args.batch, shrink=False)
        _, t_hf = timed(hf, data, root / "hf", gen, args.batch)
        whole = LocalBackend(bb, batch_size=args.batch, share_prefix=False)
        _, t_whole = timed(whole, data, root / "whole", gen, args.batch)
        _, t_loop = timed(LocalBackend(bb, batch_size=1), data, root / "loop", gen, 1)
        print(f"samples                       {n}")
        print(
            f"local batched (batch {args.batch:>2})     {n / t_batched:8.2f} samples/s  ({t_batched:.1f} s)"
        )
        print(f"local batched, model.generate {n / t_hf:8.2f} samples/s  ({t_hf:.1f} s)")
        print(f"ratio rows leaving / staying  {t_hf / t_batched:8.2f}x")
        print(f"local batched, no shared prefix {n / t_whole:6.2f} samples/s  ({t_whole:.1f} s)")
        print(f"ratio shared prefix once / not {t_whole / t_batched:7.2f}x")
        print(f"local per-sample loop         {n / t_loop:8.2f} samples/s  ({t_loop:.1f} s)")
        print(f"ratio batched / loop          {t_loop / t_batched:8.2f}x")
        print(
            f"floor: a linear layer's product costs {linear_floor(bb, args.batch):.1f}x less per row at"
            f" {args.batch} rows than at 1 (one thread, the LM's shapes: the ceiling of batching on them)"
        )

        if not args.no_api:
            server = MGSDServer(bb, host="127.0.0.1", port=0, served_name="bench", max_batch=args.batch)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                api = OpenAIBackend(server.url, "bench", concurrency=args.batch, retries=0)
                _, t_api = timed(api, data, root / "api", gen, args.batch)
            finally:
                server.close()
            sizes = server.worker.batches
            print(
                f"API via mgsd serve (conc {args.batch:>2}) {n / t_api:8.2f} samples/s  ({t_api:.1f} s;"
                f" mean server batch {sum(sizes) / len(sizes):.1f})"
            )
            print(f"ratio API / loop              {t_loop / t_api:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
