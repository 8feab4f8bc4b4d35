"""A small byte-level BPE tokenizer built on the fly, with the planning domain as whole tokens.

Coordinates such as ``(3,1)``, ``<answer>`` tags and ``NxN`` sizes are split by the byte-level
pre-tokenizer (digits and punctuation become separate pieces), so BPE alone could never merge them:
they are added tokens. Words (``PICK``, ``up``, grid words) are learnt by BPE instead: the built-in
corpus repeats them, which keeps them whole without the side effects of added tokens inside
longer words. The tasks' own pieces (action names, letters, nouns, glyphs) are their vocabulary hints
(``Task.vocabulary``), collected from the task registry; callers pass their own texts as ``corpus``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mgsd.models.chat import CHAT_TEMPLATE

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"  # end of turn: generation stops here
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# Qwen-VL special tokens, in Qwen's order so the ids have the usual relative layout.
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN)


def _coordinates() -> list[str]:
    return [f"({r},{c})" for r in range(10) for c in range(10)]


# Added tokens: pieces the byte-level pre-tokenizer would otherwise split. The tasks' own pieces (action
# names such as PICK, the maze's box-drawing glyphs) come from their vocabulary hints, in their slots.
_ANSWER_TAGS = ("<answer>", "</answer>")
_THINK_TAGS = ("<think>", "</think>")
# Words BPE must learn as whole tokens (lower-case and Capitalised, with and without a leading space),
# around the tasks' letters and nouns.
_MOVES = ("U", "D", "L", "R")
_MOVE_WORDS = ("up", "down", "left", "right")
_WORDS_BEFORE_NOUNS = ("none", "yes", "no", "row", "column", "grid", "map", "size", "start", "goal", "target")
_WORDS_AFTER_NOUNS = (
    *("player", "cell", "cells", "open", "blocked", "legal", "image", "answer", "plan", "action", "actions"),
    *("move", "reference", "text", "context", "task", "system", "user", "assistant"),
)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _hints() -> list[tuple[tuple[str, ...], Any]]:
    """(long action names, vocabulary hints) of every registered task, in registry order."""
    from mgsd.tasks import get_task, task_names

    tasks = [get_task(name) for name in task_names()]
    return [(tuple(a for a in t.actions if len(a) > 1), t.vocabulary) for t in tasks]


def domain_added_tokens() -> tuple[str, ...]:
    """Coordinates, answer tags, the tasks' action names, think tags, NxN sizes, the tasks' glyphs."""
    hints = _hints()
    return _unique(
        [
            *_coordinates(),
            *_ANSWER_TAGS,
            *(a for actions, _ in hints for a in actions),
            *_THINK_TAGS,
            *(f"{n}x{n}" for n in range(1, 10)),
            *(g for _, v in hints for g in v.glyphs),  # grids drawn as text, one token per glyph
        ]
    )


def domain_words() -> tuple[str, ...]:
    """The moves, the tasks' action names (upper and lower case), the move words, the tasks' letters,
    the shared words and the tasks' nouns between them."""
    hints = _hints()
    actions = [a for acts, _ in hints for a in acts]
    return _unique(
        [
            *_MOVES,
            *actions,
            *(a.lower() for a in actions),
            *_MOVE_WORDS,
            *(x for _, v in hints for x in v.letters),
            *_WORDS_BEFORE_NOUNS,
            *(w for _, v in hints for w in v.words),
            *_WORDS_AFTER_NOUNS,
        ]
    )


BUILTIN_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant. Read the question carefully and answer it.",
    "The image shows a square grid. Rows are counted from the top and columns from the left.",
    "Describe what you see, then give a short plan and end with exactly one answer block.",
    "The agent starts in one cell and must reach the goal without stepping into a hole.",
    "Walls block movement between neighbouring cells; open sides allow a move.",
    "Keep the reasoning brief. Use 0-based (row, column) coordinates.",
    "First restate the perception, then write one sentence with the route and a verification.",
    "The quick brown fox jumps over the lazy dog. A small model learns from short examples.",
    "There is a table, a printer and an agent in the room. Pick up the printer, drop it by the table.",
    "Each step moves one cell up, down, left or right. Moving outside the grid is not allowed.",
    "The map has several rows of tiles: start, frozen ice, holes and the goal.",
    "Answer the following questions about the picture. What is the size of the grid?",
    "Where is the player? Where is the goal? Which cells are holes? List them all.",
    "Which directions are open from this cell? Write none if every side is blocked.",
    "The plan is correct because it avoids every hole and ends on the goal cell.",
    "This is a reference text context. Solve the task and do not mention the context.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 32 64 100.",
    "In summary, the shortest path has the fewest moves, and ties are broken in a fixed order.",
    "First paragraph.\n\n\nSecond paragraph, after blank lines.\n\n",
)


def _domain_corpus(domain: Sequence[str]) -> Iterator[str]:
    # Repeating the domain words makes BPE merge them into single tokens early.
    words = [*domain, *(w.capitalize() for w in domain if w.islower())]
    for _ in range(40):
        yield " ".join(words)
        yield ",".join(words)
        yield "\n".join(words)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` + the built-in corpus, with domain tokens kept whole.

    The result is left-padding, EOS ``<|im_end|>``, pad ``<|endoftext|>``, with a Qwen-style chat
    template, so it drops into a Qwen-VL processor unchanged.
    """
    tok = Tokenizer(models.BPE())
    # Plan letters stay one token each: BPE would otherwise learn arbitrary chunks such as "DDR" + "UL",
    # and the model would have to plan in those chunks. (Capitals followed by lower case, as in
    # "Route", are words and are left alone.)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("[UDLR](?![a-z])"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = itertools.chain(
        BUILTIN_CORPUS * 4, _domain_corpus(domain_words()), corpus if corpus is not None else ()
    )
    tok.train_from_iterator(texts, trainer)
    # A leading-space variant lets " (3,1)" be one token instead of "Ġ" + "(3,1)".
    domain = domain_added_tokens()
    added = [AddedToken(t, normalized=False) for t in domain]
    added += [AddedToken(" " + t, normalized=False) for t in domain]
    tok.add_tokens(added)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
