"""The tokenizer's domain vocabulary, now collected from the registered tasks' hints, is the one the
shipped tiny base was built with: the same tokens in the same order (so ``mgsd pretrain`` builds the
same tokenizer as before the tasks declared their own hints)."""

from __future__ import annotations

import json
from pathlib import Path

import mgsd.models
from mgsd.models.tokenizer import SPECIAL_TOKENS, domain_added_tokens, domain_words

# The literals tokenizer.py held before the hints moved to the tasks.
ADDED_BEFORE = (
    *(f"({r},{c})" for r in range(10) for c in range(10)),
    "<answer>",
    "</answer>",
    "PICK",
    "DROP",
    "<think>",
    "</think>",
    *(f"{n}x{n}" for n in range(1, 10)),
    *"·╵╶╷╴│─└┌┐┘├┤┬┴┼",
)
_WORDS_TEXT = """
U D L R PICK DROP pick drop up down left right S F H G A P T none yes no
row column grid map size start goal target hole holes wall walls agent printer table player cell cells
open blocked legal image answer plan action actions move reference text context task
system user assistant
"""
WORDS_BEFORE = tuple(_WORDS_TEXT.split())
SHIPPED = Path(mgsd.models.__file__).parent / "pretrained" / "tiny-base" / "tokenizer.json"


def test_collected_vocabulary_is_the_one_before() -> None:
    assert domain_added_tokens() == ADDED_BEFORE
    assert domain_words() == WORDS_BEFORE


def test_shipped_tokenizer_has_the_collected_added_tokens_in_order() -> None:
    shipped = json.loads(SHIPPED.read_text())
    added = [t["content"] for t in shipped["added_tokens"] if t["content"] not in SPECIAL_TOKENS]
    domain = domain_added_tokens()
    expected = [*domain, *(" " + t for t in domain)]
    assert sorted(added) == sorted(expected)
    # Pieces BPE had not learnt were appended in the order they were added: the collected order.
    vocab = shipped["model"]["vocab"]
    appended = [t for t in expected if t not in vocab]
    ids = {t["content"]: t["id"] for t in shipped["added_tokens"]}
    assert [ids[t] for t in appended] == sorted(ids[t] for t in appended)


def test_built_tokenizer_is_unchanged() -> None:
    """The vocabulary built with no extra corpus, hashed before the hints moved to the tasks."""
    import hashlib

    from mgsd.models.tokenizer import build_tokenizer

    v = build_tokenizer(vocab_size=512).get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(v.items())).encode()).hexdigest()
    assert digest == VOCAB_512_SHA256


VOCAB_512_SHA256 = "64910b74d7999bb1298c76e29590659c633e5121d97d96e423e9fb882981f686"
