"""``build_report``: one self-contained HTML page for everything found under a run directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mgsd import __version__
from mgsd.files import write_text
from mgsd.report import charts
from mgsd.report.discover import Found, discover
from mgsd.report.gallery import Case, DatasetCache, run_cases
from mgsd.report.html import ci, esc, page, pct, section, table
from mgsd.report.summary import summary_section

METRIC_NOTE = (
    "success: the plan reaches the goal; optimal: success with a plan of optimal length; progress: share "
    "of the optimal path covered before the first non-improving action; invalid: ended by an illegal "
    "action; parse fail: no usable answer (failed requests count here too, never dropped). Macro = mean "
    "over tasks of level-balanced task scores. Brackets: 95% bootstrap CIs."
)


def _model_name(m: Mapping[str, Any]) -> str:
    model = m.get("model")
    if model:
        return Path(str(model)).name or str(model)
    pred = m.get("predictions")
    return Path(str(pred)).name if pred else "–"


# The plan-metric columns shared by the results table and its per task / level details.
_METRIC_HEADER = ["n", "success", "95% CI", "optimal", "progress", "invalid", "parse fail"]


def _metric_cells(v: Mapping[str, Any]) -> list[Any]:
    """The ``_METRIC_HEADER`` cells of one metrics block (a whole run, a task or a (task, level) cell)."""
    return [
        v["n"],
        pct(v["success"]),
        ("ci", ci(v["ci"]["success"])),
        pct(v["optimal"]),
        pct(v["progress"]),
        pct(v["invalid"]),
        pct(v["parse_failure"]),
    ]


def _results(found: Found) -> str:
    header = ["run", "model", "input", *_METRIC_HEADER, "macro success", "95% CI", "failed req."]
    rows = []
    for r in found.plans:
        m = r.data
        rows.append(
            [
                r.label,
                _model_name(m),
                m.get("modality", "–"),
                *_metric_cells(m),
                pct(m["macro"]["success"]),
                ("ci", ci(m["macro"]["ci"]["success"])),
                m.get("request_failures", 0),
            ]
        )
    body = table(header, rows, left=3) if rows else '<p class="note">No metrics.json found.</p>'
    detail = []
    for r in found.plans:
        cells = [
            [name, *_metric_cells(v)]
            for name, v in [*r.data["by_task_level"].items(), *r.data["by_task"].items()]
        ]
        detail.append(
            f"<details><summary>{esc(r.label)}: per task and level</summary>"
            + table(["scope", *_METRIC_HEADER], cells)
            + "</details>"
        )
    return section("Results", body + "".join(detail) + f'<p class="note">{esc(METRIC_NOTE)}</p>', "results")


def _level_charts(found: Found) -> str:
    if not found.plans:
        return ""
    runs = [(r.label, r.data) for r in found.plans]
    tasks = sorted({v["task"] for _, m in runs for v in m["by_task_level"].values()})
    imgs = "".join(
        f'<img alt="{esc(t)} success per level" src="{charts.level_chart(t, runs)}">' for t in tasks
    )
    return section("Success per level", f'<div class="charts">{imgs}</div>', "levels")


def _perception(found: Found) -> str:
    if not found.perception:
        return ""
    parts = []
    for r in found.perception:
        m = r.data
        rows = []
        for name, b in [*m["by_task_level"].items(), *m["by_task"].items(), ("all", m)]:
            qs = b.get("questions", {})
            qtext = ", ".join(f"{k} {pct(q['accuracy'])}" for k, q in qs.items())
            rows.append(
                [
                    name,
                    b["n"],
                    pct(b["all_correct"]),
                    ("ci", ci(b["all_correct_ci"])),
                    pct(b["question_accuracy"]),
                    qtext,
                ]
            )
        parts.append(
            f"<h3>{esc(r.label)} ({esc(_model_name(m))})</h3>"
            + table(
                ["scope", "n", "all correct", "95% CI", "question acc.", "per question (%)"],
                rows,
                left=(0, 5),
            )
            + (
                f'<p class="warn">{m["request_failures"]} failed request(s) scored as wrong.</p>'
                if m.get("request_failures")
                else ""
            )
        )
    note = '<p class="note">Exact set matching per question; a missing or unreadable answer is wrong.</p>'
    return section("Perception", "".join(parts) + note, "perception")


def _gaps(found: Found) -> str:
    if not found.gaps:
        return ""
    valid = [(r.label, r.data) for r in found.gaps if "categories" in r.data and "by_task" in r.data]
    if not valid:
        return ""
    parts = [
        f'<div class="charts"><img alt="modality gap attribution" src="{charts.gap_chart(valid)}"></div>'
    ]
    for label, g in valid:
        cats = g["categories"]
        rows = [
            [
                name,
                b["n"],
                *[f"{pct(b['fractions'][c])}" for c in cats],
                pct(b["image_success"]),
                pct(b["text_success"]),
                pct(b["perceived"]),
            ]
            for name, b in [*g["by_task_level"].items(), *g["by_task"].items(), ("all", g["total"])]
        ]
        parts.append(
            f"<h3>{esc(label)}</h3>"
            + table(
                ["scope", "n", *[c.replace("_", " ") for c in cats], "image ok", "text ok", "perceived"], rows
            )
        )
    defs = valid[0][1].get("definitions", {})
    if defs:
        parts.append(
            '<ul class="note">'
            + "".join(f"<li><b>{esc(k.replace('_', ' '))}</b>: {esc(v)}</li>" for k, v in defs.items())
            + "</ul>"
        )
    return section("Modality gap", "".join(parts), "gap")


def _curves(found: Found) -> str:
    parts = []
    for log in found.logs:
        url = charts.curves_chart(log.label, log.records) if log.records else None
        if url:
            parts.append(f'<img alt="training curves {esc(log.label)}" src="{url}">')
        else:
            parts.append(f'<p class="note">{esc(log.label)}/log.jsonl: no numeric records.</p>')
        if log.skipped:
            parts.append(
                f'<p class="warn">{esc(log.label)}/log.jsonl: {log.skipped} unreadable line(s) skipped.</p>'
            )
    return (
        section("Training curves", f'<div class="charts">{"".join(parts)}</div>', "training") if parts else ""
    )


def _response_text(c: Case) -> str:
    if c.error is not None:
        return f"(request failed: {c.error})"
    if c.response is None:
        return "(no response text: the plan was scored directly)"
    text = c.response.strip("\n")
    if not text.strip():
        return f"(empty response: {len(c.response)} whitespace character(s))"
    if len(text) > 2000:
        text = text[:2000] + f"\n… ({len(text) - 2000} more characters)"
    return text


def _case_html(c: Case) -> str:
    cls = "ok" if c.ok else "bad"
    return (
        '<div class="case">'
        f'<img alt="{esc(c.sample_id)}" src="{c.image_url}">'
        f'<div class="meta">{esc(c.task)} level {c.level} · {esc(c.sample_id)}</div>'
        f'<span class="verdict {cls}">{esc(c.verdict)}</span>'
        f'<div class="meta">plan: {esc(c.plan if c.plan is not None else "none parsed")}</div>'
        f"<pre>{esc(_response_text(c))}</pre></div>"
    )


def _gallery_runs(found: Found) -> list[Any]:
    """The runs whose samples the gallery shows: a multi-seed run only through its first seed."""
    multi = {r.path.resolve(): r.data["seeds"] for r in found.plans if r.data.get("seeds")}
    keep = []
    for r in found.plans:
        if r.path.resolve() in multi:
            continue  # per-sample means over seeds: no single response to show
        seeds = multi.get(r.path.parent.resolve())
        if seeds is not None and r.path.name != f"seed{min(seeds)}":
            continue
        keep.append(r)
    return keep


def _gallery(found: Found, per_task: int) -> str:
    cache = DatasetCache()
    fallback = _datasets_under(found.root)
    parts, notes = [], []
    for r in _gallery_runs(found):
        meta = r.data if r.data.get("data") or not fallback else {**r.data, "data": fallback}
        cases, note = run_cases(r.label, r.path, meta, cache, per_task)
        if cases:
            title = f"{r.label} ({_model_name(r.data)}, {r.data.get('modality', 'plans')} input)"
            parts.append(
                f"<h3>{esc(title)}</h3>"
                + '<div class="gallery">'
                + "".join(map(_case_html, cases))
                + "</div>"
            )
        if note:
            notes.append(note)
    body = ""
    if parts:
        body += (
            '<p class="note">Path = the task simulator run on the parsed plan. Green: reaches the goal; '
            "amber: stops short; red with a cross: ended by an illegal action (the cross marks the cell it "
            "tried to enter). The ring marks the start, the square the end, diamonds PICK/DROP.</p>"
        )
        body += "".join(parts)
    body += "".join(f'<p class="warn">{esc(n)}</p>' for n in notes)
    return section("Case gallery", body or '<p class="note">No samples to show.</p>', "gallery")


def _datasets_under(root: Path) -> list[str]:
    """Dataset directories inside the run directory (used when metrics.json records no data paths)."""
    dirs = sorted(
        {
            p.parent
            for p in root.rglob("*.parquet")
            if not any(s.startswith(".") for s in p.relative_to(root).parts)
        }
    )
    return [str(d) for d in dirs]


def build_report(run_dir: str | Path, out: str | Path | None = None, *, cases_per_task: int = 4) -> Path:
    """Write ``report.html`` (default: inside ``run_dir``) and return its path."""
    found = discover(run_dir)
    if not (found.plans or found.perception or found.gaps or found.logs or found.summary):
        raise ValueError(
            f"nothing to report in {run_dir}: no metrics.json, gap.json, log.jsonl or summary.json"
        )
    sections = []
    if found.summary is not None:
        sections.append(summary_section(found.summary))
    sections += [
        _results(found),
        _level_charts(found),
        _perception(found),
        _gaps(found),
        _curves(found),
        _gallery(found, cases_per_task),
    ]
    if found.problems:
        sections.append(
            section("Problems", "".join(f'<p class="warn">{esc(p)}</p>' for p in found.problems), "problems")
        )
    counts = (
        f"{len(found.plans)} evaluation run(s), {len(found.gaps)} gap analysis(es), "
        f"{len(found.logs)} training log(s)"
    )
    html_text = page(f"mgsd report: {found.root.resolve().name}", f"{counts} · mgsd {__version__}", sections)
    target = Path(out) if out is not None else found.root / "report.html"
    return write_text(target, html_text, mkdir=True)
