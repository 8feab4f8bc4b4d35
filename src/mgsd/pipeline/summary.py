"""``summary.json``: every model's rows (image, text, the teacher's contexts, external sets), the
headline comparison (MGSD against the cold start, paired) and the share of the modality gap closed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mgsd.config import to_dict
from mgsd.files import read_jsonl, write_json
from mgsd.pipeline.config import PipelineConfig
from mgsd.pipeline.layout import RunLayout

NOTES = (
    "The base is the shipped tiny Qwen3-VL pretrained offline by `mgsd pretrain` (generic scenes and "
    "planning from symbolic text; never a task render with its state): its model card has its gates.",
    "Rows 'teacher+plan' and 'teacher' are the base answering from the stage-2 teacher's own "
    "context (symbolic state with / without the reference plan): the teacher's competence.",
    "Macro = mean over tasks of level-balanced task scores; CIs are 95% bootstrap; the MGSD vs "
    "cold-start difference is a paired bootstrap over the same test samples.",
    "The gap closed is (MGSD image - base image) / (base text - base image), null when the base "
    "plans no better from text than from the image.",
    "plan_sft gets as many samples as stages 1 + 2 together (sample-matched, not compute-matched); "
    "opsd_no_coldstart and mgsd_no_plan use MGSD's stage-2 settings.",
)


def _row(model: str, modality: str, m: dict[str, Any], dataset: str = "test") -> dict[str, Any]:
    macro = m["macro"]
    return {
        "model": model,
        "modality": modality,
        "dataset": dataset,
        "n": m["n"],
        "macro": {k: macro[k] for k in ("success", "optimal", "progress")} | {"ci": macro["ci"]},
        "by_task": {
            t: {k: v[k] for k in ("n", "success", "optimal", "progress", "ci")}
            for t, v in m["by_task"].items()
        },
    }


def _read(path: Any) -> dict[str, Any]:
    return json.loads(path.read_text())


def model_rows(layout: RunLayout, name: str, ext: list[str]) -> list[dict[str, Any]]:
    """The rows of one model: image on the test split first (with its perception scores, when
    measured), then the other modalities and the external sets that were evaluated."""
    image_row = _row(name, "image", _read(layout.metrics(name)))
    rows = [image_row]
    for modality in ("text", "teacher+plan", "teacher"):
        f = layout.metrics(name, modality)
        if f.exists():
            rows.append(_row(name, modality, _read(f)))
    for e in ext:
        f = layout.metrics(name, f"external-{e}")
        if f.exists():
            rows.append(_row(name, "image", _read(f), dataset=e))
    p = layout.perception(name)
    if p.exists():
        image_row["perception"] = {k: v for k, v in _read(p).items() if k != "by_task_level"}
    f = layout.answer_facts(name)
    if f.exists():
        image_row["answer_facts"] = {k: v for k, v in _read(f).items() if k != "by_task_level"}
    return rows


def headline(layout: RunLayout, rows: list[dict[str, Any]], baselines: Sequence[str] = ()) -> dict[str, Any]:
    """MGSD against the cold start (a paired bootstrap over the same test samples), the share of
    the base's visual-to-symbolic gap MGSD closes, and each baseline minus MGSD (paired alike)."""
    from mgsd.scoring.aggregate import paired_bootstrap_diff

    find = {(r["model"], r["modality"], r["dataset"]): r for r in rows}
    base_img = find[("base", "image", "test")]["macro"]["success"]
    base_txt = find.get(("base", "text", "test"), {}).get("macro", {}).get("success")
    mgsd_img = find[("mgsd", "image", "test")]["macro"]["success"]
    mgsd = read_jsonl(layout.samples("mgsd"))
    diff = paired_bootstrap_diff(read_jsonl(layout.samples("coldstart")), mgsd)
    versus = {
        name: paired_bootstrap_diff(mgsd, read_jsonl(layout.samples(name)))
        for name in baselines
        if layout.samples(name).is_file()
    }
    closed = None
    if base_txt is not None and base_txt > base_img:
        closed = (mgsd_img - base_img) / (base_txt - base_img)
    return {
        "mgsd_minus_coldstart_success": diff,
        "mgsd_beats_coldstart": diff["ci"][0] > 0,
        "base_visual_success": base_img,
        "base_symbolic_success": base_txt,
        "mgsd_visual_success": mgsd_img,
        "gap_closed_fraction": closed,
        "baselines_minus_mgsd_success": versus,
    }


def summarize(
    cfg: PipelineConfig, layout: RunLayout, models: list[str], ext: list[str], timings: dict[str, Any]
) -> dict[str, Any]:
    rows = [row for name in models for row in model_rows(layout, name, ext)]
    teacher_file = layout.teacher("base")
    summary = {
        "rows": rows,
        "headline": headline(layout, rows, cfg.baselines),
        "teacher_competence": _read(teacher_file) if teacher_file.exists() else None,
        "timings": timings,
        "config": to_dict(cfg),
        "notes": list(NOTES),
    }
    write_json(summary, layout.summary)
    return summary
