"""Peak memory of the stage-2 losses at Qwen3-VL-4B's output head, unchunked vs ``logit_chunk``.

One sequence of ``--tokens`` response tokens (2048, the paper's max_response_length) at hidden 2560
and vocabulary 151,936 (Qwen3-VL-4B's head), fp32 on CPU. Random student and teacher final hidden
states and one random head weight, shared by student and teacher (as with the adapter-off teacher;
frozen, as under LoRA: ``--head-grad`` gives it a gradient, as under full fine-tuning). Each case is
one forward + backward of the loss from those hidden states, done the way the trainer does it:

* before (``logit_chunk: 0``): ``token_logprobs``' logits path: (tokens, V) logits, the sampled-token
  log-probs from them and, for full / topk / jsd, ``log_softmax`` over the vocabulary for student and
  teacher, then ``full_reverse_kl`` / ``generalized_jsd`` on those (B, R, V) tensors;
* after (``logit_chunk: --chunk``): ``chunked_logprobs`` for the sampled-token log-probs and
  ``chunked_reverse_kl`` / ``chunked_jsd``: blocks of ``--chunk`` tokens, recomputed in backward.

The sampled loss is ``policy_gradient_loss`` with the teacher-student advantage. Every case runs in a
fresh subprocess; its peak resident set (VmHWM) is reset after the inputs are built, so "loss MB" is
what the loss itself allocated at its peak (the head weight, 1.5 GB, is outside it). Large blocks are
mmap'd and returned on free, so RSS follows live tensors.

A worker's address space is capped at ``--max-mb`` above its inputs (allocation fails cleanly instead
of waking the OOM killer on a shared machine). An unchunked case over the cap is measured at 1/2 and
1/4 of the tokens instead and extrapolated linearly to ``--tokens`` (its memory is affine in the
token count: every large tensor is tokens x V); such a figure is marked "~".

Measured (this 2-core CPU, shared, --max-mb 13000, chunk 256, head frozen; MB the loss allocated):

    loss      before MB  after MB after/before
    sampled        4761       721        0.151
    full           9508      1182        0.124
    topk           5950       744        0.125
    jsd          ~15445      1929        0.125   (before over the cap: from 3872 MB @512, 7730 @1024)

    taskset -c 1 python benchmarks/bench_loss_memory.py [--tokens 2048] [--chunk 256]
        [--losses sampled,full,topk,jsd] [--max-mb 12000] [--head-grad]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from _memory import peak_mb, reset_peak, status_mb  # benchmarks/_memory.py, beside this script

from mgsd.models.logprobs import OutputStates, chunked_logprobs, gather_logprobs
from mgsd.train import objectives as obj

HIDDEN, VOCAB = 2560, 151_936  # Qwen3-VL-4B-Instruct's text hidden size and vocabulary
LOSSES = ("sampled", "full", "topk", "jsd")
TOP_K, BETA = 16, 0.5  # the OPSDConfig defaults


def _before_logprobs(
    states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, full: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``Backbone.token_logprobs`` computes after the model, on the logits path."""
    logits = F.linear(states, weight)
    logprobs = gather_logprobs(logits, targets) * mask
    return logprobs, (torch.log_softmax(logits.float(), dim=-1) if full else None)


def _loss(kind: str, chunk: int, s_h: torch.Tensor, t_h: torch.Tensor, w: torch.Tensor, y, mask):
    n = float(mask.sum())
    full = kind != "sampled"
    if chunk:
        student = OutputStates(s_h, w)
        teacher = OutputStates(t_h, w.detach())
        s_lp = chunked_logprobs(student, y, mask, chunk)
        with torch.no_grad():
            t_lp = chunked_logprobs(teacher, y, mask, chunk)
    else:
        s_lp, s_full = _before_logprobs(s_h, w, y, mask, full)
        with torch.no_grad():
            t_lp, t_full = _before_logprobs(t_h, w, y, mask, full)
    if kind == "sampled":
        adv = obj.reverse_kl_advantages(t_lp, s_lp, mask)
        return obj.policy_gradient_loss(s_lp, s_lp.detach(), adv, mask, denom=n)
    top_k = TOP_K if kind == "topk" else None
    if chunk:
        if kind == "jsd":
            return obj.chunked_jsd(student, teacher, mask, BETA, n, chunk)
        return obj.chunked_reverse_kl(student, teacher, mask, top_k, n, chunk)
    if kind == "jsd":
        return obj.generalized_jsd(s_full, t_full, mask, beta=BETA, denom=n)
    return obj.full_reverse_kl(s_full, t_full, mask, top_k=top_k, denom=n)


def worker(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    s_h = torch.randn(1, a.tokens, HIDDEN, generator=g).requires_grad_()
    t_h = torch.randn(1, a.tokens, HIDDEN, generator=g)
    w = (torch.randn(VOCAB, HIDDEN, generator=g) * HIDDEN**-0.5).requires_grad_(a.head_grad)
    y = torch.randint(0, VOCAB, (1, a.tokens), generator=g)
    mask = torch.ones(1, a.tokens)
    # Cap the address space: over it, an allocation raises instead of the machine running out.
    cap = int((status_mb("VmSize") + a.max_mb) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = reset_peak()  # the inputs are built: what follows is the loss's own memory
    t0 = time.perf_counter()
    try:
        loss = _loss(a.worker, a.worker_chunk, s_h, t_h, w, y, mask)
        loss.backward()
    except RuntimeError as exc:
        if "memory" not in str(exc) and "alloc" not in str(exc):
            raise
        return {"over_cap": True}
    return {
        "loss": float(loss),
        "loss_mb": peak_mb() - base,
        "peak_mb": peak_mb(),
        "seconds": time.perf_counter() - t0,
        "grad_norm": float(s_h.grad.norm()),
    }


def spawn(a: argparse.Namespace, kind: str, chunk: int, tokens: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--worker-chunk", str(chunk)]
    cmd += ["--tokens", str(tokens), "--max-mb", str(a.max_mb)] + (["--head-grad"] if a.head_grad else [])
    env = dict(os.environ) | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"worker {kind} chunk={chunk} tokens={tokens} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_before(a: argparse.Namespace, kind: str) -> tuple[dict[str, Any], str]:
    """The unchunked case at ``--tokens``, or extrapolated from 1/4 and 1/2 of them over the cap."""
    r = spawn(a, kind, 0, a.tokens)
    if not r.get("over_cap"):
        return r, ""
    small, half = (spawn(a, kind, 0, a.tokens // d) for d in (4, 2))
    if small.get("over_cap") or half.get("over_cap"):
        raise RuntimeError(f"{kind}: over --max-mb even at {a.tokens // 4} tokens")
    per_token = (half["loss_mb"] - small["loss_mb"]) / (a.tokens // 2 - a.tokens // 4)
    mb = half["loss_mb"] + per_token * (a.tokens - a.tokens // 2)
    note = f"~ from {small['loss_mb']:.0f} MB @{a.tokens // 4}, {half['loss_mb']:.0f} MB @{a.tokens // 2}"
    return {"loss_mb": mb, "seconds": float("nan"), "loss": half["loss"]}, note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--max-mb", type=int, default=12000, help="address-space cap of a worker, MB")
    p.add_argument("--head-grad", action="store_true", help="the head weight trains (full fine-tune)")
    p.add_argument("--worker", choices=LOSSES, help=argparse.SUPPRESS)
    p.add_argument("--worker-chunk", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    kinds = [k for k in a.losses.split(",") if k]
    print(
        f"loss memory: 1 x {a.tokens} tokens, hidden {HIDDEN}, vocab {VOCAB:,}, fp32, forward + backward, "
        f"chunk {a.chunk}, head {'trainable' if a.head_grad else 'frozen'}; one (tokens, V) fp32 tensor = "
        f"{a.tokens * VOCAB * 4 / 2**20:.0f} MB"
    )
    head = ("loss", "before MB", "after MB", "after/before", "before s", "after s")
    print(f"{head[0]:<8} {head[1]:>10} {head[2]:>9} {head[3]:>12} {head[4]:>9} {head[5]:>8}")
    for kind in kinds:
        before, note = measure_before(a, kind)
        after = spawn(a, kind, a.chunk, a.tokens)
        if after.get("over_cap"):
            raise RuntimeError(f"{kind}: the chunked case is over --max-mb")
        if not note and abs(after["loss"] - before["loss"]) > 1e-4 * max(1.0, abs(before["loss"])):
            raise RuntimeError(f"{kind}: chunked loss {after['loss']} != unchunked {before['loss']}")
        ratio = after["loss_mb"] / before["loss_mb"]
        print(
            f"{kind:<8} {('~' if note else '') + format(before['loss_mb'], '.0f'):>10} "
            f"{after['loss_mb']:>9.0f} {ratio:>12.3f} {before['seconds']:>9.1f} {after['seconds']:>8.1f}"
            + (f"  ({note})" if note else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
