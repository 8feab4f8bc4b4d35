"""Where everything lives inside a run directory: the one place that spells the paths.

```
RUN/
  settings.json  config.json  timings.json  summary.json  report.html
  data/          test/ val/ train/ (and external/NAME/), COMPLETE when every split is written
  models/NAME/   one training directory per trained model; the model itself in models/NAME/model
  models/pretrain/base   the base, when pretrained inside the run
  eval/NAME/     image/ (or the gap analysis: image/ text/ perception/ gap.json answer_facts.json),
                 teacher/, external-SET/
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMPLETE = "COMPLETE"  # the marker of a finished data directory
SETTINGS_FILE = "settings.json"
# Directories relative to the run, as ``reconcile`` names the results a changed setting makes stale.
DATA_DIR, MODELS_DIR, EVAL_DIR = "data", "models", "eval"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    # -- files of the run ---------------------------------------------------------------------
    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # -- data ---------------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def data_complete(self) -> Path:
        return self.data / COMPLETE

    def split(self, name: str) -> Path:
        """``test``, ``val`` or ``train``."""
        return self.data / name

    @property
    def external(self) -> Path:
        return self.data / "external"

    # -- models -------------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / MODELS_DIR

    def training(self, name: str) -> Path:
        """The training directory of model ``name`` (checkpoints, logs, and the model in ``model/``)."""
        return self.models / name

    def model(self, name: str) -> Path:
        return self.training(name) / "model"

    @property
    def pretrain(self) -> Path:
        return self.models / "pretrain"

    @property
    def pretrained_base(self) -> Path:
        return self.pretrain / "base"

    # -- evaluation ---------------------------------------------------------------------------
    def eval(self, name: str) -> Path:
        return self.root / EVAL_DIR / name

    def metrics(self, name: str, modality: str = "image") -> Path:
        """``image`` and ``text`` (the gap analysis), ``teacher+plan`` and ``teacher`` (the teacher's
        competence, under ``teacher/``), or ``external-SET``."""
        base = self.eval(name) / "teacher" if modality.startswith("teacher") else self.eval(name)
        return base / modality / "metrics.json"

    def samples(self, name: str) -> Path:
        return self.eval(name) / "image" / "samples.jsonl"

    def gap(self, name: str) -> Path:
        return self.eval(name) / "gap.json"

    def teacher(self, name: str) -> Path:
        return self.eval(name) / "teacher" / "teacher.json"

    def perception(self, name: str) -> Path:
        return self.eval(name) / "perception" / "perception_metrics.json"

    def answer_facts(self, name: str) -> Path:
        """The facts block of the image plan answers, scored as perception (the gap analysis)."""
        return self.eval(name) / "answer_facts.json"


def is_model(path: Path) -> bool:
    """A finished model directory (written last, so its presence means the weights are complete)."""
    return (path / "config.json").is_file()
