"""Behavioural tests of the MiniBehaviour task: rules, solver, generator, renderer, text views."""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgsd.tasks import get_task
from mgsd.tasks.minibehaviour import MiniBehaviour, bucket_of

TASK = get_task("minibehaviour")
SAMPLES = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "visualplanning_samples"
    / "minibehaviour_test_first5.jsonl"
)
STEP = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}


def make(agent, printer, top_left=(2, 2), size=5):
    r0, c0 = top_left
    table = [[r0 + i, c0 + j] for i in range(2) for j in range(3)]
    return {"size": size, "agent": list(agent), "printer": list(printer), "table": table}


def brute_force_length(state: dict) -> int | None:
    """Shortest action count over (cell, carrying), written from the rules, not from the task."""
    n = state["size"]
    table = {tuple(t) for t in state["table"]}
    printer = tuple(state["printer"])

    def near(a, b):
        return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1

    start = (tuple(state["agent"]), False)
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cell, carrying = queue.popleft()
        d = dist[(cell, carrying)]
        if carrying and any(near(cell, t) for t in table):
            return d + 1  # DROP
        nxt = []
        if not carrying and near(cell, printer):
            nxt.append((cell, True))
        for dr, dc in STEP.values():
            new = (cell[0] + dr, cell[1] + dc)
            if not (0 <= new[0] < n and 0 <= new[1] < n) or new in table:
                continue
            if new == printer and not carrying:
                continue
            nxt.append((new, carrying))
        for s in nxt:
            if s not in dist:
                dist[s] = d + 1
                queue.append(s)
    return None


def sample_rows() -> list[dict]:
    if not SAMPLES.exists():
        pytest.skip(f"VisualPlanning sample file not found at {SAMPLES}")
    return [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]


# -- generator and solver ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), level=st.sampled_from(TASK.levels))
def test_generated_instances_are_valid_solvable_and_optimal(seed: int, level: int) -> None:
    state = TASK.generate(level, random.Random(seed))
    assert TASK.validate(state) == state
    assert TASK.level_of(state) == level
    plan = TASK.solve(state)
    assert plan is not None
    assert len(plan) == brute_force_length(state)
    result = TASK.rollout(state, plan)
    assert result.success and result.reason is None
    assert result.steps == len(plan) and result.trailing == 0
    assert plan[-1] == "DROP" and plan.count("PICK") == 1
    assert TASK.progress(state, plan) == 1.0
    assert TASK.difficulty(state) == bucket_of(len(plan), level)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_solver_matches_brute_force_on_raw_candidates(seed: int) -> None:
    rng = random.Random(seed)
    for level in TASK.levels:
        state = TASK._candidate(level, rng)
        if state is None:
            continue
        plan = TASK.solve(state)
        assert plan is not None and len(plan) == brute_force_length(state)


def test_generation_is_deterministic_per_seed() -> None:
    for level in TASK.levels:
        a = [TASK.generate(level, random.Random(7)) for _ in range(2)]
        assert a[0] == a[1]
    draws = {TASK.dump_state(TASK.generate(5, random.Random(s))) for s in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize("level", [5, 6])
@pytest.mark.parametrize("bucket", ["easy", "medium", "hard"])
def test_generate_bucket_hits_the_requested_bucket(level: int, bucket: str) -> None:
    rng = random.Random(level)
    for _ in range(5):
        state = TASK.generate_bucket(level, rng, bucket)
        assert TASK.difficulty(state) == bucket


def test_unbucketed_draws_resemble_visualplanning_lengths() -> None:
    # VisualPlanning test set: mean optimal length 5.24 (level 5) and 6.27 (level 6).
    rng = random.Random(3)
    for level, target in ((5, 5.24), (6, 6.27)):
        lengths = [len(TASK.solve(TASK.generate_bucket(level, rng, None))) for _ in range(400)]
        assert min(lengths) == 2
        assert abs(sum(lengths) / len(lengths) - target) < 0.35


def test_bucket_boundaries_and_bad_arguments() -> None:
    assert [bucket_of(n, 5) for n in (2, 4, 5, 6, 7)] == ["easy", "easy", "medium", "medium", "hard"]
    with pytest.raises(ValueError, match="level"):
        TASK.generate(7, random.Random(0))
    with pytest.raises(ValueError, match="bucket"):
        TASK.generate_bucket(5, random.Random(0), "tricky")


# -- rules -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "plan", "reason"),
    [
        (make((0, 0), (1, 0)), ["U"], "out_of_bounds:U"),
        (make((0, 0), (1, 0)), ["L"], "out_of_bounds:L"),
        (make((4, 4), (0, 0)), ["D"], "out_of_bounds:D"),
        (make((4, 4), (0, 0)), ["R"], "out_of_bounds:R"),
        (make((1, 2), (0, 0)), ["D"], "entered_table"),
        (make((0, 1), (0, 0)), ["L"], "entered_printer"),
        (make((0, 1), (0, 0)), ["PICK", "PICK"], "pick_while_carrying"),
        (make((0, 3), (0, 0)), ["PICK"], "pick_not_adjacent_to_printer"),
        (make((1, 2), (0, 0)), ["DROP"], "drop_without_printer"),
        (make((0, 1), (0, 0)), ["PICK", "DROP"], "drop_not_adjacent_to_table"),
        (make((0, 1), (0, 0)), ["JUMP"], "unknown_action:JUMP"),
        (make((0, 1), (0, 0)), ["pick"], "unknown_action:pick"),
    ],
)
def test_each_invalid_reason(state: dict, plan: list[str], reason: str) -> None:
    state = TASK.validate(state)
    result = TASK.rollout(state, plan)
    assert not result.success
    assert result.reason == reason
    assert result.steps == len(plan)


def test_printer_cell_is_free_after_pick_and_drop_ends_the_episode() -> None:
    state = TASK.validate(make((0, 1), (0, 0), top_left=(3, 2)))
    # Walk through the old printer cell after picking it up, then drop next to the table.
    result = TASK.rollout(state, ["PICK", "L", "D", "D", "R", "R", "DROP", "U", "U"])
    assert result.success and result.steps == 7 and result.trailing == 2
    assert TASK.position(result.visited[2]) == (0, 0)
    assert TASK.rollout(state, ["PICK", "D"]).reason == "incomplete"
    assert TASK.rollout(state, []).reason == "parse_failure"


def test_minimum_plan_is_pick_then_drop() -> None:
    state = TASK.validate(make((1, 2), (1, 1)))
    assert TASK.solve(state) == ["PICK", "DROP"]
    assert TASK.difficulty(state) == "easy"


def test_progress_counts_the_useful_prefix() -> None:
    state = TASK.validate(make((0, 4), (0, 0), top_left=(3, 0)))
    plan = TASK.solve(state)
    assert plan is not None and len(plan) == 7  # L,L,L to (0,1), PICK, D,D to (2,1), DROP
    assert TASK.progress(state, plan) == 1.0
    assert TASK.progress(state, ["R"]) == 0.0  # out of bounds at once
    assert TASK.progress(state, ["D", *plan]) == 0.0  # first move does not get closer
    assert TASK.progress(state, plan[:3]) == pytest.approx(3 / len(plan))
    assert TASK.progress(state, ["L", "L", "L", "PICK", "U"]) == pytest.approx(4 / len(plan))


# -- VisualPlanning samples ---------------------------------------------------------------------
def actions_from_trajectory(states: list) -> list[str]:
    """Actions of a VisualPlanning ``input_state`` trajectory [[[r, c], carrying], ...]."""
    names = {v: k for k, v in STEP.items()}
    out = []
    for ((r0, c0), held0), ((r1, c1), held1) in itertools.pairwise(states):
        if (r0, c0) != (r1, c1):
            assert held0 == held1
            out.append(names[(r1 - r0, c1 - c0)])
        elif not held0 and held1:
            out.append("PICK")
        elif held0 and not held1:
            out.append("DROP")  # the sample encodes the final DROP as carrying True -> False in place
        else:
            raise AssertionError(f"no action turns {states} step into the next")
    return out


def test_visualplanning_rows_load_solve_and_replay() -> None:
    for row in sample_rows():
        state = MiniBehaviour.from_visualplanning_meta(row["meta"])
        assert state["size"] == row["meta"]["level"]
        assert state["agent"] == row["meta"]["start_pos"]
        expected = len(row["input_state"]) - 1
        plan = TASK.solve(state)
        assert plan is not None and len(plan) == expected == brute_force_length(state)
        replay = actions_from_trajectory(row["input_state"])
        assert replay[-1] == "DROP"
        result = TASK.rollout(state, replay)
        assert result.success and result.steps == expected and result.trailing == 0
        # Our adjacency lists agree with the sample's derived fields.
        items = {p.key: p.answer for p in TASK.perception(state)}
        meta_printer = sorted(tuple(c) for c in row["meta"]["printer_neighbors"])
        meta_table = sorted(tuple(c) for c in row["meta"]["table_neighbors"])
        assert items["printer_adjacent"] == ", ".join(f"({r},{c})" for r, c in meta_printer)
        assert items["table_adjacent"] == ", ".join(f"({r},{c})" for r, c in meta_table)


@pytest.mark.parametrize(
    "meta",
    [
        None,
        {"level": 5, "start_pos": [0, 0], "printer_pos": [1, 0]},
        {"level": 5, "start_pos": [0, 0], "printer_pos": [1, 0], "table_pos": [[3, 1]]},
        {"level": 5, "start_pos": "0,0", "printer_pos": [1, 0], "table_pos": make((0, 0), (0, 0))["table"]},
    ],
)
def test_from_visualplanning_meta_rejects_malformed(meta) -> None:
    with pytest.raises(ValueError):
        MiniBehaviour.from_visualplanning_meta(meta)


# -- validation ----------------------------------------------------------------------------------
def test_validate_canonicalises_table_order_and_tuples() -> None:
    state = make((0, 0), (1, 0))
    shuffled = {**state, "table": [tuple(t) for t in reversed(state["table"])], "agent": (0, 0)}
    assert TASK.validate(shuffled) == state
    assert TASK.load_state(TASK.dump_state(shuffled)) == state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 2}, "size"),
        ({"size": True}, "size"),
        ({"size": "5"}, "size"),
        ({"agent": [0, 5]}, "outside"),
        ({"agent": [0]}, "pair"),
        ({"agent": [0.0, 1.0]}, "pair"),
        ({"agent": [2, 2]}, "on the table"),
        ({"printer": [3, 3]}, "on the table"),
        ({"printer": [0, 0]}, "share"),
        ({"printer": None}, "pair"),
        ({"table": [[2, 2], [2, 3], [2, 4], [3, 2], [3, 3]]}, "6 cells"),
        ({"table": [[2, 2], [2, 3], [2, 4], [3, 2], [3, 3], [4, 4]]}, "block"),
        ({"table": [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]}, "block"),
        ({"table": [[2, 2], [2, 2], [2, 3], [2, 4], [3, 2], [3, 3]]}, "block"),
        ({"extra": 1}, "unexpected"),
    ],
)
def test_validate_rejects_malformed_states(change: dict, message: str) -> None:
    state = {**make((0, 0), (1, 0)), **change}
    with pytest.raises(ValueError, match=message):
        TASK.validate(state)


def test_validate_rejects_missing_keys_and_non_dicts() -> None:
    with pytest.raises(ValueError, match="missing"):
        TASK.validate({"size": 5})
    with pytest.raises(ValueError, match="dict"):
        TASK.validate([5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        TASK.load_state("{not json")


# -- views -------------------------------------------------------------------------------------------
def centre(image, cell, size=5, px=256):
    w = px / size
    return image.getpixel((int((cell[1] + 0.5) * w), int((cell[0] + 0.5) * w)))


@pytest.mark.parametrize("size", [5, 6])
def test_render_colours(size: int) -> None:
    state = TASK.validate(make((0, 0), (size - 1, 0), top_left=(1, 1), size=size))
    image = TASK.render(state)
    assert image.size == (256, 256) and image.mode == "RGB"
    assert centre(image, (0, 0), size) == (255, 24, 16)  # agent
    assert centre(image, (size - 1, 0), size) == (255, 255, 255)  # printer body
    for r, c in state["table"]:
        assert centre(image, (r, c), size) == (181, 143, 96)
    assert centre(image, (0, size - 1), size) == (0, 0, 0)  # free floor
    assert image.getpixel((0, 100)) == (60, 60, 60)  # outer grid line
    assert image.getpixel((255, 100)) == (60, 60, 60)
    assert TASK.render(state, size=128).size == (128, 128)


def test_state_at_draws_the_agent_where_it_is_and_hides_a_picked_printer() -> None:
    state = TASK.validate(make((0, 1), (0, 0), top_left=(3, 2)))
    before = TASK.render(TASK.state_at(state, (1, 1, False)))
    assert centre(before, (1, 1)) == (255, 24, 16)
    assert centre(before, (0, 1)) == (0, 0, 0)
    assert centre(before, (0, 0)) == (255, 255, 255)
    after = TASK.render(TASK.state_at(state, (0, 1, True)))
    assert centre(after, (0, 0)) == (0, 0, 0)


def test_symbolic_text_and_perception() -> None:
    state = TASK.validate(make((2, 1), (1, 2)))
    text = TASK.symbolic_text(state)
    assert "5x5" in text and "agent: (2,1)" in text and "printer: (1,2)" in text
    assert "(2,2), (2,3), (2,4), (3,2), (3,3), (3,4)" in text
    assert "\n.....\n..P..\n.ATTT\n..TTT\n....." in text
    assert TASK.facts(state) in text  # restating the state is a copy for a text reader
    items = TASK.perception(state)
    assert [p.kind for p in items] == ["size", "position", "position", "cells", "cells", "cells", "actions"]
    answers = [p.answer for p in items]
    assert answers[:4] == ["5x5", "(2,1)", "(1,2)", "(2,2), (2,3), (2,4), (3,2), (3,3), (3,4)"]
    assert answers[4] == "(0,2), (1,1), (1,3)"
    assert answers[5] == "(1,2), (1,3), (1,4), (2,1), (3,1), (4,2), (4,3), (4,4)"
    assert answers[6] == "up, down, left"  # right is the table
    boxed = TASK.validate(
        {"size": 3, "agent": [2, 0], "printer": [2, 1], "table": make((0, 0), (0, 0), (0, 0))["table"]}
    )
    assert TASK.perception(boxed)[6].answer == "none"


def test_specialised_solver_returns_the_generic_search_plan():
    from mgsd.tasks.base import Task

    task = MiniBehaviour()
    checked = 0
    for seed in range(400):
        rng = random.Random(seed)
        state = task._candidate(rng.choice([3, 4, 5, 6, 8]), rng)
        if state is None:
            continue
        checked += 1
        assert task.solve(state) == Task.solve(task, state), state
    assert checked > 300
