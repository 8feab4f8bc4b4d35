"""``mgsd eval ...`` and ``mgsd serve`` sub-commands (thin: the work is in the library modules)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


# Over 60 lines, kept whole: flat argparse declarations of the eval sub-commands, read top to bottom.
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ev = subparsers.add_parser("eval", help="evaluate plans or models")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    ep = esub.add_parser("plans", help="score a predictions file (or the oracle plans) against a dataset")
    ep.add_argument("--data", nargs="+", required=True)
    ep.add_argument("--predictions", help='JSONL lines {"id": ..., "response": ...}')
    ep.add_argument("--oracle", action="store_true", help="score the dataset's own optimal plans")
    ep.add_argument("--out", required=True)
    ep.set_defaults(func=_cmd_plans)

    em = esub.add_parser(
        "model",
        help="generate plans (or perception answers) with a model and score them",
        description="Evaluate a local model or an OpenAI-compatible endpoint; resumes from OUT/.cache.jsonl.",
    )
    _model_options(em)
    em.add_argument("--modality", choices=["image", "text"], default="image", help="input of the planner")
    em.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="with --temperature > 0: sampled runs with seeds SEED.. (mean + per seed)",
    )
    em.add_argument(
        "--perception", action="store_true", help="ask the perception questions instead of planning"
    )
    em.set_defaults(func=_cmd_model)

    eg = esub.add_parser(
        "gap",
        help="modality-gap attribution: image planning, text planning and perception per sample",
        description="Runs OUT/image, OUT/text and OUT/perception (each resumable) and writes OUT/gap.json.",
    )
    _model_options(eg)
    eg.set_defaults(func=_cmd_gap)

    eb = esub.add_parser(
        "benchmark",
        help="the paper's evaluation on the external test sets (VSP, VisualPlanning), one table",
        description="Imports the given sets (cached by content), evaluates at the paper's settings "
        "(temperature 0, one sample, 4096 new tokens locally / 10240 via an API) unless told otherwise, "
        "and writes OUT/benchmark.md and OUT/benchmark.json; resumable.",
    )
    eb.add_argument("--vsp", help="VSP FrozenLake maps folder (level3..8/{img,table,pure_text})")
    eb.add_argument("--visualplanning-maze", help="VisualPlanning Maze test_dataset.jsonl")
    eb.add_argument("--visualplanning-minibehaviour", help="VisualPlanning MiniBehaviour test_dataset.jsonl")
    eb.add_argument("--model", help="model directory or hub id (a local model unless --api-base is given)")
    eb.add_argument("--out", required=True)
    eb.add_argument("--limit", type=int, help="at most N samples per (task, level): the level mix is kept")
    eb.add_argument(
        "--rerender", action="store_true", help="FrozenLake: our renderer's image of the VSP maps"
    )
    eb.add_argument("--max-new-tokens", type=int, help="default: the paper's (4096 local, 10240 API)")
    eb.add_argument("--temperature", type=float, default=0.0)
    eb.add_argument("--top-p", type=float, default=1.0)
    eb.add_argument("--seed", type=int, default=0)
    eb.add_argument("--batch-size", type=int, default=8)
    eb.add_argument("--dtype", default="float32")
    eb.add_argument("--trust-remote-code", action="store_true")
    eb.add_argument("--cache-dir", help="where imports are cached (default ~/.cache/mgsd/imports)")
    eb.add_argument(
        "--seen",
        action="append",
        default=[],
        metavar="PATH",
        help="training states to check overlap with: a model dir, a state_hashes.txt or a dataset "
        "(a local --model's own state_hashes.txt is always used)",
    )
    eb.add_argument("--skip-bad", action="store_true", help="skip source rows that cannot be imported")
    eb.add_argument(
        "--gap",
        action="store_true",
        help="also plan from text and answer perception questions: attribute failures (3x the queries)",
    )
    api = eb.add_argument_group("OpenAI-compatible API backend")
    api.add_argument("--api-base")
    api.add_argument("--api-model")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY")
    api.add_argument("--concurrency", type=int, default=4)
    api.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    api.add_argument("--retries", type=int, default=3)
    eb.add_argument("--quiet", action="store_true", help="no progress bars")
    eb.set_defaults(func=_cmd_benchmark)

    sv = subparsers.add_parser("serve", help="serve a local model as an OpenAI-compatible endpoint")
    sv.add_argument("--model", required=True, help="model directory or hub id")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--served-model-name", help="the name clients use (default: the directory name)")
    sv.add_argument("--max-batch", type=int, default=8, help="requests batched into one generate call")
    sv.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted")
    sv.add_argument("--dtype", default="float32")
    sv.add_argument("--trust-remote-code", action="store_true")
    sv.add_argument("--verbose", action="store_true", help="log every request")
    sv.add_argument("--max-body", type=int, default=None, help="largest request body in bytes (413 above)")
    sv.add_argument("--max-prompt-tokens", type=int, default=None, help="text + image tokens per request")
    sv.add_argument("--max-image-pixels", type=int, default=None, help="width x height per image")
    sv.add_argument("--max-queue", type=int, default=None, help="requests waiting for the model (503 above)")
    sv.add_argument("--request-timeout", type=float, default=None, help="seconds to send a request (408)")
    sv.set_defaults(func=_cmd_serve)
    return ev


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory or hub id (a local model unless --api-base is given)")
    p.add_argument("--data", nargs="+", required=True, help="dataset directories or parquet files")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="at most N samples per (task, level), in dataset order")
    p.add_argument("--batch-size", type=int, default=8, help="queries per generate call / per cached batch")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="local model parameter dtype")
    p.add_argument("--trust-remote-code", action="store_true")
    api = p.add_argument_group("OpenAI-compatible API backend")
    api.add_argument("--api-base", help="e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, mgsd serve, ...)")
    api.add_argument("--api-model", help="served model name (default: --model)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    api.add_argument("--concurrency", type=int, default=4)
    api.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    api.add_argument("--retries", type=int, default=3)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _backend(args: argparse.Namespace) -> Any:
    from mgsd.backends.factory import open_backend

    return open_backend(
        args.model,
        api_base=args.api_base,
        api_model=args.api_model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        batch_size=args.batch_size,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )


def _common(args: argparse.Namespace) -> dict[str, Any]:
    from mgsd.backends.base import GenerationConfig
    from mgsd.eval.queries import model_label

    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
    gen = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    model = model_label(args.model) if not args.api_base else (args.api_model or args.model)
    return {
        "model": model,
        "gen": gen,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "progress": not args.quiet,
    }


def _report_failures(metrics: dict[str, Any], what: str = "") -> None:
    """Warn about failed requests (``what``: which run's, e.g. "image") and truncated responses."""
    n = metrics.get("request_failures", 0)
    if n:
        kind = f"{what} " if what else ""
        print(f"warning: {n} {kind}request(s) failed; they are scored as failures (rerun to retry them)")
    if metrics.get("truncated"):
        print(f"note: {metrics['truncated']} response(s) hit --max-new-tokens")


def _print_perception(m: dict[str, Any]) -> None:
    print(f"{'scope':<22}{'n':>6}{'all correct':>13}{'95% CI':>16}{'q. accuracy':>13}")
    for name, b in [*m["by_task_level"].items(), *m["by_task"].items(), ("all", m)]:
        lo, hi = b["all_correct_ci"]
        ci = f"[{100 * lo:.1f}, {100 * hi:.1f}]"
        acc = 100 * b["question_accuracy"]
        print(f"{name:<22}{b['n']:>6}{100 * b['all_correct']:>13.1f}{ci:>16}{acc:>13.1f}")


def _cmd_model(args: argparse.Namespace) -> int:
    from mgsd.eval.model import evaluate_model
    from mgsd.eval.perception import evaluate_perception
    from mgsd.scoring.aggregate import print_metrics

    common = _common(args)
    if args.perception:
        if args.modality != "image" or args.seeds != 1:
            raise ValueError(
                "--perception asks about the image: it takes neither --modality text nor --seeds"
            )
        backend = _backend(args)
        metrics = evaluate_perception(backend, args.data, args.out, **common)
        _print_perception(metrics)
        _report_failures(metrics)
        print(f"wrote {Path(args.out) / 'perception_metrics.json'} and samples.jsonl")
        return 0
    if args.seeds > 1 and args.temperature <= 0:
        raise ValueError("--seeds > 1 needs sampling (--temperature > 0): greedy runs are identical")
    backend = _backend(args)
    metrics = evaluate_model(backend, args.data, args.out, modality=args.modality, seeds=args.seeds, **common)
    print_metrics(metrics)
    if args.seeds > 1:
        for seed, s in metrics["per_seed"].items():
            print(
                f"seed {seed}: success {100 * s['success']:.1f}  macro success {100 * s['macro_success']:.1f}"
            )
    _report_failures(metrics)
    print(f"wrote {Path(args.out) / 'metrics.json'} and samples.jsonl")
    return 0


def _cmd_gap(args: argparse.Namespace) -> int:
    from mgsd.eval.gap import evaluate_gap, format_gap

    gap = evaluate_gap(_backend(args), args.data, args.out, **_common(args))
    print(format_gap(gap))
    for run, n in gap["request_failures"].items():
        _report_failures({"request_failures": n}, run)
    print(f"wrote {Path(args.out) / 'gap.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mgsd.backends.serve import Limits, serve_model

    given = {
        k: getattr(args, k)
        for k in ("max_body", "max_prompt_tokens", "max_image_pixels", "max_queue", "request_timeout")
        if getattr(args, k) is not None
    }
    limits = Limits(**given)  # ValueError (one line, exit 2) for a non-positive limit
    try:
        serve_model(
            args.model,
            host=args.host,
            port=args.port,
            served_name=args.served_model_name,
            max_batch=args.max_batch,
            max_tokens_limit=args.max_tokens_limit,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            verbose=args.verbose,
            limits=limits,
        )
    except KeyboardInterrupt:
        print("stopped")
    return 0


def _cmd_plans(args: argparse.Namespace) -> int:
    from mgsd.eval.plans import eval_plans
    from mgsd.scoring.aggregate import print_metrics

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


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from mgsd.backends.base import GenerationConfig
    from mgsd.eval.benchmark import PAPER_MAX_TOKENS_API, PAPER_MAX_TOKENS_LOCAL, format_table, run_benchmark
    from mgsd.eval.queries import model_label

    sources = {
        name: path
        for name, path in (
            ("vsp", args.vsp),
            ("visualplanning-maze", args.visualplanning_maze),
            ("visualplanning-minibehaviour", args.visualplanning_minibehaviour),
        )
        if path
    }
    if not sources:
        raise ValueError("give at least one of --vsp, --visualplanning-maze, --visualplanning-minibehaviour")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
    for name, path in sources.items():  # before a model is loaded: a typo fails in a second
        if not Path(path).exists():
            raise ValueError(f"--{name}: {path} not found")
    api = bool(args.api_base)
    budget = args.max_new_tokens or (PAPER_MAX_TOKENS_API if api else PAPER_MAX_TOKENS_LOCAL)
    gen = GenerationConfig(budget, args.temperature, args.top_p, args.seed)
    backend = _backend(args)
    result = run_benchmark(
        backend,
        sources,
        args.out,
        model=(args.api_model or args.model) if api else model_label(args.model),
        api=api,
        gen=gen,
        limit=args.limit,
        rerender=args.rerender,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        seen=args.seen,
        skip_bad=args.skip_bad,
        gap=args.gap,
        progress=not args.quiet,
    )
    print(format_table(result), end="")
    _report_failures(result)
    print(f"wrote {Path(args.out) / 'benchmark.md'} and benchmark.json")
    return 0
