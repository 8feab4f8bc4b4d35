"""A fourth task is its module plus one registry line: a trivial grid task, defined here, registered
with one call, works for generation, scoring, prompts, the gymnasium env and ``mgsd run``'s config
and data building (no training)."""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import pytest
from PIL import Image, ImageDraw

from mgsd.config import load_config
from mgsd.data.generate import generate_dataset
from mgsd.data.io import read_rows
from mgsd.prompts import perception_prompt, reference_response, student_prompt, teacher_system
from mgsd.scoring.perception import score_perception
from mgsd.scoring.plans import score_response
from mgsd.tasks import MOVES, PerceptionItem, PromptWording, Task, Transition, get_task, task_names


class OpenGrid(Task):
    """An empty NxN grid: walk from the start to the goal."""

    name: ClassVar[str] = "opengrid"
    title: ClassVar[str] = "OpenGrid"
    levels: ClassVar[tuple[int, ...]] = (3, 4)
    actions: ClassVar[tuple[str, ...]] = ("U", "D", "L", "R")
    plan_separator: ClassVar[str] = ""
    wording: ClassVar[PromptWording] = PromptWording(
        legend="The red dot is the player, the green dot the goal.",
        goal="Reach the goal.",
        rules="Moves: U, D, L, R, one cell each, never off the grid.",
        answer_format="letters, e.g. <answer>RRD</answer>",
        restate="nothing else",
    )

    def generate(self, level: int, rng: random.Random) -> dict[str, Any]:
        cells = [(r, c) for r in range(level) for c in range(level)]
        start, goal = rng.sample(cells, 2)
        return {"size": level, "start": list(start), "goal": list(goal)}

    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        n = int(state["size"])
        start, goal = (tuple(int(x) for x in state[k]) for k in ("start", "goal"))
        if n not in self.levels or start == goal or not all(0 <= x < n for x in (*start, *goal)):
            raise ValueError(f"bad opengrid state {state!r}")
        return {"size": n, "start": list(start), "goal": list(goal)}

    def level_of(self, state: dict[str, Any]) -> int:
        return int(state["size"])

    def initial(self, state: dict[str, Any]) -> Hashable:
        return tuple(state["start"])

    def step(self, state: dict[str, Any], sim: Hashable, action: str) -> Transition:
        if action not in MOVES:
            return Transition(sim, invalid=f"unknown_action:{action}")
        (r, c), (dr, dc) = sim, MOVES[action]  # type: ignore[misc]
        n = state["size"]
        if not (0 <= r + dr < n and 0 <= c + dc < n):
            return Transition(sim, invalid="off_grid")
        here = (r + dr, c + dc)
        return Transition(here, success=here == tuple(state["goal"]))

    def position(self, sim: Hashable) -> tuple[int, int]:
        return sim  # type: ignore[return-value]

    def render(self, state: dict[str, Any], size: int = 256) -> Image.Image:
        image = Image.new("RGB", (size, size), "white")
        draw, cell = ImageDraw.Draw(image), size / state["size"]
        for (r, c), colour in ((state["start"], "red"), (state["goal"], "green")):
            draw.ellipse((c * cell, r * cell, (c + 1) * cell, (r + 1) * cell), fill=colour)
        return image

    def symbolic_text(self, state: dict[str, Any]) -> str:
        return self.facts(state)

    def perception(self, state: dict[str, Any]) -> list[PerceptionItem]:
        n, (sr, sc), (gr, gc) = state["size"], state["start"], state["goal"]
        return [
            PerceptionItem("size", "size", "What is the size of the grid?", f"{n}x{n}"),
            PerceptionItem("player", "position", "Where is the player?", f"({sr},{sc})"),
            PerceptionItem("goal", "position", "Where is the goal?", f"({gr},{gc})"),
        ]


@pytest.fixture
def opengrid() -> Iterator[Task]:
    from mgsd.tasks import register_task, unregister_task

    register_task("opengrid", OpenGrid)  # the one line a new task needs
    try:
        yield get_task("opengrid")
    finally:
        unregister_task("opengrid")


def test_registered_task_is_found(opengrid: Task) -> None:
    assert "opengrid" in task_names() and get_task("OpenGrid") is opengrid
    with pytest.raises(ValueError, match="unknown task"):
        get_task("opengrids")


def test_generation_scoring_and_prompts(opengrid: Task, tmp_path: Path) -> None:
    out = generate_dataset(opengrid, [3, 4], 3, split="test", seed=0, out=tmp_path, progress=False)
    rows = read_rows(out)
    assert len(rows) == 6 and {r["task"] for r in rows} == {"opengrid"}
    assert len({r["state"] for r in rows}) == 6  # deduplicated
    row = rows[0]
    state = opengrid.load_state(row["state"])
    plan = opengrid.split_plan(row["optimal_plan"])
    answer = reference_response(opengrid, state, plan)
    score = score_response(opengrid, state, answer, sample_id=row["id"], optimal_length=row["optimal_length"])
    assert score.success and score.optimal
    wrong = score_response(opengrid, state, "<answer>Q</answer>", sample_id="x", optimal_length=1)
    assert not wrong.success
    assert score_perception(opengrid.perception(state), opengrid.facts(state))["all_correct"]
    assert "OpenGrid puzzle in the image. Reach the goal." in student_prompt(opengrid)
    assert "letters, e.g. <answer>RRD</answer>" in teacher_system(opengrid)
    assert "Where is the goal?" in perception_prompt(opengrid, state)


def test_gymnasium_env(opengrid: Task) -> None:
    from mgsd.envs import env_id, register_envs

    register_envs()  # again, now that the task is registered
    env = gymnasium.make(env_id("opengrid"), level=4, image_size=32)
    _, info = env.reset(seed=0)
    plan = opengrid.solve(opengrid.load_state(info["state"]))
    assert plan is not None
    for a in plan:
        _, reward, terminated, _, info = env.step(opengrid.actions.index(a))
    assert terminated and reward == 1.0 and info["success"]


def test_mgsd_run_config_and_data(opengrid: Task, tmp_path: Path) -> None:
    from mgsd.pipeline import PipelineConfig, RunLayout, build_data, check_settings, training_stages

    cfg = load_config(
        PipelineConfig,
        None,
        ["data.tasks=[opengrid]", "data.test_per_task=4", "data.val_per_level=1", "data.train_per_level=2"],
    )
    check_settings(cfg, training_stages(cfg, RunLayout(tmp_path), Path("base")))
    assert cfg.data.task_levels("opengrid") == [3, 4]  # no levels entry: every level of the task
    cfg = load_config(
        PipelineConfig, None, ["data.tasks=[opengrid]", "data.levels.opengrid=4", "progress=false"]
    )
    cfg.data.test_per_task, cfg.data.val_per_level, cfg.data.train_per_level = 2, 1, 2
    build_data(cfg, tmp_path / "data", {})
    counts = {s: len(read_rows(tmp_path / "data" / s)) for s in ("test", "val", "train")}
    assert counts == {"test": 2, "val": 1, "train": 2}
    states = [{r["state"] for r in read_rows(tmp_path / "data" / s)} for s in ("test", "val", "train")]
    assert not (states[0] & states[1] or states[0] & states[2] or states[1] & states[2])

    from mgsd.train.examples import build_examples

    for objective in ("perception", "plan", "opsd"):
        assert build_examples(read_rows(tmp_path / "data" / "train"), objective)
