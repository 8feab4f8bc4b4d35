"""``mgsd model ...``: create the offline presets and inspect model directories."""

from __future__ import annotations

import argparse
from typing import Any

# Kept in sync with mgsd.models.tiny.PRESETS (a test checks); not imported to keep the CLI fast.
PRESET_NAMES = ("paper-4b", "small", "tiny")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``model init`` and ``model info`` on the top-level ``mgsd`` sub-parsers."""
    parser = subparsers.add_parser("model", help="create or inspect backbone models")
    sub = parser.add_subparsers(dest="model_command", required=True)

    init = sub.add_parser("init", help="build a random tiny Qwen3-VL model directory (offline)")
    init.add_argument("--preset", choices=PRESET_NAMES, default="tiny")
    init.add_argument("--out", required=True, help="output model directory")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--corpus", help="optional text file (one text per line) for the tokenizer")
    init.set_defaults(func=_init)

    info = sub.add_parser("info", help="print parameter counts and image token count of a model")
    info.add_argument("path", help="model directory or hub id")
    info.add_argument("--trust-remote-code", action="store_true")
    info.set_defaults(func=_info)
    return parser


def _init(args: argparse.Namespace) -> int:
    from mgsd.models.tiny import init_tiny

    corpus = None
    if args.corpus:
        with open(args.corpus, encoding="utf-8") as f:
            corpus = [line.rstrip("\n") for line in f if line.strip()]
    out = init_tiny(args.out, preset=args.preset, corpus=corpus, seed=args.seed)
    print(f"wrote {args.preset} preset to {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mgsd.models.backbone import Backbone

    bb = Backbone.load(args.path, trust_remote_code=args.trust_remote_code, device="cpu")
    total = bb.num_parameters()
    vision = sum(p.numel() for n, p in bb.model.named_parameters() if ".visual." in f".{n}." or "vision" in n)
    print(f"model type      {bb.model.config.model_type}")
    print(f"parameters      {total:,} (vision {vision:,}, language {total - vision:,})")
    rows = bb.model.get_input_embeddings().num_embeddings
    print(f"vocabulary      {len(bb.tokenizer):,} tokens (embedding rows {rows:,})")
    print(f"image tokens    {bb.image_token_count((256, 256))} per 256x256 image")
    print(f"end of turn     {bb.eos_token_ids}")
    return 0
