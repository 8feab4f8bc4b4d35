"""Behavioural tests of the FrozenLake task: generator, simulator, solver, importers, views."""

from __future__ import annotations

import json
import random
import re
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgsd.tasks import get_task
from mgsd.tasks.frozenlake import FrozenLake, sprite_files

SHARED = Path(__file__).resolve().parents[2] / "shared"
VSP = SHARED / "data" / "vsp_examples"
VP_META = SHARED / "data" / "visualplanning_samples" / "frozenlake_test_first5.jsonl"
TASK = FrozenLake()
SEEDS = st.integers(0, 2**32 - 1)
LEVELS = st.sampled_from(FrozenLake.levels)
INVERSE = {"L": "R", "R": "L", "U": "D", "D": "U"}


def brute_force_length(grid: list[str]) -> int | None:
    """Shortest S->G path length by a plain BFS over the grid, written independently of the task."""
    n = len(grid)
    start = next((r, c) for r in range(n) for c in range(n) if grid[r][c] == "S")
    seen = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if grid[r][c] == "G":
            return seen[(r, c)]
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < n and 0 <= nc < n and grid[nr][nc] != "H" and (nr, nc) not in seen:
                seen[(nr, nc)] = seen[(r, c)] + 1
                queue.append((nr, nc))
    return None


def vsp_cases() -> list[Path]:
    return sorted(VSP.glob("level*/table/*.txt")) if VSP.is_dir() else []


def needs_vsp() -> None:
    if not vsp_cases():
        pytest.skip(f"VSP examples not found at {VSP} (shared/ is expected beside the repo)")


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, level=LEVELS)
def test_generated_maps_are_valid_and_solved_optimally(seed: int, level: int) -> None:
    state = TASK.generate(level, random.Random(seed))
    assert TASK.validate(state) == state
    assert TASK.level_of(state) == level
    grid = state["grid"]
    assert len(grid) == level and all(len(row) == level for row in grid)
    plan = TASK.solve(state)
    assert plan is not None
    assert len(plan) == brute_force_length(grid)
    result = TASK.rollout(state, plan)
    assert result.success and result.reason is None
    assert result.steps == len(plan) and result.trailing == 0
    assert TASK.progress(state, plan) == 1.0
    if len(plan) >= 2:  # a step forward then straight back: progress stops after one action
        assert TASK.progress(state, [plan[0], INVERSE[plan[0]], *plan[1:]]) < 1.0
    assert TASK.progress(state, ["X", *plan]) == 0.0


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, level=LEVELS)
def test_generation_is_deterministic(seed: int, level: int) -> None:
    assert TASK.generate(level, random.Random(seed)) == TASK.generate(level, random.Random(seed))


def test_different_seeds_give_different_maps() -> None:
    maps = {TASK.dump_state(TASK.generate(5, random.Random(seed))) for seed in range(50)}
    assert len(maps) >= 48


def test_generator_allows_one_step_maps_and_tracks_vsp_density() -> None:
    rng = random.Random(0)
    states = [TASK.generate(6, rng) for _ in range(400)]
    assert any(len(TASK.solve(s) or []) == 1 for s in states)
    holes = sum(row.count("H") for s in states for row in s["grid"])
    assert 0.14 < holes / (400 * 34) < 0.24  # VSP level-6 maps: 0.18


def test_simulator_reasons() -> None:
    state = TASK.validate({"grid": ["SH", "FG"]})
    sim = TASK.initial(state)
    assert sim == (0, 0)
    assert TASK.step(state, sim, "R").invalid == "fell_into_hole"
    assert TASK.step(state, sim, "U").invalid == "out_of_bounds:U"
    assert TASK.step(state, sim, "L").invalid == "out_of_bounds:L"
    assert TASK.step(state, sim, "PICK").invalid == "unknown_action:PICK"
    down = TASK.step(state, sim, "D")
    assert down.invalid is None and not down.success and down.sim == (1, 0)
    assert TASK.step(state, down.sim, "R").success
    assert TASK.rollout(state, list("DRUU")).trailing == 2
    assert TASK.rollout(state, list("RD")).reason == "fell_into_hole"
    assert TASK.rollout(state, ["D"]).reason == "incomplete"
    assert TASK.solve(state) == ["D", "R"]


@pytest.mark.parametrize(
    "state",
    [
        {"grid": ["SX", "FG"]},  # unknown character
        {"grid": ["SS", "FG"]},  # two starts
        {"grid": ["SF", "FF"]},  # no goal
        {"grid": ["SFF", "FG"]},  # not square
        {"grid": ["SH", "HG"]},  # unsolvable
        {"grid": []},
        {"grid": "SFFG"},
        {"grid": [1, 2]},
        {"grid": ["SF", "FG"], "level": 2},  # stray key
        ["SF", "FG"],
    ],
)
def test_validate_rejects_malformed_states(state: object) -> None:
    with pytest.raises(ValueError):
        TASK.validate(state)  # type: ignore[arg-type]


def test_validate_canonicalises_and_round_trips() -> None:
    state = TASK.validate({"grid": [list("SF"), list("FG")]})
    assert state == {"grid": ["SF", "FG"]}
    assert TASK.load_state(TASK.dump_state(state)) == state
    assert get_task("FrozenLake").name == "frozenlake"


def test_vsp_examples_parse_and_their_plans_succeed() -> None:
    needs_vsp()
    for table in vsp_cases():
        state = FrozenLake.from_vsp_table(table.read_text())
        level = int(table.parts[-3].removeprefix("level"))
        assert TASK.level_of(state) == level
        answer = (table.parent.parent / "answer" / table.name).read_text().strip().splitlines()[-1]
        assert answer.startswith("Action plan:"), table
        plan = re.findall(r"[LRUD]", answer.split(":", 1)[1])
        result = TASK.rollout(state, plan)
        assert result.success, (table, plan, result)
        assert result.steps == len(plan)
        assert len(plan) >= len(TASK.solve(state) or [])


def test_vsp_pure_text_agrees_with_perception() -> None:
    needs_vsp()
    for table in vsp_cases():
        state = FrozenLake.from_vsp_table(table.read_text())
        text = (table.parent.parent / "pure_text" / table.name).read_text()
        cells = [
            f"({int(r) - 1},{int(c) - 1})" for r, c in re.findall(r"[Rr]ow (\d+), [Cc]olumn (\d+)", text)
        ]
        answers = {item.key: item.answer for item in TASK.perception(state)}
        n = TASK.level_of(state)
        assert answers["size"] == f"{n}x{n}" and f"{n}x{n} map" in text
        assert answers["player"] == cells[0]
        assert answers["goal"] == cells[-1]
        assert answers["holes"] == (", ".join(cells[1:-1]) or "none")


def test_vsp_table_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown symbol"):
        FrozenLake.from_vsp_table("| | Col 1 | Col 2 |\n| Row 1 | @ | ? |\n| Row 2 | _ | * |\n")
    with pytest.raises(ValueError):
        FrozenLake.from_vsp_table("no table here")
    with pytest.raises(ValueError):
        FrozenLake.from_vsp_table("| Row 1 | @ | _ |\n| Row 2 | _ | _ |\n")  # no goal


def test_visualplanning_meta_import() -> None:
    meta = {
        "start_pos": 8,
        "target_pos": 4,
        "layout": [["H", "F", "F"], ["F", "G", "H"], ["F", "F", "S"]],
        "level": 3,
    }
    assert FrozenLake.from_visualplanning_meta(meta) == {"grid": ["HFF", "FGH", "FFS"]}
    with pytest.raises(ValueError, match="start_pos"):
        FrozenLake.from_visualplanning_meta({**meta, "start_pos": 7})
    with pytest.raises(ValueError, match="level"):
        FrozenLake.from_visualplanning_meta({**meta, "level": 4})
    with pytest.raises(ValueError):
        FrozenLake.from_visualplanning_meta({"layout": meta["layout"]})
    if VP_META.is_file():
        for line in VP_META.read_text().splitlines():
            row = json.loads(line)["meta"]
            state = FrozenLake.from_visualplanning_meta(row)
            assert len(TASK.solve(state) or []) == row["distance_map"][str(row["start_pos"])]


def test_text_views() -> None:
    state = TASK.validate({"grid": ["FFFF", "FFGF", "FFHH", "FSFF"]})
    text = TASK.symbolic_text(state)
    for needle in ("FrozenLake", "4x4", "(3,1)", "(1,2)", "(2,2), (2,3)", "FFHH"):
        assert needle in text
    items = TASK.perception(state)
    assert [(i.key, i.kind, i.answer) for i in items] == [
        ("size", "size", "4x4"),
        ("player", "position", "(3,1)"),
        ("goal", "position", "(1,2)"),
        ("holes", "cells", "(2,2), (2,3)"),
    ]
    no_holes = TASK.validate({"grid": ["SF", "FG"]})
    assert "none" in TASK.symbolic_text(no_holes)
    assert TASK.perception(no_holes)[3].answer == "none"


def test_render_shape_and_tiles() -> None:
    state = TASK.validate({"grid": ["SFFF", "FFFF", "FHFF", "FFFG"]})
    image = TASK.render(state)
    assert image.size == (256, 256) and image.mode == "RGB"
    tile = [
        [image.crop((64 * c, 64 * r, 64 * c + 64, 64 * r + 64)).tobytes() for c in range(4)] for r in range(4)
    ]
    assert tile[0][1] == tile[1][1] == tile[3][0]  # frozen tiles look alike
    assert len({tile[0][0], tile[0][1], tile[2][1], tile[3][3]}) == 4  # player, ice, hole, goal differ
    # the player stands on S: its centre is not plain ice
    assert image.getpixel((32, 32)) != image.getpixel((96, 32))
    assert image.getpixel((0, 100)) == (180, 200, 230)  # the 1-px cell outline
    for level in (3, 5, 7):
        small = TASK.render(TASK.generate(level, random.Random(level)), size=256)
        assert small.size == (256, 256) and small.mode == "RGB"


def test_render_matches_vsp_images_with_classic_sprites() -> None:
    needs_vsp()
    if sprite_files()["ice"].name != "ice.png":
        pytest.skip("installed gymnasium (>= 1.4) ships different FrozenLake sprites than the VSP images")
    from PIL import Image, ImageChops, ImageStat

    for table in vsp_cases()[::4]:
        state = FrozenLake.from_vsp_table(table.read_text())
        png = Image.open(table.parent.parent / "img" / table.name.replace(".txt", ".png")).convert("RGB")
        png = png.resize((256, 256), Image.LANCZOS)
        diff = ImageStat.Stat(ImageChops.difference(TASK.render(state), png)).mean
        assert max(diff) < 1.0, (table, diff)
