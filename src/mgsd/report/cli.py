"""``mgsd report RUN_DIR``."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run directory",
        description="Finds every metrics.json, perception_metrics.json, gap.json, log.jsonl and summary.json "
        "under RUN_DIR and writes one HTML file (inline CSS, images and charts; no network needed).",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="output file (default: RUN_DIR/report.html)")
    p.add_argument("--cases-per-task", type=int, default=4, help="gallery samples per task and run")
    p.set_defaults(func=_cmd_report)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from mgsd.report.build import build_report

    path = build_report(args.run_dir, args.out, cases_per_task=args.cases_per_task)
    print(f"wrote {path}")
    return 0
