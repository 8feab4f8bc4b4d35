"""From dataset rows to training examples: what each objective shows the model and what it targets."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mgsd.data.io import decode_image
from mgsd.data.scenes import QUESTION_KINDS, SCENE_TASK, scene_prompt, scene_question, scene_target
from mgsd.prompts import (
    perception_prompt,
    perception_target,
    reference_response,
    student_prompt,
    teacher_context,
    teacher_system,
    text_student_prompt,
)
from mgsd.tasks import get_task


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    level: int
    state: str  # canonical JSON
    prompt: str  # the student's user text
    image: bytes | None  # PNG; None for a text-only student
    target: str | None  # supervised target (SFT objectives)
    system: str | None = None  # a system turn before ``prompt`` (text-only examples)
    teacher_system: str | None = None  # privileged teacher turn (OPSD)
    teacher_prompt: str | None = None
    optimal_length: int = 0
    open_end: bool = False  # the target is the start of an answer: no end-of-turn token after it

    def pil_image(self) -> Image.Image | None:
        return None if self.image is None else decode_image(self.image)


def build_examples(
    rows: Sequence[dict[str, Any]],
    objective: str,
    *,
    privileged: str = "state+plan",
    teacher_prompts: bool = True,
    replay_symbolic: float = 0.0,
    scene_questions: float = 0.0,
    question_kinds: Sequence[str] = QUESTION_KINDS,
    facts_under_plan_prompt: float = 0.0,
) -> list[Example]:
    """Examples for ``objective``: ``perception`` (image -> facts block), ``plan`` (image ->
    reasoned plan), ``symbolic`` (text state -> reasoned plan), ``opsd`` (image prompt + privileged
    teacher text; the target is kept for logging only), ``pretrain`` (the tiny base's mixture: scene
    rows -> scene description, task rows -> ``symbolic``). ``teacher_prompts=False`` keeps every
    ``symbolic`` example in the plain text-student form (for validation). ``replay_symbolic``: the
    share of ``perception`` / ``plan`` rows posed as text-student ``symbolic`` examples instead;
    ``scene_questions``: the share of scene rows posed as one short question instead of the whole
    description, of one of ``question_kinds``; ``facts_under_plan_prompt``: the share of the
    ``perception`` rows posed as the plan prompt with the facts block a reasoned answer opens with as
    the target, open-ended (no end-of-turn: the answer goes on to plan, untrained)."""
    out = []
    for r in rows:
        if r["task"] == SCENE_TASK:
            if objective != "pretrain":
                raise ValueError(f"scene rows ({r['id']}) only serve the pretrain objective")
            out.append(_scene_example(r, scene_questions, question_kinds))
        else:
            out.append(
                _task_example(
                    r, objective, privileged, teacher_prompts, replay_symbolic, facts_under_plan_prompt
                )
            )
    return out


def _scene_example(r: dict[str, Any], scene_questions: float, question_kinds: Sequence[str]) -> Example:
    """A pretraining scene: its whole description, or (a ``scene_questions`` share) one question."""
    scene = json.loads(r["state"])
    if scene_questions > 0 and _share(r["id"]) < scene_questions:
        _, prompt, target = scene_question(scene, zlib.crc32(b"ask:" + r["id"].encode()), question_kinds)
    else:
        prompt, target = scene_prompt(scene), scene_target(scene)
    return Example(
        id=r["id"],
        task=SCENE_TASK,
        level=int(r["level"]),
        state=r["state"],
        prompt=prompt,
        image=r["image"],
        target=target,
    )


def _task_example(
    r: dict[str, Any],
    objective: str,
    privileged: str,
    teacher_prompts: bool,
    replay_symbolic: float,
    facts_under_plan_prompt: float,
) -> Example:
    """A task row as ``objective`` poses it (see ``build_examples``)."""
    task = get_task(r["task"])
    state = task.load_state(r["state"])
    actions = task.split_plan(r["optimal_plan"])
    common = {
        "id": r["id"],
        "task": task.name,
        "level": int(r["level"]),
        "state": r["state"],
        "optimal_length": int(r["optimal_length"]),
    }
    if replay_symbolic > 0 and objective in ("perception", "plan") and _share(r["id"]) < replay_symbolic:
        return _symbolic(common, task, state, actions, style=0)
    if objective == "perception" and _share(r["id"], "facts:") < facts_under_plan_prompt:
        return Example(
            **common, prompt=student_prompt(task), image=r["image"], target=task.facts(state), open_end=True
        )
    if objective == "perception":
        return _perception(common, task, state, r["image"])
    if objective == "plan":
        return Example(
            **common,
            prompt=student_prompt(task),
            image=r["image"],
            target=reference_response(task, state, actions),
        )
    if objective in ("symbolic", "pretrain"):
        # Half of the rows are posed as the stage-2 teacher will see them (system turn, symbolic
        # state, with or without the plan hint): a pretrained instruction model handles that
        # prompt out of the box, a base built from scratch has to have seen it.
        style = zlib.crc32(r["id"].encode()) % 4 if teacher_prompts else 0
        return _symbolic(common, task, state, actions, style)
    if objective == "opsd":
        return Example(
            **common,
            prompt=student_prompt(task),
            image=r["image"],
            target=reference_response(task, state, actions),
            teacher_system=teacher_system(task),
            teacher_prompt=teacher_context(task, state, actions if privileged == "state+plan" else None),
        )
    raise ValueError(f"unknown objective {objective!r}")


def perception_twin(e: Example) -> Example:
    """The perception example (image -> facts block) of a stage-2 example's image and state."""
    task = get_task(e.task)
    common = {
        "id": e.id,
        "task": e.task,
        "level": e.level,
        "state": e.state,
        "optimal_length": e.optimal_length,
    }
    return _perception(common, task, task.load_state(e.state), e.image)


def _perception(common: dict[str, Any], task: Any, state: Any, image: bytes | None) -> Example:
    """Image + the perception questions -> the facts block with the legal moves."""
    return Example(
        **common, prompt=perception_prompt(task, state), image=image, target=perception_target(task, state)
    )


def _share(row_id: str, salt: str = "replay:") -> float:
    """A fixed pseudo-random number in [0, 1) per row id and salt (independent of the ``symbolic``
    style hash; each option its own salt, so their shares are independent)."""
    return zlib.crc32(salt.encode() + row_id.encode()) / 2**32


def _symbolic(common: dict[str, Any], task: Any, state: Any, actions: Any, style: int) -> Example:
    """Text state -> reasoned plan; style 0-1 the text student's prompt, 2 the teacher's with the plan
    hint, 3 the teacher's without."""
    if style < 2:
        prompt, system = text_student_prompt(task, state), None
    else:
        prompt, system = teacher_context(task, state, actions if style == 2 else None), teacher_system(task)
    return Example(
        **common,
        prompt=prompt,
        system=system,
        image=None,
        target=reference_response(task, state, actions),
    )
