"""``mgsd eval ...`` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ev = subparsers.add_parser("eval", help="evaluate plans or models")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    ep = esub.add_parser("plans", help="score a predictions file (or the oracle plans) against a dataset")
    ep.add_argument("--data", nargs="+", required=True)
    ep.add_argument("--predictions", help='JSONL lines {"id": ..., "response": ...}')
    ep.add_argument("--oracle", action="store_true", help="score the dataset's own optimal plans")
    ep.add_argument("--out", required=True)
    ep.set_defaults(func=_cmd_plans)
    return ev


def _cmd_plans(args: argparse.Namespace) -> int:
    from mgsd.cli import print_metrics
    from mgsd.eval.plans import eval_plans

    if (args.predictions is None) == (not args.oracle):
        raise ValueError("give exactly one of --predictions FILE or --oracle")
    metrics = eval_plans(args.data, args.out, args.predictions)
    print_metrics(metrics)
    if metrics["missing_predictions"]:
        print(
            f"note: {metrics['missing_predictions']} sample(s) had no prediction and count as parse failures"
        )
    print(f"wrote {Path(args.out) / 'metrics.json'} and samples.jsonl")
    return 0
