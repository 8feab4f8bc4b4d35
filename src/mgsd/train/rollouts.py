"""Stage-2 rollouts: the student's samples from the image prompts, scored by the simulator, and the
step's rollout metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mgsd.models.backbone import Backbone
from mgsd.models.context import Context
from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task
from mgsd.train.batches import encode_student
from mgsd.train.config import OPSDConfig
from mgsd.train.examples import Example


@dataclass
class Rollouts:
    """One batch of student samples: the student's (image) and the teacher's (privileged text)
    contexts, the sampled response ids, their simulator success ``(B,)``, how many parsed, and the
    sampling time in seconds."""

    student: Context
    teacher: Context
    responses: list[list[int]]
    success: torch.Tensor
    parsed: int
    gen_time: float


def rollout(bb: Backbone, c: OPSDConfig, exs: list[Example]) -> Rollouts:
    """Sample one response per example from the student and score it."""
    s_ctx = encode_student(bb, exs)
    t0 = time.perf_counter()
    gen = bb.generate(s_ctx, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)
    gen_time = time.perf_counter() - t0
    t_ctx = bb.encode_teacher([e.teacher_system for e in exs], [e.teacher_prompt or "" for e in exs])
    scores = []
    for e, text in zip(exs, gen.texts, strict=True):
        task = get_task(e.task)
        state = task.load_state(e.state)
        scores.append(score_response(task, state, text, sample_id=e.id, optimal_length=e.optimal_length))
    success = torch.tensor([float(s.success) for s in scores])
    parsed = sum(not s.parse_failure for s in scores)
    return Rollouts(s_ctx, t_ctx, [list(s) for s in gen.sequences], success, parsed, gen_time)


def rollout_logs(
    stats: dict[str, float], n_tokens: float, ro: Rollouts, sum_all: Callable[[float], float]
) -> dict[str, float]:
    """The step's logs: ``stats`` (sums over response tokens) as per-token means over all processes,
    the rollout success and parse rate, tokens per response and sampling speed. ``loss`` (what the
    progress bar shows and the finiteness check reads) is the sampled reverse KL, whatever
    ``opsd.loss`` is."""
    out = {k: sum_all(v) / n_tokens for k, v in stats.items()}
    n = sum_all(float(len(ro.responses)))
    out.update(
        rollout_success=sum_all(float(ro.success.sum())) / n,
        rollout_parse_rate=sum_all(float(ro.parsed)) / n,
        response_tokens=n_tokens / n,
        gen_tokens_per_s=sum_all(sum(len(r) for r in ro.responses) / max(ro.gen_time, 1e-9)),
    )
    out["loss"] = out["reverse_kl"]
    return out
