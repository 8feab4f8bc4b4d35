"""A run's metrics log: ``log.jsonl`` (one record per logged step, always) and TensorBoard (when
installed). Only the main process writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mgsd.files import jsonl_lines, write_text


class RunLog:
    def __init__(self, out: Path, *, main: bool, step: int) -> None:
        """The log of run directory ``out``; on resume (``step`` > 0) the records of steps after the
        checkpoint are dropped, since they will be redone."""
        self.path, self.main = out / "log.jsonl", main
        self.writer: Any = None
        if not main:
            return
        self._truncate(step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; log.jsonl always has everything
            return
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step or None)

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = jsonl_lines(self.path.read_text())
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
