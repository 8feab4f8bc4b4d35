"""Results are keyed by what produced them: a run's settings, and what a change of them makes stale.

``settings.json`` records the config and a content hash of the base weights and external test sets;
a rerun with other settings refuses, naming the changed keys, unless ``redo`` (the stages they
affect, and everything downstream, are removed and run again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mgsd.config import changed_keys, to_dict
from mgsd.data.io import tree_fingerprint
from mgsd.pipeline.base_model import given_base, pretrained_in_run
from mgsd.pipeline.config import PipelineConfig, upgrade_config
from mgsd.pipeline.layout import DATA_DIR, EVAL_DIR, MODELS_DIR, RunLayout

# Settings that never change a finished result: how a run reports, and the list of baselines (a new
# one is simply run; a dropped one is no longer reported).
RUN_EXEMPT = ("progress", "baselines")
_FROM_COLDSTART = ("mgsd", "mgsd_no_plan")  # stages that start from stage 1's model
_ALL_MODELS = ("coldstart", "mgsd", "plan_sft", "opsd_no_coldstart", "mgsd_no_plan")


def run_settings(cfg: PipelineConfig, external: dict[str, str]) -> dict[str, Any]:
    """What a run's results depend on: its config and the content of its inputs (the base model
    directory unless pretrained inside the run, and every external test set)."""
    settings: dict[str, Any] = {"config": to_dict(cfg)}
    if not pretrained_in_run(cfg):
        base = given_base(cfg)
        settings["base_weights"] = (
            tree_fingerprint(base, (".safetensors", ".json", ".txt")) if base.is_dir() else str(cfg.model)
        )
    # By content: the same files at another path are the same test set.
    settings["external"] = {name: tree_fingerprint(src) for name, src in sorted(external.items())}
    return settings


def _affected(key: str) -> set[str]:
    """Directories (relative to the run) holding results that depend on the dotted settings ``key``:
    a model's training directory goes with its evaluation (``eval/NAME``)."""
    everything = {f"{MODELS_DIR}/{n}" for n in _ALL_MODELS} | {EVAL_DIR}
    top = key.split(".")[0]
    if top in ("model", "base_weights", "pretrain"):
        return {DATA_DIR, f"{MODELS_DIR}/pretrain", *everything}
    if top in ("data", "external"):  # the test split excludes the external sets' states: data is redone
        return {DATA_DIR, *everything}
    if top == "seed":
        return everything
    if key.startswith("stage1."):
        names = {"coldstart", "plan_sft", *_FROM_COLDSTART}
    elif key.startswith("stage2."):
        names = {"mgsd", "opsd_no_coldstart", "mgsd_no_plan"}
        if key == "stage2.steps":
            names.add("plan_sft")  # its sample budget is stage 1 + stage 2 steps
    else:
        return {EVAL_DIR}  # eval_* settings, analysis_models
    return {f"{MODELS_DIR}/{n}" for n in names} | {f"{EVAL_DIR}/{n}" for n in names}


def _recorded(layout: RunLayout, settings: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The settings ``layout``'s run was made with (None for a new run), and whether they are a
    legacy run's (an older mgsd wrote only its config; the inputs are unknown)."""
    if layout.settings.is_file():
        old = json.loads(layout.settings.read_text())
        legacy = False
    elif layout.config.is_file():
        old, legacy = {**settings, "config": json.loads(layout.config.read_text())}, True
    else:
        return None, False
    if isinstance(old.get("config"), dict):  # keys renamed since, read as today's
        old["config"] = upgrade_config(old["config"])
    return old, legacy


def reconcile(out: Path, settings: dict[str, Any], *, redo: bool) -> None:
    """Refuse (or with ``redo`` clear) results in ``out`` that other settings produced."""
    from mgsd.models.tiny import PRESETS

    layout = RunLayout(out)
    old, legacy = _recorded(layout, settings)
    if old is None:
        return  # a new run
    exempt = [f"config.{k}" for k in RUN_EXEMPT]
    if settings["config"]["model"] not in PRESETS and old.get("config", {}).get("model") not in PRESETS:
        exempt.append("config.pretrain.")  # only read when the base is pretrained inside the run
    changes = changed_keys(old, settings, exempt)
    if legacy:  # keys added since that version were not settings then
        changes = [c for c in changes if "(unset -> " not in c]
    if not changes:
        return
    keys = [c.split(" ", 1)[0].removeprefix("config.") for c in changes]
    if not redo:
        shown = ", ".join(c.removeprefix("config.") for c in changes[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise ValueError(
            f"{out} was made with other settings ({shown}{more}): pass --redo to re-run the stages "
            "they affect, or choose another --out"
        )
    stale: set[str] = set()
    for k in keys:
        stale |= _affected(k)
    for rel in sorted(stale):
        target = out / rel
        if target.exists():
            shutil.rmtree(target)
    for f in (layout.summary, layout.report):
        f.unlink(missing_ok=True)
    print(f"== redo: {', '.join(keys)} changed; removed {', '.join(sorted(stale))}", flush=True)
