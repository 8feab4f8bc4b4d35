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


def test_facts_under_the_plan_prompt_train_the_answer_opening_never_the_plan() -> None:
    """A share of the perception rows asks the plan prompt and targets only the facts block, with
    no end-of-turn; tokenised, that target is exactly how the reference plan answer begins."""
    from mgsd.models import Backbone
    from mgsd.pipeline.base_model import shipped_base
    from mgsd.prompts import perception_prompt, reference_response, student_prompt

    rows = _rows(60)
    task = get_task("frozenlake")
    exs = build_examples(rows, "perception", facts_under_plan_prompt=0.5)
    opening = [e for e in exs if e.open_end]
    asked = [e for e in exs if not e.open_end]
    assert 15 < len(opening) < 45 and len(opening) + len(asked) == 60
    bb = Backbone.load(shipped_base())
    for e, r in zip(exs, rows, strict=True):
        state = task.load_state(r["state"])
        if e.open_end:
            assert e.prompt == student_prompt(task) and e.target == task.facts(state)
            assert "<answer>" not in e.target and "Path" not in e.target
            ids = bb.encode_responses([e.target], add_eos=False)[0]
            full = bb.encode_responses([reference_response(task, state, task.split_plan(r["optimal_plan"]))])[
                0
            ]
            assert full[: len(ids)] == ids and len(ids) < len(full)
        else:
            assert e.prompt == perception_prompt(task, state)
    with pytest.raises(ValueError, match="facts_under_plan_prompt is for the perception objective"):
        TrainConfig(objective="plan", facts_under_plan_prompt=0.5)


@pytest.mark.parametrize("name", ["frozenlake", "maze", "minibehaviour"])
def test_the_facts_opening_tokenises_as_the_reference_answer_begins(name: str) -> None:
    from mgsd.models import Backbone
    from mgsd.pipeline.base_model import shipped_base
    from mgsd.prompts import reference_response

    task, bb = get_task(name), Backbone.load(shipped_base())
    for seed in range(5):
        state = task.generate(task.levels[-1], random.Random(seed))
        ids = bb.encode_responses([task.facts(state)], add_eos=False)[0]
        full = bb.encode_responses([reference_response(task, state, task.solve(state))])[0]
        assert full[: len(ids)] == ids, (name, seed)
