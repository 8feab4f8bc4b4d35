"""Behavioural tests of the Maze task: generator, simulator, solver, importer, views."""

from __future__ import annotations

import copy
import random
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgsd.tasks import get_task
from mgsd.tasks.maze import Maze, bucket_of, difficulty

TASK = Maze()
SEEDS = st.integers(0, 2**32 - 1)
LEVELS = st.sampled_from(Maze.levels)
INVERSE = {"L": "R", "R": "L", "U": "D", "D": "U"}
# Written out here rather than imported, so the tests check the task's bit convention.
BITS = {"U": 1, "D": 2, "L": 4, "R": 8}
STEP = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}


def brute_force_length(state: dict) -> int | None:
    """Shortest start->goal path length by a plain BFS over the wall masks."""
    walls, goal = state["walls"], tuple(state["goal"])
    start = tuple(state["start"])
    seen = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            return seen[(r, c)]
        for a, (dr, dc) in STEP.items():
            if not walls[r][c] & BITS[a] and (r + dr, c + dc) not in seen:
                seen[(r + dr, c + dc)] = seen[(r, c)] + 1
                queue.append((r + dr, c + dc))
    return None


def open_passages(state: dict) -> int:
    n, walls = state["size"], state["walls"]
    return sum(not walls[r][c] & BITS["R"] for r in range(n) for c in range(n - 1)) + sum(
        not walls[r][c] & BITS["D"] for r in range(n - 1) for c in range(n)
    )


def small_maze() -> dict:
    """2x2 maze: (0,0)-(0,1) open, (0,0)-(1,0) open, (1,0)-(1,1) open, (0,1)-(1,1) walled."""
    walls = [[1 | 4, 1 | 8 | 2], [2 | 4, 1 | 2 | 8]]
    return TASK.validate({"size": 2, "walls": walls, "start": [0, 1], "goal": [1, 1]})


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, level=LEVELS)
def test_generated_mazes_are_perfect_and_solved_optimally(seed: int, level: int) -> None:
    state = TASK.generate(level, random.Random(seed))
    assert TASK.validate(state) == state
    assert TASK.level_of(state) == level
    assert open_passages(state) == level * level - 1  # a spanning tree...
    n = level
    for r in range(n):  # ...that reaches every cell
        for c in range(n):
            assert brute_force_length({**state, "goal": [r, c]}) is not None
    plan = TASK.solve(state)
    assert plan is not None and len(plan) == brute_force_length(state)
    assert difficulty(state) == TASK.difficulty(state) == bucket_of(len(plan), level)
    result = TASK.rollout(state, plan)
    assert result.success and result.steps == len(plan) and result.trailing == 0
    assert TASK.progress(state, plan) == 1.0
    if len(plan) >= 2:
        assert TASK.progress(state, [plan[0], INVERSE[plan[0]], *plan[1:]]) < 1.0
    walled = [a for a in "UDLR" if state["walls"][state["start"][0]][state["start"][1]] & BITS[a]]
    if walled:  # a start cell can be open on all four sides
        assert TASK.progress(state, [walled[0], *plan]) == 0.0


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, level=LEVELS)
def test_generation_is_deterministic(seed: int, level: int) -> None:
    assert TASK.generate(level, random.Random(seed)) == TASK.generate(level, random.Random(seed))


def test_different_seeds_differ_and_buckets_are_balanced() -> None:
    states = [TASK.generate(4, random.Random(seed)) for seed in range(150)]
    assert len({TASK.dump_state(s) for s in states}) >= 145
    counts = Counter(difficulty(s) for s in states)
    assert set(counts) == {"easy", "medium", "hard"}
    assert min(counts.values()) >= 25  # each bucket is requested with probability 1/3


def test_bucket_thresholds() -> None:
    assert [bucket_of(k, 3) for k in (1, 2, 3, 4, 8)] == ["easy", "medium", "medium", "hard", "hard"]
    assert [bucket_of(k, 6) for k in (3, 4, 6, 7)] == ["easy", "medium", "medium", "hard"]


def test_simulator_reasons() -> None:
    state = small_maze()
    sim = TASK.initial(state)
    assert sim == (0, 1)
    assert TASK.step(state, sim, "D").invalid == "wall_blocked:D"
    assert TASK.step(state, sim, "U").invalid == "wall_blocked:U"
    assert TASK.step(state, sim, "R").invalid == "wall_blocked:R"
    assert TASK.step(state, sim, "PICK").invalid == "unknown_action:PICK"
    left = TASK.step(state, sim, "L")
    assert left.sim == (0, 0) and not left.success
    assert TASK.solve(state) == ["L", "D", "R"]
    assert TASK.rollout(state, list("LDRLL")).trailing == 2
    assert TASK.rollout(state, list("LL")).reason == "wall_blocked:L"
    # Off-grid is still caught if a state without border walls reaches the simulator unvalidated.
    raw = copy.deepcopy(state)
    raw["walls"][0][1] = 0
    assert TASK.step(raw, (0, 1), "U").invalid == "out_of_bounds:U"


def _broken(change) -> dict:
    state = copy.deepcopy(small_maze())
    change(state)
    return state


@pytest.mark.parametrize(
    "state",
    [
        _broken(lambda s: s["walls"][0].__setitem__(0, 16)),  # mask out of range
        _broken(lambda s: s["walls"][0].__setitem__(0, 4)),  # missing north border
        _broken(lambda s: s["walls"][0].__setitem__(0, 1 | 4 | 8)),  # E of (0,0) but no W of (0,1)
        _broken(lambda s: s["walls"][1].__setitem__(0, 1 | 2 | 4)),  # N of (1,0) but no S of (0,0)
        _broken(lambda s: s.__setitem__("goal", [0, 1])),  # start == goal
        _broken(lambda s: s.__setitem__("goal", [2, 0])),  # goal off the grid
        _broken(lambda s: s.__setitem__("size", 3)),  # shape mismatch
        _broken(lambda s: s.__setitem__("extra", 1)),
        _broken(lambda s: s["walls"].pop()),
        {"size": 2, "walls": [[15, 15], [15, 15]], "start": [0, 0], "goal": [1, 1]},  # unreachable goal
        [[5, 9], [6, 10]],  # not a dict
    ],
)
def test_validate_rejects_malformed_states(state: object) -> None:
    with pytest.raises(ValueError):
        TASK.validate(state)  # type: ignore[arg-type]


def test_validate_round_trip() -> None:
    state = small_maze()
    assert TASK.load_state(TASK.dump_state(state)) == state
    assert TASK.validate({**state, "walls": [tuple(row) for row in state["walls"]]}) == state
    assert get_task("MAZE").name == "maze"


def test_visualplanning_meta_import_round_trips() -> None:
    state = TASK.generate(5, random.Random(3))
    names = {"north": 1, "south": 2, "west": 4, "east": 8}
    layout = [[{k: bool(m & b) for k, b in names.items()} for m in row] for row in state["walls"]]
    (sr, sc), (gr, gc) = state["start"], state["goal"]
    meta = {"layout": layout, "start_pos": sr * 5 + sc, "target_pos": gr * 5 + gc, "level": 5}
    assert Maze.from_visualplanning_meta(meta) == state
    with pytest.raises(ValueError, match="level"):
        Maze.from_visualplanning_meta({**meta, "level": 4})
    with pytest.raises(ValueError, match="outside"):
        Maze.from_visualplanning_meta({**meta, "target_pos": 25})
    with pytest.raises(ValueError):
        Maze.from_visualplanning_meta({"layout": [[{"north": True}]], "start_pos": 0, "target_pos": 0})
    with pytest.raises(ValueError):
        Maze.from_visualplanning_meta({k: v for k, v in meta.items() if k != "start_pos"})


def test_text_views() -> None:
    state = small_maze()
    table = "(0,0): right, down\n(0,1): left\n(1,0): up, right\n(1,1): left"
    text = TASK.symbolic_text(state)
    grid = "┌╴\n└╴"
    for needle in ("Maze", "2x2", "(0,1)", "(1,1)", grid):
        assert needle in text
    items = TASK.perception(state)
    assert [(i.key, i.kind, i.answer) for i in items] == [
        ("size", "size", "2x2"),
        ("player", "position", "(0,1)"),
        ("goal", "position", "(1,1)"),
        ("open_dirs", "open_dirs", grid),
        ("legal_actions", "actions", "left"),
    ]
    boxed = {"size": 2, "walls": [[15, 15], [15, 15]], "start": [0, 0], "goal": [1, 1]}
    assert TASK.open_table(boxed).splitlines()[0] == "(0,0): none"
    assert TASK.open_table(state) == table
    assert TASK.open_grid(boxed) == "··\n··"


def test_glyphs_cover_every_open_set() -> None:
    from itertools import combinations

    from mgsd.tasks.maze import GLYPH_MOVES, GLYPHS

    sets = {frozenset(c) for k in range(5) for c in combinations("URDL", k)}
    assert set(GLYPHS) == sets and len(GLYPH_MOVES) == 16


@pytest.mark.parametrize("level", Maze.levels)
def test_render_colours(level: int) -> None:
    state = TASK.generate(level, random.Random(level))
    image = TASK.render(state)
    assert image.size == (256, 256) and image.mode == "RGB"
    cell = 256 / level

    def centre(r: float, c: float) -> tuple[int, int]:
        return int((c + 0.5) * cell), int((r + 0.5) * cell)

    assert image.getpixel(centre(*state["start"])) == (255, 255, 0)
    assert image.getpixel(centre(*state["goal"])) == (0, 0, 255)
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((255, 128)) == (0, 0, 0)
    walls = state["walls"]
    for r in range(level):
        for c in range(level - 1):
            # the point on the border with the right neighbour, a quarter down the cell
            x, y = round((c + 1) * cell), int((r + 0.25) * cell)
            expected = (0, 0, 0) if walls[r][c] & BITS["R"] else (224, 224, 224)
            assert image.getpixel((x, y)) == expected, (r, c)
            if [r, c] not in (state["start"], state["goal"]):
                assert image.getpixel(centre(r, c)) == (255, 255, 255)


def test_maze_search_returns_the_generic_search_plan_with_loops_too():
    from mgsd.tasks.base import Task
    from mgsd.tasks.maze import Maze, carve

    task = Maze()
    for seed in range(300):
        rng = random.Random(seed)
        n = rng.choice([2, 3, 5, 6, 8])
        walls = carve(n, rng)
        for _ in range(rng.randrange(2 * n)):  # knock out interior walls: loops, so ties
            r, c = rng.randrange(n), rng.randrange(n - 1)
            walls[r][c] &= ~8
            walls[r][c + 1] &= ~4
        cells = [(r, c) for r in range(n) for c in range(n)]
        start, goal = rng.sample(cells, 2)
        state = {"size": n, "walls": walls, "start": list(start), "goal": list(goal)}
        assert task.solve(state) == Task.solve(task, state), state
