"""What each training objective shows the model."""

from __future__ import annotations

import random

import pytest

from mgsd.prompts import teacher_system, text_student_prompt
from mgsd.tasks import get_task
from mgsd.train.config import TrainConfig
from mgsd.train.examples import build_examples


def _rows(n: int) -> list[dict]:
    task = get_task("frozenlake")
    rows = []
    for i in range(n):
        state = task.generate(4, random.Random(i))
        plan = task.solve(state)
        rows.append(
            {
                "id": f"frozenlake/train/level4/{i:05d}",
                "task": "frozenlake",
                "level": 4,
                "state": task.dump_state(state),
                "image": b"",
                "optimal_plan": task.format_plan(plan),
                "optimal_length": len(plan),
            }
        )
    return rows


def test_symbolic_base_also_sees_the_teacher_prompt_with_and_without_the_plan() -> None:
    rows = _rows(40)
    task = get_task("frozenlake")
    exs = build_examples(rows, "symbolic")
    plain = [e for e in exs if e.system is None]
    teacher = [e for e in exs if e.system is not None]
    assert plain and teacher and all(e.system == teacher_system(task) for e in teacher)
    hinted = [e for e in teacher if "shortest correct solution" in e.prompt]
    assert hinted and len(hinted) < len(teacher)
    for e, r in zip(exs, rows, strict=True):
        assert e.image is None and e.target.endswith(f"<answer>{r['optimal_plan']}</answer>")
    # the styles are a fixed function of the id, and validation uses the plain prompt only
    assert [e.prompt for e in build_examples(rows, "symbolic")] == [e.prompt for e in exs]
    val = build_examples(rows, "symbolic", teacher_prompts=False)
    state = task.load_state(rows[0]["state"])
    assert all(e.system is None for e in val) and val[0].prompt == text_student_prompt(task, state)


def test_replay_poses_a_share_of_perception_rows_as_text_planning_never_image_to_plan() -> None:
    rows = _rows(200)
    task = get_task("frozenlake")
    plain = build_examples(rows, "perception")
    mixed = build_examples(rows, "perception", replay_symbolic=0.5)
    replayed = [e for e in mixed if e.image is None]
    assert 70 < len(replayed) < 130  # about half, fixed by the row ids
    assert mixed == build_examples(rows, "perception", replay_symbolic=0.5)
    for e, p in zip(mixed, plain, strict=True):
        assert e.id == p.id
        if e.image is None:  # text state -> plan, in the text student's prompt
            assert e.system is None and e.prompt == text_student_prompt(task, task.load_state(e.state))
            assert "<answer>" in e.target
        else:  # untouched: image -> facts, no plan
            assert e == p and "<answer>" not in e.target
    with pytest.raises(ValueError, match="replay_symbolic"):
        TrainConfig(objective="opsd", replay_symbolic=0.5)


def test_scene_questions_are_refused_outside_pretraining() -> None:
    from mgsd.train.config import TrainConfig

    with pytest.raises(ValueError, match="scene_questions"):
        TrainConfig(objective="perception", scene_questions=0.5)
    with pytest.raises(ValueError, match="scene_questions"):
        TrainConfig(objective="pretrain", scene_questions=1.5)
    assert TrainConfig(objective="pretrain", scene_questions=0.5).scene_questions == 0.5
