"""Validation during training: greedy answers on held-out examples, scored with the project's scorers
(the same ones the evaluation and the stage-2 reward use)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mgsd.models.backbone import Backbone
from mgsd.scoring.aggregate import aggregate
from mgsd.scoring.perception import score_perception
from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task
from mgsd.train.batches import encode_student
from mgsd.train.examples import Example

VAL_OBJECTIVE = {"opsd": "plan", "pretrain": "symbolic"}  # what a stage is validated on, if not itself


def validate(
    bb: Backbone, val: Sequence[Example], objective: str, batch_size: int, max_new_tokens: int
) -> tuple[float, dict[str, float]]:
    """``(value, logs)``: macro success (planning) or perception accuracy (``objective`` perception),
    ``value`` being the number a better checkpoint raises. Leaves the model in train mode."""
    scores = []
    for i in range(0, len(val), batch_size):
        exs = val[i : i + batch_size]
        gen = bb.generate(encode_student(bb, exs), max_new_tokens=max_new_tokens, greedy=True)
        for e, text in zip(exs, gen.texts, strict=True):
            task = get_task(e.task)
            state = task.load_state(e.state)
            if objective == "perception":
                scores.append(score_perception(task.perception(state), text)["accuracy"])
            else:
                scores.append(
                    score_response(
                        task, state, text, sample_id=e.id, optimal_length=e.optimal_length
                    ).to_dict()
                )
    bb.model.train()
    if objective == "perception":
        value = float(np.mean(scores))
        return value, {"val_perception_accuracy": value}
    m = aggregate(scores, n_boot=1)
    value = m["macro"]["success"]
    return value, {"val_success": value, "val_parse_rate": 1 - m["parse_failure"]}
