"""The Task protocol every planning task implements, and the generic machinery built on it.

A task is a small deterministic MDP over a symbolic *state* (the instance: a map, a maze, a room).
The task supplies ONE transition function, ``step``; the optimal solver, the scorer, the progress
metric, the training reward and the gymnasium environment are all derived from it here, so they
can never disagree with each other (the reference release had three simulators that did).

Coordinates are 0-based ``(row, col)`` from the top-left everywhere; U = row-1, D = row+1,
L = col-1, R = col+1.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from PIL import Image

MOVES: dict[str, tuple[int, int]] = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
# Used to name moves in words (perception answers, open-direction tables).
MOVE_WORDS: dict[str, str] = {"U": "up", "R": "right", "D": "down", "L": "left"}
Cell = tuple[int, int]


@lru_cache(maxsize=64)
def grid_moves(n: int, order: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Per flat cell id ``r * n + c`` of an ``n`` x ``n`` grid: its in-bounds moves as (action, target
    cell id), in ``order`` (the tasks' specialised searches)."""
    out = []
    for r in range(n):
        for c in range(n):
            steps = []
            for a in order:
                nr, nc = r + MOVES[a][0], c + MOVES[a][1]
                if 0 <= nr < n and 0 <= nc < n:
                    steps.append((a, nr * n + nc))
            out.append(tuple(steps))
    return tuple(out)


def plan_to(parent: Mapping[Any, tuple[Any, str] | None], state: Any, last: str) -> list[str]:
    """A breadth-first search's plan: the actions from the root to ``state`` (``parent`` maps each
    reached state to its predecessor and the action taken, the root to None), then ``last``."""
    plan = [last]
    step = parent[state]
    while step is not None:
        state, action = step
        plan.append(action)
        step = parent[state]
    return plan[::-1]


@dataclass(frozen=True)
class Transition:
    """The result of one action from one simulator state."""

    sim: Hashable  # simulator state after the action (unchanged when the action is invalid)
    success: bool = False  # the goal was reached: the episode ends in success
    invalid: str | None = None  # reason the action is illegal: the episode ends in failure


@dataclass(frozen=True)
class Rollout:
    """Outcome of executing a whole plan with the task's one simulator.

    Prefix semantics: the episode ends at the first success or the first illegal action; later
    actions are not executed but are counted in ``trailing`` (an "optimal" plan has none).
    """

    success: bool
    steps: int  # actions executed, including the one that ended the episode
    reason: str | None  # None on success; an invalid reason, "incomplete" or "parse_failure"
    trailing: int  # actions after the episode ended
    visited: tuple[Hashable, ...] = field(default=())  # simulator states, the initial one first


@dataclass(frozen=True)
class PerceptionItem:
    """One perception question with its target answer.

    ``kind`` tells the scorer how to compare answers: ``size`` (NxN), ``position`` ((r,c)),
    ``cells`` (a set of (r,c)), ``open_dirs`` (a maze's box-drawing grid, one line per row), ``actions``
    (a set of the words up/right/down/left).
    """

    key: str
    kind: str
    question: str
    answer: str


@dataclass(frozen=True)
class PromptWording:
    """What the prompts say about one task (``mgsd.prompts`` puts it into every role's frame)."""

    legend: str  # how the image draws the state: "The yellow dot is the player, ..."
    goal: str  # "Reach the goal without crossing a wall."
    rules: str  # the moves and what makes one illegal
    answer_format: str  # "letters, e.g. <answer>DDRU</answer>"
    restate: str  # what a reasoned answer restates besides size and positions: "holes"


@dataclass(frozen=True)
class VocabularyHints:
    """Pieces of the task's texts a tokenizer should keep whole (``mgsd.models.tokenizer`` collects
    them from every registered task, in registry order). Action names longer than one letter
    (``PICK``) are taken from ``Task.actions`` and need no hint."""

    letters: tuple[str, ...] = ()  # one-letter cell symbols of the symbolic text ("S", "H")
    words: tuple[str, ...] = ()  # the task's own nouns, singular and plural ("wall", "walls")
    glyphs: str = ""  # non-ASCII characters drawn in text grids, one token each


class Task(ABC):
    """One planning task: generator, simulator, renderer and symbolic views of its states.

    States are plain JSON-able dicts in the canonical schema of each task (see the task module);
    ``dump_state`` gives the canonical JSON string used for storage and deduplication.
    """

    name: ClassVar[str]  # "frozenlake", "maze", "minibehaviour"
    title: ClassVar[str]  # "FrozenLake", ...
    levels: ClassVar[tuple[int, ...]]  # the supported levels (grid side lengths)
    actions: ClassVar[tuple[str, ...]]  # the action vocabulary, in BFS tie-break order
    plan_separator: ClassVar[str]  # "" -> "UUR"; "," -> "U,PICK,R,DROP"
    wording: ClassVar[PromptWording]  # what the prompts say about the task
    vocabulary: ClassVar[VocabularyHints] = VocabularyHints()
    # True when ``generate`` returns canonical, valid states, so the generator stores them without
    # re-validating (``dump_generated``); a task that sets it is checked by tests/test_task_contract.py.
    generates_canonical: ClassVar[bool] = False

    def env_info(self, sim: Hashable, success: bool) -> dict[str, Any]:
        """Task-specific entries of a gymnasium step's ``info`` (``mgsd.envs``); none by default."""
        return {}

    # -- instances -------------------------------------------------------------------------
    @abstractmethod
    def generate(self, level: int, rng: random.Random) -> dict[str, Any]:
        """Draw one solvable state of ``level`` from ``rng`` (the reference distribution)."""

    @abstractmethod
    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        """Return the canonical form of ``state`` or raise ValueError naming the problem."""

    @abstractmethod
    def level_of(self, state: dict[str, Any]) -> int:
        """The level (grid side length) of a state."""

    # -- the one simulator ------------------------------------------------------------------
    @abstractmethod
    def initial(self, state: dict[str, Any]) -> Hashable:
        """The simulator state at the start of an episode."""

    @abstractmethod
    def step(self, state: dict[str, Any], sim: Hashable, action: str) -> Transition:
        """Apply one action. Unknown actions are invalid (reason ``unknown_action:<a>``)."""

    @abstractmethod
    def position(self, sim: Hashable) -> Cell:
        """The agent's cell in a simulator state (for drawing paths)."""

    # -- views ------------------------------------------------------------------------------
    @abstractmethod
    def render(self, state: dict[str, Any], size: int = 256) -> Image.Image:
        """An RGB image of the state, ``size`` x ``size`` pixels."""

    def render_png(self, state: dict[str, Any], size: int = 256) -> bytes:
        """PNG bytes of ``render(state, size)`` (the same pixels; tasks override it with a faster path,
        e.g. a palette image drawn without PIL)."""
        import numpy as np  # here: the light sub-commands import tasks but never render

        from mgsd import png

        return png.encode_rgb(np.asarray(self.render(state, size).convert("RGB")))

    @abstractmethod
    def symbolic_text(self, state: dict[str, Any]) -> str:
        """The fully observable text description a text-only student or the teacher reads."""

    @abstractmethod
    def perception(self, state: dict[str, Any]) -> list[PerceptionItem]:
        """The perception questions of this state with their target answers, in order."""

    def fact_items(self, state: dict[str, Any], *, with_moves: bool = False) -> list[PerceptionItem]:
        """The perception items a facts block states: all but the legal moves, unless asked."""
        return [i for i in self.perception(state) if with_moves or i.kind != "actions"]

    def facts(self, state: dict[str, Any], *, with_moves: bool = False) -> str:
        """The state as ``key: answer`` lines (the perception answers; the legal moves only if asked).

        The symbolic text contains this block verbatim and a reasoned answer restates it, so
        restating the state is a copy for a reader of the text and a perception for a reader of
        the image; the perception target is the same block plus the legal moves.
        """
        return "\n".join(
            f"{item.key}:{chr(10) if chr(10) in item.answer else ' '}{item.answer}"
            for item in self.fact_items(state, with_moves=with_moves)
        )

    # -- generic machinery built on ``step`` ------------------------------------------------
    def dump_state(self, state: dict[str, Any]) -> str:
        """Canonical JSON of a state: the storage format and the deduplication key."""
        return json.dumps(self.validate(state), sort_keys=True, separators=(",", ":"))

    def dump_generated(self, state: dict[str, Any]) -> str:
        """``dump_state`` of a state ``generate`` just drew: the same string, without validating
        again when the task promises canonical output (validation cost as much as a render)."""
        if self.generates_canonical:
            return json.dumps(state, sort_keys=True, separators=(",", ":"))
        return self.dump_state(state)

    def load_state(self, text: str) -> dict[str, Any]:
        try:
            raw = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.name} state is not valid JSON: {exc}") from None
        return self.validate(raw)

    def format_plan(self, plan: Sequence[str]) -> str:
        return self.plan_separator.join(plan)

    def split_plan(self, text: str) -> list[str]:
        """The actions of a stored plan string (the inverse of ``format_plan``; not a parser of
        model output, see ``mgsd.actions.parse_plan``)."""
        return text.split(self.plan_separator) if self.plan_separator else list(text)

    def rollout(self, state: dict[str, Any], plan: Sequence[str]) -> Rollout:
        """Execute ``plan`` from the initial state with the task's simulator."""
        sim = self.initial(state)
        visited = [sim]
        if not plan:
            return Rollout(False, 0, "parse_failure", 0, tuple(visited))
        for i, action in enumerate(plan):
            t = self.step(state, sim, action)
            if t.invalid is not None:
                return Rollout(False, i + 1, t.invalid, len(plan) - i - 1, tuple(visited))
            sim = t.sim
            visited.append(sim)
            if t.success:
                return Rollout(True, i + 1, None, len(plan) - i - 1, tuple(visited))
        return Rollout(False, len(plan), "incomplete", 0, tuple(visited))

    def _graph(self, state: dict[str, Any]) -> tuple[Hashable, dict[Hashable, list[tuple[str, Transition]]]]:
        """All simulator states reachable by valid actions, with their valid transitions."""
        start = self.initial(state)
        edges: dict[Hashable, list[tuple[str, Transition]]] = {}
        queue = deque([start])
        edges[start] = []
        while queue:
            s = queue.popleft()
            out = edges[s]
            for a in self.actions:
                t = self.step(state, s, a)
                if t.invalid is not None:
                    continue
                out.append((a, t))
                if not t.success and t.sim not in edges:
                    edges[t.sim] = []
                    queue.append(t.sim)
        return start, edges

    def solve(self, state: dict[str, Any]) -> list[str] | None:
        """A shortest plan (ties broken by ``actions`` order), or None when unsolvable."""
        start = self.initial(state)
        parent: dict[Hashable, tuple[Hashable, str] | None] = {start: None}
        queue = deque([start])
        while queue:
            s = queue.popleft()
            for a in self.actions:
                t = self.step(state, s, a)
                if t.invalid is not None:
                    continue
                if t.success:
                    return plan_to(parent, s, a)
                if t.sim not in parent:
                    parent[t.sim] = (s, a)
                    queue.append(t.sim)
        return None

    def distances_to_go(self, state: dict[str, Any]) -> dict[Hashable, int]:
        """Optimal number of actions left to succeed from every reachable simulator state.

        States from which success is impossible are absent.
        """
        _, edges = self._graph(state)
        reverse: dict[Hashable, list[Hashable]] = {s: [] for s in edges}
        dist: dict[Hashable, int] = {}
        frontier: deque[Hashable] = deque()
        for s, out in edges.items():
            for _, t in out:
                if t.success:
                    if s not in dist:
                        dist[s] = 1
                        frontier.append(s)
                else:
                    reverse[t.sim].append(s)
        while frontier:
            s = frontier.popleft()
            for p in reverse[s]:
                if p not in dist:
                    dist[p] = dist[s] + 1
                    frontier.append(p)
        return dist

    def progress(
        self, state: dict[str, Any], plan: Sequence[str], optimal_length: int | None = None
    ) -> float:
        """Progress rate: the longest valid prefix of ``plan`` whose every action strictly lowers
        the optimal distance-to-go, divided by the optimal plan length (1.0 for an optimal plan).
        """
        dist = self.distances_to_go(state)
        sim = self.initial(state)
        total = optimal_length if optimal_length is not None else dist.get(sim)
        if not total:
            return 0.0
        good = 0
        for action in plan:
            t = self.step(state, sim, action)
            if t.invalid is not None:
                break
            here = dist.get(sim)
            if t.success:
                good += 1
                break
            there = dist.get(t.sim)
            if here is None or there is None or there >= here:
                break
            good += 1
            sim = t.sim
        return min(1.0, good / total)
