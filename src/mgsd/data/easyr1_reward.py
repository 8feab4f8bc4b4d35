"""Reward functions for the EasyR1 and verl exports: a response is scored by our simulator, not by
comparison with one reference plan, so every plan that reaches the goal is a success.

The ground truth of an exported row (``answer`` for EasyR1, ``reward_model.ground_truth`` for verl) is
a JSON string ``{"task", "state", "level", "optimal_length", "id", "plan"}``: ``state`` is the task's
canonical state JSON, ``plan`` one optimal plan (for reference only; it is not what is scored).

* EasyR1: ``worker.reward.reward_function=<this file>:compute_score`` (``reward_type`` batch or
  sequential: a list of inputs gets a list of scores, one input one score);
* verl: ``custom_reward_function.path=<this file>`` and ``custom_reward_function.name=verl_compute_score``.

Scores: ``accuracy`` = success under the simulator (1.0 / 0.0), ``format`` = the response has a
parseable ``<answer>`` block, ``overall`` = ``(1 - format_weight) * accuracy + format_weight * format``
(``format_weight`` 0 by default: the reward is success, as in our metrics); ``optimal``, ``progress``
and ``invalid`` are reported as well. Needs only ``mgsd`` (no torch): the trainers load this file by
path, so it imports ``mgsd`` absolutely.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task

GROUND_TRUTH_KEYS = ("task", "state", "optimal_length")


def ground_truth(task: str, state: str, level: int, optimal_length: int, sample_id: str, plan: str) -> str:
    """The ground-truth JSON string an exported row carries (what the reward functions read)."""
    return json.dumps(
        {
            "task": task,
            "state": state,
            "level": int(level),
            "optimal_length": int(optimal_length),
            "id": sample_id,
            "plan": plan,
        },
        sort_keys=True,
    )


def _parse_truth(truth: Any) -> dict[str, Any]:
    """A row's ground truth (JSON string or already-decoded mapping); ValueError naming what is wrong."""
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except json.JSONDecodeError:
            raise ValueError(
                "the ground truth is not mgsd JSON: was this dataset exported with `mgsd data export`?"
            ) from None
    if not isinstance(truth, Mapping) or any(k not in truth for k in GROUND_TRUTH_KEYS):
        raise ValueError(f"the ground truth must be a JSON object with {', '.join(GROUND_TRUTH_KEYS)}")
    return dict(truth)


def score(response: str | None, truth: Any, format_weight: float = 0.0) -> dict[str, float]:
    """Score one response against one exported ground truth (see the module doc for the keys)."""
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    gt = _parse_truth(truth)
    task = get_task(gt["task"])
    state = task.load_state(gt["state"]) if isinstance(gt["state"], str) else task.validate(gt["state"])
    row = score_response(
        task, state, response, sample_id=str(gt.get("id", "")), optimal_length=int(gt["optimal_length"])
    )
    accuracy, fmt = float(row.success), float(not row.parse_failure)
    return {
        "overall": (1.0 - format_weight) * accuracy + format_weight * fmt,
        "format": fmt,
        "accuracy": accuracy,
        "optimal": float(row.optimal),
        "progress": float(row.progress),
        "invalid": float(row.invalid),
    }


def compute_score(
    reward_inputs: list[Mapping[str, Any]] | Mapping[str, Any], format_weight: float = 0.0
) -> list[dict[str, float]] | dict[str, float]:
    """EasyR1's reward function: inputs with ``response`` and ``ground_truth`` (a list for
    ``reward_type=batch``, one mapping for ``sequential``)."""
    if isinstance(reward_inputs, Mapping):
        return score(reward_inputs["response"], reward_inputs["ground_truth"], format_weight)
    return [score(r["response"], r["ground_truth"], format_weight) for r in reward_inputs]


def verl_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    format_weight: float = 0.0,
    **_: Any,  # verl may pass more keyword arguments in later versions
) -> dict[str, float]:
    """verl's custom reward function: ``score`` is the reward, the other keys are logged."""
    out = score(solution_str, ground_truth, format_weight)
    return {"score": out.pop("overall"), **out}
