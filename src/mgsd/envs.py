"""Gymnasium environments over the planning tasks: one episode = one instance, image observations.

Importing this module registers ``mgsd/FrozenLake-v0``, ``mgsd/Maze-v0``, ``mgsd/MiniBehaviour-v0`` (one
``mgsd/<Title>-v0`` per registered task),
so ``gymnasium.make("mgsd.envs:mgsd/Maze-v0", level=4)`` works without an explicit import. (Gymnasium
1.x no longer reads the ``gymnasium.envs`` entry-point group that pyproject.toml declares.)

The dynamics are the task's own ``step``: an illegal action ends the episode with reward 0 and its
reason in ``info["invalid"]``; reaching the goal ends it with reward 1.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from mgsd.tasks import TASK_NAMES, get_task, task_names


def env_id(task: str) -> str:
    """``mgsd/<Title>-v0``: the gymnasium id of a registered task."""
    return f"mgsd/{get_task(task).title}-v0"


# The built-in tasks' ids; ``register_envs`` registers every task in the registry at the time.
ENV_IDS: dict[str, str] = {name: env_id(name) for name in TASK_NAMES}
# Moving without ever acting illegally can go on forever (MiniBehaviour, open FrozenLake maps).
MAX_EPISODE_STEPS = 100
_MARKER = (255, 0, 255)


def register_envs() -> None:
    """Register an environment of every registered task with gymnasium (safe to call more than
    once; call it again after ``mgsd.tasks.register_task``)."""
    for task in task_names():
        if env_id(task) not in gymnasium.registry:
            gymnasium.register(
                id=env_id(task),
                entry_point="mgsd.envs:PlanningEnv",
                kwargs={"task": task},
                max_episode_steps=MAX_EPISODE_STEPS,
            )


class PlanningEnv(gymnasium.Env):
    """One planning task as a gymnasium environment.

    The observation is the rendered image of the current situation (agent at its current cell;
    for MiniBehaviour the printer vanishes once picked). Actions index ``task.actions``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        task: str,
        level: int | None = None,
        state: dict[str, Any] | None = None,
        render_mode: str | None = None,
        image_size: int = 256,
    ) -> None:
        self.task = get_task(task)
        if level is not None and level not in self.task.levels:
            raise ValueError(
                f"level {level} is out of range for {self.task.name} (levels {self.task.levels})"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r} (use 'rgb_array' or None)")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        self.level = level
        self.render_mode = render_mode
        self.image_size = image_size
        self._fixed_state = self.task.validate(state) if state is not None else None
        if (
            self._fixed_state is not None
            and level is not None
            and self.task.level_of(self._fixed_state) != level
        ):
            raise ValueError(f"the given {self.task.name} state is not of level {level}")
        self.observation_space = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.task.actions))
        self._state: dict[str, Any] | None = None
        self._sim: Hashable = None
        self._done = False
        self._obs: np.ndarray | None = None

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on ``options["state"]``, the constructor's state, or a new instance
        of the level drawn from the seeded generator (a random supported level if none given)."""
        super().reset(seed=seed)
        given = (options or {}).get("state")
        if isinstance(given, str):
            state = self.task.load_state(given)
        elif given is not None:
            state = self.task.validate(given)
        elif self._fixed_state is not None:
            state = self._fixed_state
        else:
            levels = self.task.levels
            level = (
                self.level if self.level is not None else levels[int(self.np_random.integers(len(levels)))]
            )
            # The task generators take a stdlib Random; seed it from the env's numpy generator.
            rng = random.Random(int(self.np_random.integers(2**63)))
            state = self.task.generate(level, rng)
        plan = self.task.solve(state)
        if plan is None:  # validate/generate promise solvable states; fail loudly if not
            raise ValueError(f"{self.task.name} state is unsolvable")
        self._state = state
        self._state_json = self.task.dump_state(state)
        self._optimal = len(plan)
        self._sim = self.task.initial(state)
        self._done = False
        self._steps = 0
        self._obs = self._observe()
        return self._obs.copy(), self._info(success=False)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended; call reset() to start a new one")
        index = int(action)
        if not 0 <= index < len(self.task.actions):
            raise ValueError(f"action {action!r} is outside Discrete({len(self.task.actions)})")
        t = self.task.step(self._state, self._sim, self.task.actions[index])
        self._steps += 1
        if t.invalid is not None:
            self._done = True
            info = self._info(success=False)
            info["invalid"] = t.invalid
            return self._obs.copy(), 0.0, True, False, info  # type: ignore[union-attr]
        self._sim = t.sim
        self._done = t.success
        self._obs = self._observe()
        return self._obs.copy(), 1.0 if t.success else 0.0, t.success, False, self._info(success=t.success)

    def render(self) -> np.ndarray | None:
        """The current observation as an RGB array when ``render_mode == "rgb_array"``."""
        if self.render_mode != "rgb_array" or self._obs is None:
            return None
        return self._obs.copy()

    # -- helpers ----------------------------------------------------------------------------
    def _info(self, success: bool) -> dict[str, Any]:
        assert self._state is not None
        info: dict[str, Any] = {
            "state": self._state_json,
            "position": tuple(self.task.position(self._sim)),
            "optimal_length": self._optimal,
            "steps": self._steps,
            "success": success,
        }
        info.update(self.task.env_info(self._sim, success))
        return info

    def _observe(self) -> np.ndarray:
        """Render the current situation with the task's ``state_at`` hook when it has one."""
        assert self._state is not None
        hook = getattr(self.task, "state_at", None)
        if callable(hook):
            image = self.task.render(hook(self._state, self._sim), self.image_size)
        else:
            image = self._overlay_fallback()
        return np.array(image.convert("RGB"), dtype=np.uint8)

    def _overlay_fallback(self) -> Image.Image:
        """Initial image plus a magenta frame on the agent's cell once it has left the start."""
        assert self._state is not None
        image = self.task.render(self._state, self.image_size)
        here = self.task.position(self._sim)
        if here != self.task.position(self.task.initial(self._state)):
            cell = self.image_size / self.task.level_of(self._state)
            r, c = here
            inset = max(1, round(0.12 * cell))
            box = (
                round(c * cell) + inset,
                round(r * cell) + inset,
                round((c + 1) * cell) - inset,
                round((r + 1) * cell) - inset,
            )
            ImageDraw.Draw(image).rectangle(box, outline=_MARKER, width=max(1, round(0.06 * cell)))
        return image


register_envs()
