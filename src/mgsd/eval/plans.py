"""Scoring plan predictions against a dataset: ``mgsd eval plans``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mgsd.data.io import DataError, read_rows
from mgsd.files import jsonl_lines, write_json, write_jsonl
from mgsd.scoring.aggregate import aggregate
from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task

_SAMPLE_COLUMNS = ["id", "task", "level", "state", "optimal_plan", "optimal_length"]


def read_predictions(path: str | Path) -> dict[str, str]:
    """``{"id": ..., "response": ...}`` lines; DataError naming the line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}")
    preds: dict[str, str] = {}
    for lineno, line in enumerate(jsonl_lines(path.read_text()), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            sid, resp = rec["id"], rec["response"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'id' and 'response'") from None
        if not isinstance(resp, str) and resp is not None:
            raise DataError(f"{path}:{lineno}: 'response' must be a string")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)):  # a list or dict cannot name a sample
            raise DataError(f"{path}:{lineno}: 'id' must be a string, got {type(sid).__name__}")
        sid = str(sid)
        if sid in preds:
            raise DataError(f"{path}:{lineno}: duplicate prediction for id {sid!r}")
        preds[sid] = resp
    return preds


def score_dataset(
    samples: Sequence[Mapping[str, Any]], predictions: Mapping[str, str | None] | None
) -> list[dict[str, Any]]:
    """Score every dataset sample; ``predictions=None`` scores the dataset's own optimal plans (oracle).

    A sample with no prediction is a counted parse failure; a prediction for an unknown id is an error.
    """
    if predictions is not None:
        known = {s["id"] for s in samples}
        unknown = [i for i in predictions if i not in known]
        if unknown:
            raise DataError(f"{len(unknown)} prediction id(s) not in the dataset, e.g. {unknown[0]!r}")
    scored = []
    for s in samples:
        task = get_task(s["task"])
        state = task.load_state(s["state"])
        if predictions is None:
            response = f"<answer>{s['optimal_plan']}</answer>"
        else:
            response = predictions.get(s["id"])
        row = score_response(
            task, state, response, sample_id=s["id"], optimal_length=int(s["optimal_length"])
        )
        scored.append({**row.to_dict(), "missing": response is None})
    return scored


def write_results(
    out: str | Path, scored: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``samples.jsonl`` then ``metrics.json`` (last, so its presence means the run finished)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = aggregate(scored)
    metrics["missing_predictions"] = sum(bool(r.get("missing")) for r in scored)
    if extra:
        metrics.update(extra)
    write_jsonl(scored, out / "samples.jsonl")
    write_json(metrics, out / "metrics.json")
    return metrics


def data_paths(data: Sequence[str | Path]) -> list[str]:
    """Absolute dataset paths for metrics.json (the report reloads states and images from them)."""
    return [str(Path(d).resolve()) for d in data]


def eval_plans(data: Sequence[str | Path], out: str | Path, predictions: str | Path | None) -> dict[str, Any]:
    samples = read_rows(data, columns=_SAMPLE_COLUMNS)
    if not samples:
        raise DataError("the dataset is empty")
    preds = read_predictions(predictions) if predictions is not None else None
    extra = {
        "predictions": "oracle" if preds is None else str(predictions),
        "data": data_paths(data),
    }
    return write_results(out, score_dataset(samples, preds), extra)
