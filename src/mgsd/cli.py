"""The ``mgsd`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mgsd import __version__

# Modules that add their own sub-commands with ``add_parser(subparsers)``; optional ones are skipped
# when not importable so a partial install still serves the rest.
_PLUGINS = ("mgsd.eval.cli", "mgsd.models.cli", "mgsd.train.cli", "mgsd.report.cli")


def _cmd_generate(args: argparse.Namespace) -> int:
    from mgsd.data.generate import MAX_PER_LEVEL, generate_dataset
    from mgsd.tasks import get_task, parse_levels

    task = get_task(args.task)
    levels = parse_levels(task, args.levels)
    if not 1 <= args.per_level <= MAX_PER_LEVEL:
        raise ValueError(f"--per-level must be between 1 and {MAX_PER_LEVEL:,}, got {args.per_level:,}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    path = generate_dataset(
        task,
        levels,
        args.per_level,
        split=args.split,
        seed=args.seed,
        out=args.out,
        exclude_dirs=args.exclude or (),
        workers=args.workers,
    )
    print(f"wrote {args.per_level * len(levels)} {task.name} samples ({args.split}) to {path}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from mgsd.data.importers import import_visualplanning, import_vsp, manifest_path

    if args.source == "vsp":
        path = import_vsp(
            args.path, args.out, skip_bad=args.skip_bad, image_size=None if args.keep_size else 256
        )
    else:
        if not args.task:
            raise ValueError("import visualplanning needs --task")
        path = import_visualplanning(args.path, args.task, args.out, skip_bad=args.skip_bad)
    log = json.loads(manifest_path(path).read_text())
    print(f"wrote {log['rows']} samples to {path}")
    if log["skipped"]:
        first = log["skipped"][0]["error"]
        print(f"skipped {len(log['skipped'])} bad row(s), listed in {manifest_path(path)}; first: {first}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mgsd.data.exporters import export_easyr1, export_llamafactory, export_verl

    if args.format == "llamafactory":
        path = export_llamafactory(args.data, args.out, name=args.name)
    else:
        export = export_easyr1 if args.format == "easyr1" else export_verl
        path = export(args.data, args.out, with_plan=not args.no_plan)
    print(f"wrote {path}; trainer settings (reward file, pixel bounds) in {path.parent / 'RECIPE.md'}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from mgsd.config import load_config
    from mgsd.pipeline.pretrained_base import pretrain_base
    from mgsd.train.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    base = pretrain_base(cfg, args.out, gates=not args.no_gates)
    print(f"wrote {base}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mgsd.config import load_config
    from mgsd.pipeline import PipelineConfig, run_pipeline

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    external = {}
    for item in args.external:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--external {item!r}: use NAME=PATH, e.g. vsp=DIR")
        external[name] = path
    summary = run_pipeline(cfg, args.out, external, redo=args.redo)
    h = summary["headline"]
    head = f"{'model':<20}{'modality':<14}{'dataset':<26}{'n':>6}"
    print(f"\n{head}{'success':>9}{'optimal':>9}{'progress':>9}  95% CI")
    for r in summary["rows"]:
        m = r["macro"]
        lo, hi = m["ci"]["success"]
        print(
            f"{r['model']:<20}{r['modality']:<14}{r['dataset']:<26}{r['n']:>6}{100 * m['success']:>9.1f}"
            f"{100 * m['optimal']:>9.1f}{100 * m['progress']:>9.1f}  [{100 * lo:.1f}, {100 * hi:.1f}]"
        )
    paired = {"MGSD - cold start": h["mgsd_minus_coldstart_success"]}
    paired |= {f"{name} - MGSD": v for name, v in h.get("baselines_minus_mgsd_success", {}).items()}
    print()
    for label, d in paired.items():
        lo, hi = d["ci"]
        ci = f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
        print(f"{label} (macro success): {100 * d['diff']:+.1f} points, paired 95% CI {ci}")
    if h["gap_closed_fraction"] is not None:
        print(f"fraction of the base's visual-to-symbolic gap closed by MGSD: {h['gap_closed_fraction']:.2f}")
    print(f"wrote {Path(args.out) / 'summary.json'} and {Path(args.out) / 'report.html'}")
    return 0


# Over 60 lines, kept whole: flat argparse declarations of the top-level sub-commands, read top to
# bottom (eval's live in eval/cli.py).
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgsd", description=__doc__)
    p.add_argument("--version", action="version", version=f"mgsd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, import and export datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="generate a seeded, deduplicated dataset for one task")
    g.add_argument("--task", required=True)
    g.add_argument("--levels", default=None, help="e.g. 3-8 or 3,5 (default: all levels of the task)")
    g.add_argument("--per-level", type=int, required=True)
    g.add_argument("--split", default="train")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument(
        "--exclude", nargs="*", default=[], help="datasets whose states must not appear (test sets)"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="render processes (default: the cores, at most 4); the output does not depend on it",
    )
    g.set_defaults(func=_cmd_generate)
    imp = dsub.add_parser("import", help="import an external test set")
    imp.add_argument("source", choices=["vsp", "visualplanning"])
    imp.add_argument("path", help="VSP maps folder, or VisualPlanning test .jsonl")
    imp.add_argument("--task", help="task of a VisualPlanning file")
    imp.add_argument("--out", required=True)
    imp.add_argument(
        "--skip-bad", action="store_true", help="skip rows that cannot be imported (counted and listed)"
    )
    imp.add_argument(
        "--keep-size",
        action="store_true",
        help="vsp: keep the PNGs as they are (default: 256x256, as the paper)",
    )
    imp.set_defaults(func=_cmd_import)
    exp = dsub.add_parser("export", help="export to LLaMA-Factory, EasyR1 or verl formats")
    exp.add_argument("format", choices=["llamafactory", "easyr1", "verl"])
    exp.add_argument("--data", nargs="+", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument(
        "--no-plan", action="store_true", help="easyr1/verl: teacher context without the reference plan"
    )
    exp.add_argument(
        "--name", help="llamafactory: the dataset_info.json entry (default: mgsd_perception_sft_<split>)"
    )
    exp.set_defaults(func=_cmd_export)

    run = sub.add_parser("run", help="the whole MGSD experiment: data, base, stage 1, stage 2, eval, report")
    run.add_argument("--config", default=None, help="pipeline YAML (e.g. configs/default.yaml)")
    run.add_argument("--out", default="runs/default")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="extra test set: vsp=DIR or visualplanning-<task>=FILE",
    )
    run.add_argument(
        "--redo",
        action="store_true",
        help="OUT was made with other settings: re-run the stages they affect and everything downstream "
        "(without it such a rerun is refused, naming the changed settings)",
    )
    run.set_defaults(func=_cmd_run)
    pre = sub.add_parser(
        "pretrain",
        help="build the tiny pretrained base that mgsd run starts from (scenes + symbolic planning)",
        description="Resumable: rerun the same command after a crash. Writes OUT/base (weights, "
        "tokenizer, state hashes, gates, model card).",
    )
    pre.add_argument("--config", help="YAML of PretrainConfig keys (e.g. configs/pretrain-tiny.yaml)")
    pre.add_argument("--out", default="runs/pretrain")
    pre.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pre.add_argument("--no-gates", action="store_true", help="stop after training (no gate evaluation)")
    pre.set_defaults(func=_cmd_pretrain)

    for name in _PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):  # a broken plugin is a bug, not absent
                raise
            continue
        mod.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before the ~150 arguments of every sub-command are built
        print(f"mgsd {__version__}")
        return 0
    args = build_parser().parse_args(argv)
    # Before torch is imported (sub-commands import it lazily): torch's OpenMP threads otherwise
    # spin-wait, and beside one other busy process on 2 cores a training step ran 3.1x slower
    # instead of 1.9x (benchmarks/bench_threads.py). Alone the two policies time the same.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mgsd: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"mgsd: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
