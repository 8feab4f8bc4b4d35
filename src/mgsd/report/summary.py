"""The run's ``summary.json`` as the report's Summary section: the headline (MGSD against the cold
start, the gap closed), every model's rows with perception, the teacher's competence, the overlap with
pretraining, and the wall time and memory of each step."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mgsd.report.html import ci, esc, pct, section, table


def summary_section(summary: Mapping[str, Any]) -> str:
    parts = [_headline(summary.get("headline"))]
    notes = summary.get("notes")
    if notes:
        items = notes if isinstance(notes, list) else [notes]
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in items) + "</ul>")
    rows = summary.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(x, dict) and "macro" in x for x in rows):
        parts.append(_result_rows(rows))
    elif isinstance(rows, list) and rows and all(isinstance(x, dict) for x in rows):
        keys = list(dict.fromkeys(k for x in rows for k in x))
        parts.append(table(keys, [[_scalar(x.get(k)) for k in keys] for x in rows]))
    models = summary.get("models")
    if isinstance(models, dict) and models:
        mrows = [
            [
                name,
                m.get("n", "–"),
                pct(m.get("macro", {}).get("success")),
                ("ci", ci(m.get("macro", {}).get("ci", {}).get("success"))),
            ]
            for name, m in models.items()
            if isinstance(m, dict)
        ]
        parts.append(table(["model", "n", "macro success", "95% CI"], mrows))
    parts.append(_teacher(summary.get("teacher_competence")))
    parts.append(_overlap(summary.get("overlap_with_pretraining")))
    parts.append(_timings(summary.get("timings")))
    scalars = {
        k: v
        for k, v in summary.items()
        if k not in ("notes", "rows", "models", "teacher_competence") and not isinstance(v, (dict, list))
    }
    if scalars:
        parts.append(
            '<p class="note">' + ", ".join(f"{esc(k)}: {esc(v)}" for k, v in scalars.items()) + "</p>"
        )
    return section("Summary", "".join(parts) or '<p class="note">summary.json is empty.</p>', "summary")


def _teacher(tc: Any) -> str:
    """Does the privileged teacher know the answer? Its success from its own context (the rows
    'teacher+plan' / 'teacher' above) and the reference answer's log-prob with and without the plan."""
    if not isinstance(tc, Mapping):
        return ""
    lp = tc.get("reference_logprob") or {}
    rows = [
        [
            task,
            pct(tc.get("teacher+plan", {}).get("by_task", {}).get(task, {}).get("success")),
            pct(tc.get("teacher", {}).get("by_task", {}).get(task, {}).get("success")),
            f"{v['with_plan']:.3f}",
            f"{v['without_plan']:.3f}",
            f"{v['plan_gain']:+.3f}",
        ]
        for task, v in lp.items()
    ]
    head = [
        "task",
        "success, state + plan",
        "success, state only",
        "ref. log p / token, with plan",
        "without plan",
        "gain",
    ]
    note = (
        '<p class="note">Teacher competence (n = ' + esc(tc.get("n")) + " test samples): stage 2 can only "
        "distil what the teacher knows; a teacher that cannot copy a given plan carries no planning "
        "signal.</p>"
    )
    return note + table(head, rows)


def _overlap(ov: Any) -> str:
    if not isinstance(ov, Mapping) or not ov:
        return ""
    rows = [
        [name, v.get("n"), v.get("seen_in_pretraining")] for name, v in ov.items() if isinstance(v, Mapping)
    ]
    return '<p class="note">States the base saw in pretraining, per evaluated dataset:</p>' + table(
        ["dataset", "n", "seen in pretraining"], rows
    )


def _headline(h: Any) -> str:
    """MGSD vs cold start (paired) and the share of the base's modality gap MGSD closes, in words."""
    if not isinstance(h, Mapping) or not isinstance(h.get("mgsd_minus_coldstart_success"), Mapping):
        return ""
    d = h["mgsd_minus_coldstart_success"]
    lo, hi = d["ci"]
    verdict = (
        "MGSD is better than the cold-start model: the interval excludes zero."
        if lo > 0
        else "The interval does not exclude zero: on this run MGSD is not shown to beat the cold-start model."
    )
    text = (
        f"MGSD minus cold start, visual macro success: {100 * d['diff']:+.1f} points, "
        f"paired bootstrap 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] over n = {d['n']} test samples. "
        + verdict
    )
    closed = h.get("gap_closed_fraction")
    base_v, base_s, mgsd_v = (
        h.get(k) for k in ("base_visual_success", "base_symbolic_success", "mgsd_visual_success")
    )
    if base_s is not None:
        gap = (
            f"Base from the image {pct(base_v)}%, from the symbolic text {pct(base_s)}% (the upper bound); "
            f"MGSD from the image {pct(mgsd_v)}%. "
        )
        gap += (
            f"MGSD closes {100 * closed:.0f}% of the base's visual-to-symbolic gap."
            if closed is not None
            else "The base has no visual-to-symbolic gap to close on this run."
        )
        text += " " + gap
    versus = h.get("baselines_minus_mgsd_success") or {}
    if versus:
        parts = [
            f"{name} {100 * v['diff']:+.1f} [{100 * v['ci'][0]:+.1f}, {100 * v['ci'][1]:+.1f}]"
            for name, v in versus.items()
        ]
        text += " Baselines minus MGSD from the image (paired, 95% CI): " + "; ".join(parts) + "."
    return f'<p class="headline">{esc(text)}</p>'


def _result_rows(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "modality",
        "dataset",
        "n",
        "success",
        "95% CI",
        "optimal",
        "progress",
        "perception all correct",
        "perception per question",
        "facts in plan answer per question",
    ]
    tasks = list(dict.fromkeys(t for r in rows for t in r.get("by_task", {})))
    header += [f"{t} success" for t in tasks]
    cells = []
    for r in rows:
        m = r["macro"]
        perception = r.get("perception", {}).get("all_correct")
        per_question = r.get("perception", {}).get("question_accuracy")
        answer_facts = r.get("answer_facts", {}).get("question_accuracy")
        cells.append(
            [
                r["model"],
                r.get("modality", ""),
                r.get("dataset", ""),
                r.get("n", "–"),
                pct(m.get("success")),
                ("ci", ci(m.get("ci", {}).get("success"))),
                pct(m.get("optimal")),
                pct(m.get("progress")),
                pct(perception),
                pct(per_question),
                pct(answer_facts),
                *[pct(r.get("by_task", {}).get(t, {}).get("success")) for t in tasks],
            ]
        )
    return table(header, cells, left=3)


def _timings(timings: Any) -> str:
    """Wall time and memory high-water mark of every pipeline step, as measured by the run."""
    if not isinstance(timings, Mapping) or not timings:
        return ""
    rows = [
        [name, f"{t.get('seconds', 0):.0f}", t.get("peak_rss_mb_so_far", "–")]
        for name, t in timings.items()
        if isinstance(t, Mapping)
    ]
    total = sum(t.get("seconds", 0) for t in timings.values() if isinstance(t, Mapping))
    rows.append(["total", f"{total:.0f}", max((r[2] for r in rows if isinstance(r[2], int)), default="–")])
    return "<h3>Wall time and memory</h3>" + table(["step", "seconds", "peak RSS so far (MB)"], rows)


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:80]
    return "–" if v is None else str(v)
