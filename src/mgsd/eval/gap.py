"""Modality-gap attribution: when a model fails to plan from the image, is it perception or reasoning?

Three runs on the same samples (``OUT/image``, ``OUT/text``, ``OUT/perception``, each an ordinary,
resumable ``mgsd eval model`` run): planning from the image, planning from the symbolic text state (no
image), and the image perception questions ("perceived" = every question answered exactly right).
Each sample gets exactly one category:

    solved                    the image plan succeeds: no failure to attribute
    perception                image fails, text succeeds, perception wrong: the model can plan the
                              problem but does not see it correctly
    image_reasoning           image fails, text succeeds, perception right: it sees the grid correctly
                              and plans it from text, yet not from the image (the modality gap proper)
    reasoning                 image fails, text fails, perception right: it cannot plan this problem
                              even from the exact text state
    perception_and_reasoning  image fails, text fails, perception wrong
    request_failed            image fails and one of the three requests failed: the evidence for an
                              attribution is missing (counted, never dropped)

``gap.json`` holds counts, fractions and 95% bootstrap CIs of every category overall, per task and per
(task, level), next to the image success, text success and perception rates of the same samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgsd.backends.base import Backend, GenerationConfig
from mgsd.eval.model import check_generation, evaluate_model
from mgsd.eval.perception import evaluate_perception, score_answer_facts
from mgsd.eval.queries import load_samples
from mgsd.files import read_jsonl, write_json, write_jsonl
from mgsd.scoring.aggregate import stratified_rate

CATEGORIES: tuple[str, ...] = (
    "solved",
    "perception",
    "image_reasoning",
    "reasoning",
    "perception_and_reasoning",
    "request_failed",
)
RUNS = ("image", "text", "perception")
ANSWER_FACTS = "answer_facts.json"  # the facts block of the image plan answers, scored (no request)


def attribute(image_success: bool, text_success: bool, perceived: bool, request_failed: bool = False) -> str:
    """The category of one sample (see the module docstring)."""
    if image_success:
        return "solved"
    if request_failed:
        return "request_failed"
    if text_success:
        return "image_reasoning" if perceived else "perception"
    return "reasoning" if perceived else "perception_and_reasoning"


def attribute_rows(
    image: Sequence[Mapping[str, Any]],
    text: Sequence[Mapping[str, Any]],
    perception: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per-sample attribution from the samples of the three runs (matched by id, image order kept)."""
    by_text = {r["id"]: r for r in text}
    by_perc = {r["id"]: r for r in perception}
    ids = [r["id"] for r in image]
    if set(ids) != set(by_text) or set(ids) != set(by_perc):
        raise ValueError("the image, text and perception runs do not cover the same samples")
    out = []
    for r in image:
        t, p = by_text[r["id"]], by_perc[r["id"]]
        failed = any(x.get("error") is not None for x in (r, t, p))
        row = {
            "id": r["id"],
            "task": r["task"],
            "level": int(r["level"]),
            "image_success": bool(r["success"]),
            "text_success": bool(t["success"]),
            "perceived": bool(p["all_correct"]),
            "request_failed": failed,
        }
        row["category"] = attribute(row["image_success"], row["text_success"], row["perceived"], failed)
        out.append(row)
    return out


def _scope(rows: Sequence[Mapping[str, Any]], n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    rate = stratified_rate(rows, n_boot, rng)
    block: dict[str, Any] = {"n": len(rows), "counts": {}, "fractions": {}, "ci": {}}
    for cat in CATEGORIES:
        block["counts"][cat] = sum(r["category"] == cat for r in rows)
        block["fractions"][cat], block["ci"][cat] = rate(lambda r, cat=cat: r["category"] == cat)
    for key in ("image_success", "text_success", "perceived"):
        block[key], block[f"{key}_ci"] = rate(lambda r, key=key: r[key])
    return block


def gap_table(rows: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Category counts, fractions and CIs overall, per task and per (task, level)."""
    if not rows:
        raise ValueError("no samples to attribute")
    rng = np.random.default_rng(seed)
    table: dict[str, Any] = {"categories": list(CATEGORIES), "total": _scope(rows, n_boot, rng)}
    table["by_task"] = {
        t: _scope([r for r in rows if r["task"] == t], n_boot, rng) for t in sorted({r["task"] for r in rows})
    }
    table["by_task_level"] = {}
    for t, lv in sorted({(r["task"], r["level"]) for r in rows}):
        block = _scope([r for r in rows if r["task"] == t and r["level"] == lv], n_boot, rng)
        table["by_task_level"][f"{t}/{lv}"] = {"task": t, "level": lv, **block}
    table["bootstrap"] = {"replicates": n_boot, "seed": seed, "level": 0.95}
    return table


# What each attribution class and run of gap.json means (written into it).
DEFINITIONS = {
    "solved": "image plan succeeds",
    "perception": "image fails, text succeeds, perception wrong",
    "image_reasoning": "image fails, text succeeds, perception right (the modality gap proper)",
    "reasoning": "image fails, text fails, perception right",
    "perception_and_reasoning": "image fails, text fails, perception wrong",
    "request_failed": "image fails and a request of one of the three runs failed",
    "perceived": "every perception question answered exactly right",
    "answer_facts": "the facts block of the image plan answer scored as perception answers",
}


def evaluate_gap(
    backend: Backend,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    gen: GenerationConfig | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the image, text and perception evaluations under OUT and write OUT/gap.json."""
    out = Path(out)
    check_generation(gen)  # a bad setting is reported before the dataset is read, as by evaluate_model
    samples = load_samples(data, limit=limit)  # once, images included, for all three runs
    common = {
        "model": model,
        "gen": gen,
        "batch_size": batch_size,
        "limit": limit,
        "progress": progress,
        "samples": samples,
    }
    image = evaluate_model(backend, data, out / "image", modality="image", **common)
    text = evaluate_model(backend, data, out / "text", modality="text", **common)
    perception = evaluate_perception(backend, data, out / "perception", **common)
    runs = {run: read_jsonl(out / run / "samples.jsonl") for run in RUNS}
    rows = attribute_rows(*runs.values())
    facts = score_answer_facts(samples, runs["image"])
    write_json(facts, out / ANSWER_FACTS)
    gap = gap_table(rows)
    gap.update(
        {
            "definitions": DEFINITIONS,
            "model": image.get("model"),
            "data": image.get("data"),
            "generation": image.get("generation"),
            "runs": {
                "image": {"macro_success": image["macro"]["success"], "n": image["n"]},
                "text": {"macro_success": text["macro"]["success"], "n": text["n"]},
                "perception": {"all_correct": perception["all_correct"], "n": perception["n"]},
                "answer_facts": {
                    "all_correct": facts["all_correct"],
                    "question_accuracy": facts["question_accuracy"],
                    "n": facts["n"],
                },
            },
            "request_failures": {
                "image": image["request_failures"],
                "text": text["request_failures"],
                "perception": perception["request_failures"],
            },
        }
    )
    write_jsonl(rows, out / "gap_samples.jsonl")
    write_json(gap, out / "gap.json")
    return gap


_SHORT = {
    "solved": "solved",
    "perception": "percep",
    "image_reasoning": "img-reas",
    "reasoning": "reason",
    "perception_and_reasoning": "both",
    "request_failed": "req-fail",
}


def format_gap(gap: Mapping[str, Any]) -> str:
    """The attribution table as text: percent of samples per category, per (task, level) and task."""
    head = f"{'scope':<22}{'n':>5}" + "".join(f"{_SHORT[c]:>10}" for c in CATEGORIES)
    head += f"{'img ok':>9}{'text ok':>9}{'perc ok':>9}"
    lines = [head]
    scopes = [*gap["by_task_level"].items(), *gap["by_task"].items(), ("total", gap["total"])]
    for name, b in scopes:
        line = f"{name:<22}{b['n']:>5}" + "".join(f"{100 * b['fractions'][c]:>10.1f}" for c in CATEGORIES)
        line += "".join(f"{100 * b[k]:>9.1f}" for k in ("image_success", "text_success", "perceived"))
        lines.append(line)
    lines.append(
        "categories: percep = perception only, img-reas = image reasoning (the modality gap proper: plans "
        "from text and perceives the image, still fails from the image), reason = reasoning, both = "
        "perception and reasoning"
    )
    return "\n".join(lines)
