"""``mgsd train OBJECTIVE``: stage 1 (perception SFT), baselines (plan / symbolic SFT), stage 2 (opsd)."""

from __future__ import annotations

import argparse
import json
from typing import Any

OBJECTIVES = ("perception", "plan", "symbolic", "opsd", "pretrain")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model: perception (stage 1), plan / symbolic (SFT baselines), opsd (stage 2)",
        description="Settings come from --config (YAML with TrainConfig keys), then the shortcuts, then "
        "--set key=value overrides (e.g. --set optim.lr=1e-5 --set opsd.loss=topk).",
    )
    p.add_argument("objective", choices=OBJECTIVES)
    p.add_argument("--config", help="YAML file of TrainConfig keys")
    p.add_argument(
        "--section",
        help="use this top-level section of --config (a recipe holding several stages, e.g. "
        "configs/paper-qwen3vl-4b.yaml has stage1 and stage2)",
    )
    p.add_argument("--model", help="model directory or hub id to start from")
    p.add_argument("--train-data", nargs="+", help="training dataset directories")
    p.add_argument("--val-data", nargs="+", help="validation dataset directories")
    p.add_argument("--out", help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    from mgsd.config import ConfigError, load_config, load_section
    from mgsd.train.config import TrainConfig
    from mgsd.train.trainer import train

    # Flags are taken as they are typed: a path is a string ("0123", "yes", "runs #1"), never YAML.
    values: dict[str, object] = {"objective": args.objective}
    for key, value in (
        ("model", args.model),
        ("out", args.out),
        ("train_data", args.train_data),
        ("val_data", args.val_data),
    ):
        if value:
            values[key] = value
    if args.section is not None:
        if not args.config:
            raise ConfigError("--section needs --config")
        # A multi-stage recipe names each stage's objective: running one stage as another is a slip.
        # (load_section raises for a missing section, naming the ones the file has.)
        named = load_section(args.config, args.section).get("objective")
        if named is not None and named != args.objective:
            raise ConfigError(f"section {args.section!r} is a {named!r} stage, not {args.objective!r}")
    cfg = load_config(TrainConfig, args.config, args.overrides, section=args.section, values=values)
    result = train(cfg, resume=args.resume)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(shown))
    return 0
