"""Per-sample planning scores: one definition of success, optimal, progress, invalid and parse failure.

Definitions (stated once, used everywhere: training rewards, evaluation, the report):
- success: the plan reaches the goal (MiniBehaviour: a legal DROP) under the task's simulator; actions
  after the episode ends are ignored for success;
- optimal: success AND the whole plan is exactly as long as the optimal plan (no trailing junk);
- progress: longest prefix whose every action strictly lowers the optimal distance-to-go, divided by
  the optimal length;
- invalid: the episode ended on an illegal action (hole, wall, off-grid, table, ...);
- parse_failure: no usable ``<answer>`` block (a missing prediction counts here too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mgsd.actions import parse_plan
from mgsd.tasks import Task

METRICS: tuple[str, ...] = ("success", "optimal", "progress", "invalid", "parse_failure")
_NOT_INVALID = (None, "incomplete", "parse_failure")


def is_invalid(reason: str | None) -> bool:
    """Did an episode that ended for ``reason`` end on an illegal action (hole, wall, off-grid, ...)?"""
    return reason not in _NOT_INVALID


@dataclass(frozen=True)
class SampleScore:
    id: str
    task: str
    level: int
    plan: str | None  # the parsed plan in the task's answer format, None on parse failure
    success: bool
    optimal: bool
    progress: float
    invalid: bool
    parse_failure: bool
    reason: str | None  # None on success; the invalid reason, "incomplete" or the parse error
    steps: int
    plan_length: int
    optimal_length: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_plan(
    task: Task,
    state: dict[str, Any],
    actions: Sequence[str] | None,
    *,
    sample_id: str,
    optimal_length: int,
    parse_error: str | None = None,
) -> SampleScore:
    """Score one plan (``actions=None`` is a parse failure) against one state."""
    level = task.level_of(state)
    if actions is None:
        return SampleScore(
            sample_id,
            task.name,
            level,
            None,
            False,
            False,
            0.0,
            False,
            True,
            f"parse_failure: {parse_error or 'no plan'}",
            0,
            0,
            optimal_length,
        )
    run = task.rollout(state, actions)
    return SampleScore(
        id=sample_id,
        task=task.name,
        level=level,
        plan=task.format_plan(actions),
        success=run.success,
        optimal=run.success and len(actions) == optimal_length,
        progress=task.progress(state, actions, optimal_length),
        invalid=is_invalid(run.reason),
        parse_failure=False,
        reason=run.reason,
        steps=run.steps,
        plan_length=len(actions),
        optimal_length=optimal_length,
    )


def score_response(
    task: Task, state: dict[str, Any], response: str | None, *, sample_id: str, optimal_length: int
) -> SampleScore:
    """Parse a model response with the one plan parser and score it."""
    if response is None:
        return score_plan(
            task, state, None, sample_id=sample_id, optimal_length=optimal_length, parse_error="no prediction"
        )
    parsed = parse_plan(response)
    return score_plan(
        task,
        state,
        parsed.actions,
        sample_id=sample_id,
        optimal_length=optimal_length,
        parse_error=parsed.error,
    )


# -- aggregation ------------------------------------------------------------------------------------
