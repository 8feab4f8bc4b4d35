"""Charts as base64 PNG data URLs (matplotlib's Agg canvas directly: no pyplot, no global state)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Colour-blind-safe palette (Okabe-Ito), cycled over runs.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GAP_COLOURS = {
    "solved": "#009E73",
    "perception": "#E69F00",
    "image_reasoning": "#D55E00",
    "reasoning": "#0072B2",
    "perception_and_reasoning": "#CC79A7",
    "request_failed": "#999999",
}


def figure_url(fig: Figure) -> str:
    """A figure as a ``data:image/png;base64,...`` URL."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def level_chart(task: str, runs: Sequence[tuple[str, Mapping[str, Any]]], metric: str = "success") -> str:
    """Grouped bars: ``metric`` per level of ``task`` for each run, with 95% CI whiskers."""
    levels = sorted(
        {int(v["level"]) for _, m in runs for v in m["by_task_level"].values() if v["task"] == task}
    )
    fig = Figure(figsize=(max(5.0, 1.1 * len(levels) + 2.5), 3.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(runs))
    for i, (label, m) in enumerate(runs):
        cells = {int(v["level"]): v for v in m["by_task_level"].values() if v["task"] == task}
        present = [lv for lv in levels if lv in cells]
        xs = [levels.index(lv) + (i - (len(runs) - 1) / 2) * width for lv in present]
        ys = [100 * cells[lv][metric] for lv in present]
        cis = [[100 * b for b in cells[lv]["ci"][metric]] for lv in present]
        err = [
            [max(0.0, y - lo) for y, (lo, _) in zip(ys, cis, strict=True)],
            [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis, strict=True)],
        ]
        colour = PALETTE[i % len(PALETTE)]
        ax.bar(xs, ys, width, label=label, color=colour, yerr=err, capsize=2, ecolor="#444")
    ax.set_xticks(range(len(levels)), [f"level {lv}" for lv in levels])
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{task}: {metric} per level (95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return figure_url(fig)


def numeric_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Fields other than ``step`` holding finite numbers in at least one record, in first-seen order."""
    fields: list[str] = []
    for r in records:
        for k, v in r.items():
            if k == "step" or k in fields or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                fields.append(k)
    return fields


def curves_chart(title: str, records: Sequence[Mapping[str, Any]]) -> str | None:
    """Small multiples: every numeric field of a training log against ``step`` (None if none)."""
    fields = numeric_fields(records)
    if not fields:
        return None
    cols = min(3, len(fields))
    rows = math.ceil(len(fields) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.6 * rows))
    for i, name in enumerate(fields):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = [
            (r["step"], r[name])
            for r in records
            if isinstance(r.get(name), (int, float))
            and not isinstance(r.get(name), bool)
            and math.isfinite(r[name])
        ]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, color=PALETTE[i % len(PALETTE)])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_url(fig)


def gap_chart(gaps: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Stacked horizontal bars: the attribution categories per model and task (fractions of samples)."""
    bars: list[tuple[str, Mapping[str, Any]]] = []
    for label, g in gaps:
        bars += [(f"{label} · {t}", b) for t, b in g["by_task"].items()]
        bars.append((f"{label} · all", g["total"]))
    categories = list(gaps[0][1]["categories"])
    fig = Figure(figsize=(9.0, 0.45 * len(bars) + 1.4))
    ax = fig.add_subplot()
    left = [0.0] * len(bars)
    ys = list(range(len(bars)))[::-1]
    for cat in categories:
        widths = [100 * b["fractions"].get(cat, 0.0) for _, b in bars]
        ax.barh(ys, widths, left=left, color=GAP_COLOURS.get(cat, "#777"), label=cat.replace("_", " "))
        left = [a + w for a, w in zip(left, widths, strict=True)]
    ax.set_yticks(ys, [f"{name} (n={b['n']})" for name, b in bars], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of samples")
    ax.set_title("Why image planning fails: attribution per model and task", fontsize=10)
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return figure_url(fig)
