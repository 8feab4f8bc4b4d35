"""Exporters so users of LLaMA-Factory (stage-1 SFT) and EasyR1/verl (stage-2 OPCD) can use our data.

Field names follow the reference release (TRAINING.md §3.1, §4.1); the prompt wording is ours.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mgsd.data.io import quiet_datasets, read_rows
from mgsd.prompts import perception_prompt, perception_target, student_prompt, teacher_context, teacher_system
from mgsd.tasks import get_task


def _safe(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)


def export_llamafactory(data: str | Path, out: str | Path, *, name: str = "mgsd_perception_sft") -> Path:
    """A sharegpt perception-SFT file (image -> numbered state answers) plus ``dataset_info.json``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for r in read_rows(data):
        task = get_task(r["task"])
        state = task.load_state(r["state"])
        rel = f"images/{_safe(r['id'])}.png"
        (out / rel).write_bytes(r["image"])
        records.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>" + perception_prompt(task, state)},
                    {"role": "assistant", "content": perception_target(task, state)},
                ],
                "images": [rel],
                "task": f"{task.name}_perception_all",
                "level": r["level"],
                "source_text": r["id"],
            }
        )
    file_name = f"{name}.json"
    tmp = out / f".{file_name}.tmp"
    tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1))
    os.replace(tmp, out / file_name)
    info = {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out / file_name


def export_easyr1(data: str | Path, out: str | Path, *, with_plan: bool = True) -> Path:
    """An EasyR1/verl OPCD parquet: student ``problem`` with ``<image>`` last, ``answer``, ``images``,
    and the privileged ``teacher_system_prompt`` / ``teacher_text_context`` per row."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = read_rows(data)
    cols: dict[str, list] = {
        k: []
        for k in (
            "problem",
            "answer",
            "images",
            "teacher_images",
            "task",
            "level",
            "sample_id",
            "vsp_task_text",
            "teacher_system_prompt",
            "teacher_text_context",
        )
    }
    for r in rows:
        task = get_task(r["task"])
        state = task.load_state(r["state"])
        cols["problem"].append(student_prompt(task) + "\n<image>")
        cols["answer"].append(r["optimal_plan"])
        cols["images"].append([{"bytes": r["image"], "path": None}])
        cols["teacher_images"].append([])
        cols["task"].append(task.name)
        cols["level"].append(int(r["level"]))
        cols["sample_id"].append(r["id"])
        cols["vsp_task_text"].append(
            r["state"]
        )  # our canonical state JSON (their raw .txt has no equivalent)
        cols["teacher_system_prompt"].append(teacher_system(task))
        cols["teacher_text_context"].append(
            teacher_context(task, state, task.split_plan(r["optimal_plan"]) if with_plan else None)
        )
    features = Features(
        {
            **{k: Value("string") for k in cols},
            "images": [ImageFeature()],
            "teacher_images": [ImageFeature()],
            "level": Value("int32"),
        }
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "opcd.parquet"
    tmp = out / ".opcd.parquet.tmp"
    with quiet_datasets():
        Dataset.from_dict(cols, features=features).to_parquet(str(tmp))
    os.replace(tmp, path)
    return path
