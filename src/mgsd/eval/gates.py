"""Does the base have what stage 2 needs? The teacher-competence measurements and the base's gates.

MGSD distils a teacher that reads the symbolic state (and the plan) into a student that reads the
image. That only works when the teacher knows the answer, so every run reports, for the base:
- greedy success from the teacher's own context, with the plan (can it copy a given plan?) and
  without (can it plan from the state?);
- the reference answer's mean log-prob per token under those two contexts (does the plan inform it?).
The shipped tiny base must pass gates on held-out states: copy >= 90% per task, text macro >= 40%,
image macro <= a quarter of the text macro (a real modality gap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mgsd.backends.base import GenerationConfig
from mgsd.files import write_json
from mgsd.prompts import reference_response, teacher_context, teacher_system
from mgsd.tasks import get_task

GATES = {"copy_per_task": 0.90, "text_macro": 0.40, "image_over_text": 0.25}


def reference_logprobs(
    backbone: Any, samples: Sequence[Mapping[str, Any]], *, batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """Per task: the reference answer's mean log-prob per token under the teacher's context with and
    without the plan (``with_plan``, ``without_plan``) and their difference (``plan_gain``)."""
    import torch

    sums: dict[str, dict[str, float]] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        tasks = [get_task(s["task"]) for s in chunk]
        states = [t.load_state(s["state"]) for t, s in zip(tasks, chunk, strict=True)]
        plans = [t.split_plan(s["optimal_plan"]) for t, s in zip(tasks, chunk, strict=True)]
        targets = backbone.encode_responses(
            [reference_response(t, st, p) for t, st, p in zip(tasks, states, plans, strict=True)]
        )
        systems = [teacher_system(t) for t in tasks]
        for key, with_plan in (("with_plan", True), ("without_plan", False)):
            prompts = [
                teacher_context(t, st, p if with_plan else None)
                for t, st, p in zip(tasks, states, plans, strict=True)
            ]
            with torch.no_grad():
                out = backbone.token_logprobs(backbone.encode_teacher(systems, prompts), targets)
            lp = (out.logprobs * out.mask).sum(1).tolist()
            n = out.mask.sum(1).tolist()
            for s, v, k in zip(chunk, lp, n, strict=True):
                acc = sums.setdefault(s["task"], {})
                acc[key] = acc.get(key, 0.0) + v
                acc[f"{key}_tokens"] = acc.get(f"{key}_tokens", 0.0) + k
    result = {}
    for task, acc in sums.items():
        w, wo = acc["with_plan"] / acc["with_plan_tokens"], acc["without_plan"] / acc["without_plan_tokens"]
        result[task] = {"with_plan": w, "without_plan": wo, "plan_gain": w - wo}
    return result


def teacher_competence(
    backend: Any,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    gen: GenerationConfig,
    batch_size: int = 32,
    progress: bool = True,
    model: str = "base",
) -> dict[str, Any]:
    """The base's success from the teacher's context with / without the plan, and the reference
    log-probs (local backends only); writes OUT/teacher.json and each modality's results."""
    from mgsd.eval.model import evaluate_model
    from mgsd.eval.queries import load_samples

    out = Path(out)
    samples = load_samples(data)
    result: dict[str, Any] = {"n": len(samples)}
    for modality in ("teacher+plan", "teacher"):
        m = evaluate_model(
            backend,
            data,
            out / modality,
            model=model,
            modality=modality,
            gen=gen,
            batch_size=batch_size,
            progress=progress,
            samples=samples,
        )
        result[modality] = _summary(m)
    bb = getattr(backend, "bb", None)
    result["reference_logprob"] = reference_logprobs(bb, samples) if bb is not None else None
    write_json(result, out / "teacher.json")
    return result


def _summary(m: Mapping[str, Any]) -> dict[str, Any]:
    macro = m["macro"]
    return {
        "n": m["n"],
        "macro": {"success": macro["success"], "ci": macro["ci"]["success"]},
        "by_task": {
            t: {"n": v["n"], "success": v["success"], "ci": v["ci"]["success"]}
            for t, v in m["by_task"].items()
        },
    }


def gate_data(base: Path, out: Path, per_task: int, seed: int, progress: bool) -> Path:
    """Held-out states for the gates (level-balanced per task, rendered), none of them seen by the base."""
    from mgsd.data.generate import generate_dataset, read_state_hashes
    from mgsd.tasks import TASK_NAMES

    if (out / "COMPLETE").exists():
        return out
    seen = read_state_hashes(base)
    for name in TASK_NAMES:
        task = get_task(name)
        generate_dataset(
            task,
            list(task.levels),
            -(-per_task // len(task.levels)),
            split="gate",
            seed=seed,
            out=out,
            exclude_hashes=seen,
            progress=progress,
        )
    (out / "COMPLETE").write_text("ok\n")
    return out


def scene_perception(backbone: Any, n: int = 60, seed: int = 4242, batch_size: int = 16) -> dict[str, Any]:
    """Does the base see? Greedy descriptions of ``n`` held-out synthetic scenes (fresh specs, not the
    pretraining ones): the share of reference lines reproduced exactly, per kind of line, with n."""
    import random

    from mgsd.data.scenes import generate_scene, scene_image, scene_prompt, scene_target

    rng = random.Random(seed)
    scenes = [generate_scene(rng) for _ in range(n)]
    counts: dict[str, list[int]] = {}
    for i in range(0, n, batch_size):
        chunk = scenes[i : i + batch_size]
        ctx = backbone.encode_student([scene_prompt(s) for s in chunk], [scene_image(s) for s in chunk])
        for s, text in zip(chunk, backbone.generate(ctx, greedy=True, max_new_tokens=160).texts, strict=True):
            said = set(text.split("\n"))
            ref = scene_target(s).split("\n")
            glyph_rows = ref[ref.index("open_dirs:") + 1 :] if "open_dirs:" in ref else []
            for line in ref:
                kind = (
                    "walls row"
                    if line in glyph_rows and line not in ("open_dirs:",)
                    else "size"
                    if line.startswith("size:")
                    else "cells"
                    if " cells:" in line
                    else None
                    if line == "open_dirs:"
                    else "object"
                )
                if kind:
                    c = counts.setdefault(kind, [0, 0])
                    c[0] += line in said
                    c[1] += 1
    return {k: {"accuracy": ok / total, "lines": total} for k, (ok, total) in sorted(counts.items())}


def scene_questions(backbone: Any, n: int = 240, seed: int = 4343, batch_size: int = 16) -> dict[str, Any]:
    """Single questions about ``n`` held-out synthetic scenes (where is X, what is in cell C, which
    cells are Y, size), greedy, exact answer: accuracy per kind with n and a Wilson 95% interval, and
    the chance level of ``where`` (one cell of the grid drawn uniformly)."""
    import random

    from mgsd.data.scenes import generate_scene, scene_image, scene_question
    from mgsd.scoring.aggregate import wilson

    rng = random.Random(seed)
    asks = []
    for i in range(n):
        scene = generate_scene(rng)
        asks.append((scene, *scene_question(scene, i)))
    hits: dict[str, list[int]] = {}
    chance: list[float] = []
    for i in range(0, n, batch_size):
        chunk = asks[i : i + batch_size]
        ctx = backbone.encode_student([a[2] for a in chunk], [scene_image(a[0]) for a in chunk])
        for (scene, kind, _, target), text in zip(
            chunk, backbone.generate(ctx, greedy=True, max_new_tokens=48).texts, strict=True
        ):
            hits.setdefault(kind, []).append(int(text.strip() == target))
            if kind == "where":
                chance.append(1 / scene["size"] ** 2)
    out: dict[str, Any] = {
        k: {"accuracy": sum(v) / len(v), "n": len(v), "ci": wilson(sum(v), len(v))}
        for k, v in sorted(hits.items())
    }
    if chance:
        out["where"]["chance"] = sum(chance) / len(chance)
    return out


def evaluate_gates(
    base: str | Path,
    out: str | Path,
    *,
    per_task: int = 120,
    max_new_tokens: int = 160,
    seed: int = 1001,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """The base's gates on held-out states; writes OUT/gates.json and returns it."""
    from mgsd.backends.local import LocalBackend
    from mgsd.eval.attention import object_attention
    from mgsd.eval.model import evaluate_model

    base, out = Path(base), Path(out)
    data = [gate_data(base, out / "data", per_task, seed, progress)]
    backend = LocalBackend.load(str(base), batch_size=batch_size)
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    teacher = teacher_competence(backend, data, out, gen=gen, batch_size=batch_size, progress=progress)
    planned = {
        modality: _summary(
            evaluate_model(
                backend,
                data,
                out / modality,
                model="base",
                modality=modality,
                gen=gen,
                batch_size=batch_size,
                progress=progress,
            )
        )
        for modality in ("text", "image")
    }
    scenes = scene_perception(backend.bb)
    questions = scene_questions(backend.bb)
    attention = object_attention(backend.bb)
    copy = {t: v["success"] for t, v in teacher["teacher+plan"]["by_task"].items()}
    text, image = planned["text"]["macro"]["success"], planned["image"]["macro"]["success"]
    result = {
        "thresholds": GATES,
        "teacher": teacher,
        "text": planned["text"],
        "image": planned["image"],
        "scene_perception": scenes,
        "scene_questions": questions,
        "object_attention": attention,
        "passed": {
            "copy_per_task": all(v >= GATES["copy_per_task"] for v in copy.values()),
            "text_macro": text >= GATES["text_macro"],
            "image_over_text": text > 0 and image <= GATES["image_over_text"] * text,
        },
    }
    write_json(result, out / "gates.json")
    return result


def format_gates(g: Mapping[str, Any]) -> list[str]:
    """Markdown table rows of a gates result (the model card and the README use them)."""

    def cell(block: Mapping[str, Any]) -> str:
        lo, hi = block["ci"]
        return f"{100 * block['success']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    t = g["teacher"]
    names = list(g["text"]["by_task"])  # the tasks the gates measured, in their order
    titles = " | ".join(get_task(n).title for n in names)
    rows = [f"| input | macro success [95% CI] | {titles} |", "|---|---|" + "---|" * len(names)]
    for label, block in (
        ("teacher context, state + plan (copy)", t["teacher+plan"]),
        ("teacher context, state only", t["teacher"]),
        ("text student (symbolic upper bound)", g["text"]),
        ("image student", g["image"]),
    ):
        tasks = " | ".join(cell(block["by_task"][k]) for k in names)
        rows.append(f"| {label} | {cell(block['macro'])} | {tasks} |")
    return rows
