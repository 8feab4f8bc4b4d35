"""Exporters so users of LLaMA-Factory (stage-1 SFT) and EasyR1/verl (stage-2 OPCD) can use our data.

Field names follow the reference release (TRAINING.md §3.1, §4.1); the prompt wording is ours. The
image placeholder comes last in the user turn, after the text, as in our own training and evaluation
(``mgsd.models.chat.student_messages``). Files are named by split, so train and val exported into one
folder sit side by side; a ``RECIPE.md`` beside them gives the trainer settings that reproduce ours.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mgsd.data.easyr1_reward import ground_truth
from mgsd.data.io import DataError, quiet_datasets, read_rows
from mgsd.files import atomic_write, write_text
from mgsd.prompts import perception_prompt, perception_target, student_prompt, teacher_context, teacher_system
from mgsd.tasks import get_task

IMAGE = "<image>"  # the placeholder both trainers replace with the image's tokens, in place
DataPaths = str | os.PathLike | Iterable[str | os.PathLike]


def _safe(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)


def _rows(data: DataPaths) -> tuple[list[dict[str, Any]], str]:
    """The rows to export and the split name their files are called by (``train-val`` for a mix)."""
    rows = read_rows(data)
    if not rows:
        raise DataError("the dataset is empty: nothing to export")
    split = "-".join(sorted({_safe(str(r["split"])) for r in rows}))
    return rows, split


def _pixels(rows: Sequence[dict[str, Any]]) -> tuple[int, int, str]:
    """The fewest and most pixels of the rows' images (read from the PNG headers only), and in words."""
    sizes = {Image.open(io.BytesIO(r["image"])).size for r in rows}
    counts = [w * h for w, h in sizes]
    lo, hi = min(counts), max(counts)
    if len(sizes) == 1:
        ((w, h),) = sizes
        return lo, hi, f"{w}x{h} ({lo} pixels)"
    return lo, hi, f"{lo} to {hi} pixels"


def _write_recipe(out: Path, section: str, text: str) -> Path:
    """Add or replace one trainer's section of ``RECIPE.md`` (the other exports' sections stay)."""
    path = out / "RECIPE.md"
    head = "# Training on this mgsd export\n"
    sections: dict[str, str] = {}
    if path.is_file():
        for chunk in path.read_text().split("\n## ")[1:]:
            title, _, body = chunk.partition("\n")
            sections[title.strip()] = body.strip("\n")
    sections[section] = text.strip("\n")
    body = "".join(f"\n## {t}\n{b}\n" for t, b in sorted(sections.items()))
    write_text(path, head + body)
    return path


def export_llamafactory(data: DataPaths, out: str | Path, *, name: str | None = None) -> Path:
    """A sharegpt perception-SFT file (image -> state answers) registered in ``dataset_info.json``.

    The file and the dataset entry are named by split (``mgsd_perception_sft_<split>`` unless ``name``
    is given), and an existing ``dataset_info.json`` keeps its other entries, so train and val exported
    into one folder are both there.
    """
    rows, split = _rows(data)
    name = name or f"mgsd_perception_sft_{split}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"--name must be letters, digits, '.', '_' or '-', got {name!r}")
    out = Path(out)
    info_path = out / "dataset_info.json"
    info = _read_dataset_info(info_path)  # before writing anything: a broken file stops the export
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = [_sharegpt_record(r, out) for r in rows]
    file_name = f"{name}.json"
    write_text(out / file_name, json.dumps(records, ensure_ascii=False, indent=1))
    info[name] = {
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
    write_text(info_path, json.dumps(info, indent=2) + "\n")
    lo, hi, size = _pixels(rows)
    _write_recipe(
        out,
        "LLaMA-Factory",
        f"""`dataset_dir: {out.resolve()}`, then the train entry as `dataset` and the val entry as
`eval_dataset`; entries in dataset_info.json: {", ".join(sorted(info))}.
The user turn is the question text followed by `<image>`, as in our training. Our images are
{size}: `image_min_pixels: {lo}` and `image_max_pixels: {hi}` keep them at that size.""",
    )
    return out / file_name


def _read_dataset_info(path: Path) -> dict[str, Any]:
    """LLaMA-Factory's ``dataset_info.json`` (empty when absent); a broken one is one clear error."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(info, dict):
        raise DataError(f"{path} must hold a JSON object of datasets")
    return info


def _sharegpt_record(r: dict[str, Any], out: Path) -> dict[str, Any]:
    """One perception-SFT conversation; its image is written under ``out/images/``."""
    task = get_task(r["task"])
    state = task.load_state(r["state"])
    rel = f"images/{_safe(r['id'])}.png"
    (out / rel).write_bytes(r["image"])
    return {
        "messages": [
            {"role": "user", "content": perception_prompt(task, state) + IMAGE},
            {"role": "assistant", "content": perception_target(task, state)},
        ],
        "images": [rel],
        "task": f"{task.name}_perception_all",
        "level": r["level"],
        "source_text": r["id"],
    }


def _opcd_columns(rows: Sequence[dict[str, Any]], with_plan: bool) -> dict[str, list[Any]]:
    """Per-row student prompt (image last), simulator ground truth and privileged teacher context."""
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "problem",
            "answer",
            "images",
            "teacher_images",
            "task",
            "level",
            "sample_id",
            "optimal_plan",
            "vsp_task_text",
            "teacher_system_prompt",
            "teacher_text_context",
        )
    }
    for r in rows:
        task = get_task(r["task"])
        state = task.load_state(r["state"])
        cols["problem"].append(student_prompt(task) + IMAGE)
        # Plans are not unique: the reward replays the response in the simulator from this state.
        truth = ground_truth(
            task.name, r["state"], r["level"], r["optimal_length"], r["id"], r["optimal_plan"]
        )
        cols["answer"].append(truth)
        cols["images"].append([{"bytes": r["image"], "path": None}])
        cols["teacher_images"].append([])
        cols["task"].append(task.name)
        cols["level"].append(int(r["level"]))
        cols["sample_id"].append(r["id"])
        cols["optimal_plan"].append(r["optimal_plan"])
        cols["vsp_task_text"].append(
            r["state"]
        )  # our canonical state JSON (their raw .txt has no equivalent)
        cols["teacher_system_prompt"].append(teacher_system(task))
        cols["teacher_text_context"].append(
            teacher_context(task, state, task.split_plan(r["optimal_plan"]) if with_plan else None)
        )
    return cols


def _listing(out: Path, prefix: str) -> str:
    return ", ".join(p.name for p in sorted(out.glob(f"{prefix}*.parquet")))


def _reward_file() -> str:
    from mgsd.data import easyr1_reward

    return str(Path(easyr1_reward.__file__).resolve())


def _to_parquet(cols: dict[str, list[Any]], features: Any, out: Path, name: str) -> Path:
    """``out/name`` written atomically as a ``datasets`` parquet (``out`` is created)."""
    from datasets import Dataset

    with quiet_datasets():
        return atomic_write(
            out / name,
            lambda tmp: Dataset.from_dict(cols, features=features).to_parquet(str(tmp)),
            mkdir=True,
        )


def export_easyr1(data: DataPaths, out: str | Path, *, with_plan: bool = True) -> Path:
    """An EasyR1 OPCD parquet ``easyr1_<split>.parquet``: student ``problem`` with ``<image>`` last,
    ``answer`` the simulator ground truth (JSON, scored by ``mgsd.data.easyr1_reward``), ``images``,
    and the privileged ``teacher_system_prompt`` / ``teacher_text_context`` per row."""
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    rows, split = _rows(data)
    cols = _opcd_columns(rows, with_plan)
    features = Features(
        {
            **{k: Value("string") for k in cols},
            "images": [ImageFeature()],
            "teacher_images": [ImageFeature()],
            "level": Value("int32"),
        }
    )
    out = Path(out)
    path = _to_parquet(cols, features, out, f"easyr1_{split}.parquet")
    lo, hi, size = _pixels(rows)
    _write_recipe(
        out,
        "EasyR1",
        f"""Overrides for `python3 -m verl.trainer.main config=...` (EasyR1):

    data.train_files={out.resolve()}/easyr1_train.parquet
    data.val_files={out.resolve()}/easyr1_val.parquet
    data.prompt_key=problem data.answer_key=answer data.image_key=images
    data.format_prompt=null
    data.min_pixels={lo} data.max_pixels={hi}
    worker.reward.reward_type=batch
    worker.reward.reward_function={_reward_file()}:compute_score

`problem` already states the output format, so no format prompt is added. Our images are
{size}; the pixel bounds keep them at that size (EasyR1's default min_pixels, 262144, would
upsize them, unlike our own evaluation). The reward replays the response's plan in our
simulator: any plan that reaches the goal scores 1 (`accuracy`); `optimal`, `progress` and `format`
are logged too.
Files here: {_listing(out, "easyr1_")}.""",
    )
    return path


def export_verl(data: DataPaths, out: str | Path, *, with_plan: bool = True) -> Path:
    """A verl RL parquet ``verl_<split>.parquet``: ``data_source``, ``prompt`` (a chat list whose user
    turn ends with ``<image>``), ``images``, ``ability``, ``reward_model`` {style, ground_truth} and
    ``extra_info`` (id, level, reference plan and the teacher's privileged context)."""
    rows, split = _rows(data)
    opcd = _opcd_columns(rows, with_plan)
    n = len(rows)
    cols: dict[str, list[Any]] = {
        "data_source": [f"mgsd/{t}" for t in opcd["task"]],
        "prompt": [[{"role": "user", "content": p}] for p in opcd["problem"]],
        "images": opcd["images"],
        "ability": ["visual_spatial_planning"] * n,
        "reward_model": [{"style": "rule", "ground_truth": g} for g in opcd["answer"]],
        "extra_info": [
            {
                "split": str(r["split"]),
                "index": i,
                "id": r["id"],
                "task": r["task"],
                "level": int(r["level"]),
                "optimal_plan": r["optimal_plan"],
                "teacher_system_prompt": opcd["teacher_system_prompt"][i],
                "teacher_text_context": opcd["teacher_text_context"][i],
            }
            for i, r in enumerate(rows)
        ],
    }
    features = _verl_features()
    out = Path(out)
    path = _to_parquet(cols, features, out, f"verl_{split}.parquet")
    lo, hi, size = _pixels(rows)
    _write_recipe(
        out,
        "verl",
        f"""Overrides for `python3 -m verl.trainer.main_ppo` (verl):

    data.train_files={out.resolve()}/verl_train.parquet
    data.val_files={out.resolve()}/verl_val.parquet
    data.prompt_key=prompt data.image_key=images
    custom_reward_function.path={_reward_file()}
    custom_reward_function.name=verl_compute_score

Our images are {size}: set the processor's min_pixels/max_pixels to {lo}/{hi} (or bounds
around them) so they are not resized, as in our own evaluation. The reward replays the response's plan in
our simulator: any plan that reaches the goal scores 1. Files here: {_listing(out, "verl_")}.""",
    )
    return path


def _verl_features() -> Any:
    """The verl parquet's column types (the images as ``datasets.Image``, the rest strings/ints)."""
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    text = Value("string")
    return Features(
        {
            "data_source": text,
            "prompt": [{"role": text, "content": text}],
            "images": [ImageFeature()],
            "ability": text,
            "reward_model": {"style": text, "ground_truth": text},
            "extra_info": {
                "split": text,
                "index": Value("int64"),
                "id": text,
                "task": text,
                "level": Value("int32"),
                "optimal_plan": text,
                "teacher_system_prompt": text,
                "teacher_text_context": text,
            },
        }
    )
