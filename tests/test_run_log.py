"""The run log: log.jsonl always, accelerate trackers when asked, a clear line when one is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mgsd.train.run_log import TRACKER_PACKAGES, RunLog, check_trackers


class FakeAccelerator:
    """Records what RunLog hands to accelerate's tracker API."""

    def __init__(self, log_with: list[str] | None, main: bool = True) -> None:
        self.log_with, self.is_main_process = log_with, main
        self.calls: list[tuple[str, Any]] = []

    def init_trackers(self, project: str, config: dict[str, Any]) -> None:
        self.calls.append(("init", (project, config)))

    def log(self, values: dict[str, float], step: int) -> None:
        self.calls.append(("log", (values, step)))

    def end_training(self) -> None:
        self.calls.append(("end", None))


def test_trackers_get_flat_config_and_finite_scalars(tmp_path: Path) -> None:
    acc = FakeAccelerator(["tensorboard"])
    log = RunLog(
        tmp_path / "run1", acc=acc, step=0, config={"optim": {"lr": 1e-3}, "lora": {"r": 8}, "x": [1]}
    )
    (tmp_path / "run1").mkdir()
    log.write({"step": 1, "loss": 0.5, "note": "text", "bad": float("nan")})
    log.close()
    assert acc.calls[0] == ("init", ("run1", {"optim.lr": 1e-3, "lora.r": 8, "x": "[1]"}))
    assert acc.calls[1] == ("log", ({"loss": 0.5}, 1)) and acc.calls[2] == ("end", None)
    assert json.loads((tmp_path / "run1" / "log.jsonl").read_text())["note"] == "text"


def test_no_tracker_and_other_ranks_write_nothing_but_the_main_log(tmp_path: Path) -> None:
    quiet = FakeAccelerator(None)
    RunLog(tmp_path, acc=quiet, step=0, config={}).write({"step": 1, "loss": 1.0})
    assert quiet.calls == [] and (tmp_path / "log.jsonl").exists()
    other = FakeAccelerator(["wandb"], main=False)
    log = RunLog(tmp_path / "r", acc=other, step=0, config={})
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert other.calls == [] and not (tmp_path / "r").exists()


def test_a_missing_or_unknown_tracker_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import Trainer

    monkeypatch.setitem(TRACKER_PACKAGES, "wandb", "mgsd_no_such_package")
    with pytest.raises(ValueError, match="'wandb' needs the mgsd_no_such_package package"):
        check_trackers(["wandb"])
    with pytest.raises(ValueError, match="unknown 'tensorbored'"):
        check_trackers(["tensorbored"])
    check_trackers([])
    # the trainer refuses before it loads anything (the model path does not even exist)
    cfg = TrainConfig(
        objective="perception", model="no/such/model", out="x", train_data=["y"], trackers=["wandb"]
    )
    with pytest.raises(ValueError, match="not installed"):
        Trainer(cfg)
