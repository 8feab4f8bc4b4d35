"""The action vocabulary and the one plan parser every scorer, reward and evaluator uses.

Rules (fixing the reference's parsers, see TASKS.md §7.3-7.4):
- only the LAST ``<answer>...</answer>`` block counts; no block means a parse failure (digits in
  coordinates elsewhere in the response can never become actions);
- inside it: letters (``UUR`` or ``U,U,R``), words (``up``, ``left``...), arrows, separated by commas,
  spaces, semicolons, arrows or dashes; ``pick up`` / ``put down`` (with space, ``_`` or ``-``) are
  PICK / DROP; trailing punctuation and quotes are ignored;
- digits are not actions: a digit, or any other word that is not an action or a filler word, makes the
  answer unparseable, which is scored as a parse failure rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MOVE_ACTIONS: tuple[str, ...] = ("U", "D", "L", "R")
ACTIONS: tuple[str, ...] = (*MOVE_ACTIONS, "PICK", "DROP")

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_PHRASES = [
    (re.compile(r"\bpick(?:[\s_-]*it)?[\s_-]*up\b", re.IGNORECASE), " PICK "),
    (re.compile(r"\bput(?:[\s_-]*it)?[\s_-]*down\b", re.IGNORECASE), " DROP "),
]
_TOKEN = re.compile(r"[A-Za-z_]+|\d+|[←↑→↓⬅⬆➡⬇]")
_ALIASES: dict[str, str] = {
    **dict.fromkeys(["up", "upward", "upwards", "north", "↑", "⬆"], "U"),
    **dict.fromkeys(["down", "downward", "downwards", "south", "↓", "⬇"], "D"),
    **dict.fromkeys(["left", "leftward", "leftwards", "west", "←", "⬅"], "L"),
    **dict.fromkeys(["right", "rightward", "rightwards", "east", "→", "➡"], "R"),
    **dict.fromkeys(["pick", "pickup", "grab", "take"], "PICK"),
    **dict.fromkeys(["drop", "putdown", "place", "release"], "DROP"),
}
# Words that may sit between actions without meaning anything ("move up, then right").
_FILLER = frozenset(
    [
        "then",
        "and",
        "move",
        "moves",
        "go",
        "step",
        "steps",
        "action",
        "actions",
        "plan",
        "final",
        "answer",
        "is",
        "the",
        "to",
        "finally",
        "next",
        "first",
        "a",
    ]
)


@dataclass(frozen=True)
class ParsedPlan:
    """A parsed answer: ``actions`` is None exactly when parsing failed, and ``error`` says why."""

    actions: tuple[str, ...] | None
    error: str | None = None
    answer_text: str | None = None  # the raw content of the last answer block

    @property
    def ok(self) -> bool:
        return self.actions is not None


def extract_answer(response: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block, or None."""
    blocks = _ANSWER.findall(response or "")
    return blocks[-1] if blocks else None


def parse_actions(text: str) -> tuple[tuple[str, ...] | None, str | None]:
    """Parse the inside of an answer block into actions; (None, reason) when it cannot."""
    for pattern, repl in _PHRASES:
        text = pattern.sub(repl, text)
    actions: list[str] = []
    for tok in _TOKEN.findall(text):
        low = tok.lower().replace("_", "")
        if low in _ALIASES:
            actions.append(_ALIASES[low])
        elif set(tok.upper()) <= set("UDLR"):
            actions.extend(tok.upper())  # a compact path such as "UURD" (or "uurd")
        elif low in _FILLER:
            continue
        else:
            return None, f"unrecognised token {tok!r}"
    if not actions:
        return None, "empty answer"
    return tuple(actions), None


def parse_plan(response: str) -> ParsedPlan:
    """Parse a model response: the plan in its last answer block, or a parse failure with a reason."""
    answer = extract_answer(response)
    if answer is None:
        return ParsedPlan(None, "no <answer> block")
    actions, error = parse_actions(answer)
    return ParsedPlan(actions, error, answer)
