"""``mgsd pretrain``: the tiny base trained (train/pretrain.py), then measured against its gates
(eval/gates.py) and described by its model card (pipeline/base_card.py). Training and evaluation
stay apart; this is where they meet."""

from __future__ import annotations

from pathlib import Path

from mgsd.train.pretrain import PretrainConfig, pretrain


def pretrain_base(cfg: PretrainConfig, out: str | Path, *, gates: bool = True) -> Path:
    """Run (or resume) the pretraining, then (``gates``) the gates and the model card; ``out/base``."""
    base = pretrain(cfg, out)
    if gates:
        from mgsd.eval.gates import evaluate_gates
        from mgsd.pipeline.base_card import write_model_card

        result = evaluate_gates(
            base,
            Path(out) / "gates",
            per_task=cfg.gate_per_task,
            max_new_tokens=cfg.gate_max_new_tokens,
            seed=cfg.data.seed + 1,
            progress=cfg.progress,
        )
        write_model_card(base, cfg, result, Path(out))
    return base
