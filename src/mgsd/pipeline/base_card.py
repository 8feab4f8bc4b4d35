"""The model card of a pretrained tiny base: what it saw, how long it trained, its gates and probes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgsd.data.generate import HASHES_FILE, read_state_hashes
from mgsd.files import read_jsonl
from mgsd.tasks import get_task

if TYPE_CHECKING:
    from mgsd.train.pretrain import PretrainConfig


# The shipped base's rounds, each continuing the previous one's output (each config's ``init``).
REBUILD = (
    "mgsd pretrain --config configs/pretrain-tiny.yaml --out runs/pretrain   # resumable",
    "mgsd pretrain --config configs/pretrain-tiny-round2.yaml --out runs/pretrain2",
    "mgsd pretrain --config configs/pretrain-tiny-round3.yaml --out runs/pretrain3",
    "mgsd pretrain --config configs/pretrain-tiny-round4.yaml --out runs/pretrain4",
)


def _table(intro: list[str], header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table after a blank line and its introduction."""
    out = ["", *intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# Over 60 lines, kept whole: the card is one document written in its reading order.
def write_model_card(base: Path, cfg: PretrainConfig, gates: dict[str, Any], root: Path) -> None:
    """README.md beside the weights: what the base saw, how long it trained, its gates, how to rebuild."""
    from mgsd.eval.gates import GATES, format_gates  # numpy and the scorers: only when a card is written

    log = read_jsonl(root / "train" / "log.jsonl")
    steps = [r for r in log if "step_time" in r]
    seconds = sum(r["step_time"] for r in steps)
    final_loss = steps[-1]["loss"] if steps else float("nan")
    n_hashes = len(read_state_hashes(base))
    passed = gates["passed"]
    d = cfg.data
    lines = [
        "# mgsd tiny base (Qwen3-VL architecture, pretrained offline)",
        "",
        "The starting point `mgsd run` uses by default: a tiny Qwen3-VL that, like the paper's",
        "Qwen3-VL-Instruct, perceives generic images and plans from a symbolic text state, but was never",
        "shown a task render together with its state or plan. Stage 1 and stage 2 must add that.",
        "",
        "## Training data",
        f"- {d.scenes:,} synthetic grid scenes (`mgsd.data.scenes`: sizes 3-8, random palettes, shapes,",
        "  colour fills, wall bands) described as `key: value` lines with 0-based (row,col) cells;",
        "- symbolic planning from text: "
        + ", ".join(
            f"{get_task(n).title} {d.levels.get(n, 'all')} ({d.states_per_level(n)}/level)" for n in d.tasks
        )
        + "; prompts: the text student's (1/2), the teacher's with the "
        "plan hint (1/4) and without (1/4); target: the reasoned answer (facts, path, `<answer>`);",
        (
            "- every source (scenes and each task) gets an equal share of the updates."
            if cfg.scene_weight == 1
            else f"- scenes get {cfg.scene_weight} shares of the updates against 1 for each task."
        ),
        *(
            [
                f"- {100 * cfg.scene_questions:.0f}% of scene rows are one short question (where is X, what "
                "is in cell C, which cells are Y, size) instead of the whole description."
            ]
            if cfg.scene_questions
            else []
        ),
        f"- `{HASHES_FILE}`: the {n_hashes:,} state hashes (sha256 of the canonical state JSON, 16 hex",
        "  digits) of every task state seen; `mgsd run` excludes them from its splits and reports the",
        "  overlap of external test sets with them.",
        "",
        "## Training",
        f"- full fine-tune (ViT, merger, LM) from {cfg.init if cfg.init else 'random init'}: "
        f"{len(steps)} steps x batch {cfg.batch_size}, AdamW lr {cfg.lr}, warmup {cfg.warmup_ratio}, "
        "cosine, "
        f"compute dtype {cfg.compute_dtype} (fp32 master weights), seed {cfg.seed};",
        f"- {seconds / 60:.0f} min of steps on 2 CPU cores; final training loss {final_loss:.3f} nats/token.",
        "",
        f"## Gates (held-out states, {gates['teacher']['n']} per condition, greedy)",
        "",
        *format_gates(gates),
        "",
        f"- copy (teacher context with the plan) >= {100 * GATES['copy_per_task']:.0f}% on every task: "
        f"{'pass' if passed['copy_per_task'] else 'FAIL'}",
        f"- text macro >= {100 * GATES['text_macro']:.0f}%: {'pass' if passed['text_macro'] else 'FAIL'}",
        f"- image macro <= {GATES['image_over_text']} x text macro: "
        f"{'pass' if passed['image_over_text'] else 'FAIL'}",
        "",
        "Reference answer log-prob per token, teacher context with / without the plan:",
        "",
        "| task | with plan | without plan | gain |",
        "|---|---|---|---|",
    ]
    for task, v in (gates["teacher"].get("reference_logprob") or {}).items():
        lines.append(f"| {task} | {v['with_plan']:.3f} | {v['without_plan']:.3f} | {v['plan_gain']:+.3f} |")
    scenes = gates.get("scene_perception") or {}
    if scenes:
        lines += _table(
            [
                "Scene perception (held-out synthetic scenes, greedy): share of reference lines reproduced",
                "exactly, by kind of line:",
            ],
            ["line", "accuracy", "lines"],
            [[k, f"{100 * v['accuracy']:.1f}", v["lines"]] for k, v in scenes.items()],
        )
    questions = gates.get("scene_questions") or {}
    if questions:
        lines += _table(
            ["Single questions about held-out synthetic scenes (greedy, exact answer):"],
            ["question", "accuracy [95% CI]", "n", "chance"],
            [
                [
                    k,
                    f"{100 * v['accuracy']:.1f} [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}]",
                    v["n"],
                    f"{100 * v['chance']:.1f}" if "chance" in v else "",
                ]
                for k, v in questions.items()
            ],
        )
    attention = gates.get("object_attention")
    if attention:
        best = attention["best_head"]
        keys, digits = ("image_mass", "entropy", "on_object", "uniform"), (2, 2, 3, 3)
        lines += _table(
            [
                f"Where the LM looks, asked where one object is ({attention['n']} held-out scenes): the",
                "last prompt token's attention over the image, per layer (mean over heads), and the share",
                "of it on the object's cell against uniform attention:",
            ],
            ["layer", "image mass", "entropy (1 = uniform)", "on object", "uniform"],
            [
                [
                    i,
                    *(
                        f"{sum(h[k] for h in heads) / len(heads):.{d}f}"
                        for k, d in zip(keys, digits, strict=True)
                    ),
                ]
                for i, heads in enumerate(attention["layers"])
            ],
        )
        lines += [
            "",
            f"Most object-focused head: layer {best['layer']} head {best['head']}, "
            f"{best['on_object_over_uniform']:.2f}x uniform.",
        ]
    if cfg.init:
        what = "with its vision tower and merger started afresh" if cfg.reset_vision else "as it was"
        lines += [
            "",
            f"This is a later round: it continued an earlier base {what}"
            + (
                f", with the dense per-token grounding loss (weight {cfg.dense_weight})"
                if cfg.dense_weight
                else ""
            )
            + f", vision lr x{cfg.vision_lr_scale}.",
        ]
    lines += [
        "",
        "## Rebuild",
        "",
        "```bash",
        *(REBUILD if cfg.init else REBUILD[:1]),
        "```",
        "",
        "License: MIT, as the project. Made by mgsd's own code; no external weights or data.",
    ]
    (base / "README.md").write_text("\n".join(lines) + "\n")
