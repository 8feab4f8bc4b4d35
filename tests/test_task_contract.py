"""The Task contract, checked on every registered task: what generation, scoring, prompts, the
simulator and the report rely on, so a new task is held to the same rules as the three we ship."""

from __future__ import annotations

import random

import pytest

from mgsd.prompts import perception_prompt, perception_target, reference_response, text_student_prompt
from mgsd.scoring.perception import score_perception
from mgsd.scoring.plans import score_response
from mgsd.tasks import TASK_NAMES, get_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_registered_task_keeps_the_contract(name: str) -> None:
    task = get_task(name)
    assert task.name == name and task.levels and task.actions
    for level in (min(task.levels), max(task.levels)):
        for seed in range(2):
            state = task.generate(level, random.Random(seed))
            assert task.generate(level, random.Random(seed)) == state  # deterministic for a seed
            assert task.level_of(state) == level
            text = task.dump_state(state)
            assert task.load_state(text) == state and task.dump_state(task.load_state(text)) == text
            assert task.render(state).size == (256, 256)
            plan = task.solve(state)
            assert plan, "every generated state is solvable"
            formatted = task.format_plan(plan)
            assert task.split_plan(formatted) == list(plan)
            run = task.rollout(state, plan)
            assert run.success and run.reason is None and run.trailing == 0 and run.steps == len(plan)
            assert task.progress(state, plan) == 1.0
            assert task.distances_to_go(state)[task.initial(state)] == len(plan)
            # The reference answer scores as an optimal success; a plan stopped short does not.
            answer = reference_response(task, state, list(plan))
            scored = score_response(task, state, answer, sample_id="x", optimal_length=len(plan))
            assert scored.success and scored.optimal and not scored.invalid and not scored.parse_failure
            short = score_response(
                task,
                state,
                answer.replace(formatted, task.format_plan(plan[:-1])),
                sample_id="x",
                optimal_length=len(plan),
            )
            assert not short.success
            # Perception: the target answers every question right; no answer gets none right.
            items = task.perception(state)
            assert items and all(i.question in perception_prompt(task, state) for i in items)
            assert score_perception(items, perception_target(task, state))["all_correct"]
            assert not any(score_perception(items, "")["questions"].values())
            assert task.symbolic_text(state) in text_student_prompt(task, state)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_dump_generated_is_dump_state(name: str) -> None:
    """A task that skips re-validation of its generated states stores the very same keys."""
    task = get_task(name)
    for level in task.levels:
        for seed in range(40):
            state = task.generate(level, random.Random(seed))
            assert task.dump_generated(state) == task.dump_state(state)
