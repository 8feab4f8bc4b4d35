"""What each training objective shows the model."""

from __future__ import annotations

import random

from mgsd.prompts import teacher_system, text_student_prompt
from mgsd.tasks import get_task
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
