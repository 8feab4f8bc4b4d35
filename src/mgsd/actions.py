"""The action vocabulary and the one plan parser every scorer, reward and evaluator uses.

Rules (fixing the reference's parsers, see TASKS.md §7.3-7.4):
- only the LAST ``<answer>...</answer>`` block counts (the text between the last opening tag that is
  closed and its closing tag); no block means a parse failure (digits in coordinates elsewhere in the
  response can never become actions);
- inside it: letters (``UUR`` or ``U,U,R``), words (``up``, ``left``...), arrows, separated by commas,
  spaces, semicolons, arrows or dashes; ``pick up`` / ``put down`` (with space, ``_`` or ``-``) are
  PICK / DROP; trailing punctuation and quotes are ignored;
- digits are not actions: a digit, or any other word that is not an action or a filler word, makes the
  answer unparseable, which is scored as a parse failure rather than guessed at; so does a letter or
  digit outside ASCII (full-width ``Ｕ``, Cyrillic look-alikes, combining accents), which would
  otherwise be skipped as punctuation and change the plan.

Model outputs are untrusted, so parsing is linear in the length of the response: one pass of a
regex without backtracking over the response for the tags, one over the block for its tokens, and a
constant amount of work per token. ``ScanWork`` counts the characters each pass examines; a test
holds the count under a constant times the input length for adversarial inputs of several MB.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MOVE_ACTIONS: tuple[str, ...] = ("U", "D", "L", "R")
ACTIONS: tuple[str, ...] = (*MOVE_ACTIONS, "PICK", "DROP")

# Literal alternatives only: at most 9 characters are compared per start position.
_TAG = re.compile(r"<(/?)answer>", re.IGNORECASE)
# Each alternative is a run of one character class (or one character), so a match never backtracks.
# The last one yields every other non-ASCII character alone, to be told apart from punctuation.
_TOKEN = re.compile(r"[A-Za-z_]+|\d+|[←↑→↓⬅⬆➡⬇]|[^\x00-\x7f]")
_ARROWS = frozenset("←↑→↓⬅⬆➡⬇")
_VARIATION_SELECTORS = frozenset("\ufe0e\ufe0f")  # "⬆️" is an arrow followed by one
_ALIASES: dict[str, str] = {
    **dict.fromkeys(["up", "upward", "upwards", "north", "↑", "⬆"], "U"),
    **dict.fromkeys(["down", "downward", "downwards", "south", "↓", "⬇"], "D"),
    **dict.fromkeys(["left", "leftward", "leftwards", "west", "←", "⬅"], "L"),
    **dict.fromkeys(["right", "rightward", "rightwards", "east", "→", "➡"], "R"),
    **dict.fromkeys(["pick", "pickup", "grab", "take", "pickitup"], "PICK"),
    **dict.fromkeys(["drop", "putdown", "place", "release", "putitdown"], "DROP"),
}
# Two-word phrases (optionally with "it" between): first word -> (last word, action).
_PHRASES: dict[str, tuple[str, str]] = {"pick": ("up", "PICK"), "put": ("down", "DROP")}
_MOVE_LETTERS = frozenset("UDLR")
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


class ScanWork:
    """Characters examined while parsing (for the linear-time test); pass one to ``parse_plan``."""

    def __init__(self) -> None:
        self.chars = 0

    def add(self, n: int) -> None:
        self.chars += n


@dataclass(frozen=True)
class ParsedPlan:
    """A parsed answer: ``actions`` is None exactly when parsing failed, and ``error`` says why."""

    actions: tuple[str, ...] | None
    error: str | None = None
    answer_text: str | None = None  # the raw content of the last answer block

    @property
    def ok(self) -> bool:
        return self.actions is not None


def extract_answer(response: str, work: ScanWork | None = None) -> str | None:
    """The content of the last ``<answer>...</answer>`` block, or None.

    One left-to-right pass over the tags: a closing tag ends the block opened by the latest opening
    tag (a closing tag with no open block is ignored), so an unclosed ``<answer>`` costs nothing extra.
    """
    text = response or ""
    opened: int | None = None
    block: tuple[int, int] | None = None
    for m in _TAG.finditer(text):
        if m.group(1):
            if opened is not None:
                block, opened = (opened, m.start()), None
        else:
            opened = m.end()
    if work is not None:
        work.add(len(text))
    return text[block[0] : block[1]] if block else None


def parse_actions(text: str, work: ScanWork | None = None) -> tuple[tuple[str, ...] | None, str | None]:
    """Parse the inside of an answer block into actions; (None, reason) when it cannot."""
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    if work is not None:
        work.add(len(text))
    actions: list[str] = []
    i = 0
    while i < len(tokens):
        tok, _, end = tokens[i]
        if work is not None:
            work.add(len(tok))
        if not tok.isascii() and tok not in _ARROWS and not tok[0].isdigit():
            # A letter, digit or mark outside ASCII would change the plan if skipped ("ＵL" is not "L").
            if unicodedata.category(tok)[0] in "LNM" and tok not in _VARIATION_SELECTORS:
                return None, f"unrecognised character {tok!r}"
            i += 1
            continue  # other non-ASCII punctuation or symbols separate, as ASCII ones do
        low = tok.lower()
        key = low.replace("_", "")
        phrase = _PHRASES.get(key)
        if phrase is not None:
            # "pick up", "pick it up", "put-down"...: only joiners (space, _ or -) between the words.
            j, last = i + 1, end
            if _word_at(text, tokens, j, "it", last, work):
                last, j = tokens[j][2], j + 1
            if _word_at(text, tokens, j, phrase[0], last, work):
                actions.append(phrase[1])
                i = j + 1
                continue
        if key in _ALIASES:
            actions.append(_ALIASES[key])
        elif set(tok.upper()) <= _MOVE_LETTERS:
            actions.extend(tok.upper())  # a compact path such as "UURD" (or "uurd")
        elif key in _FILLER:
            pass
        else:
            return None, f"unrecognised token {tok!r}"
        i += 1
    if not actions:
        return None, "empty answer"
    return tuple(actions), None


def _word_at(
    text: str, tokens: list[tuple[str, int, int]], j: int, word: str, last: int, work: ScanWork | None
) -> bool:
    """Whether token ``j`` is ``word`` with only joiners (space, ``_``, ``-``) between ``last`` and it.
    A gap is read only when the word matches, so at most twice (after "pick" and after "it")."""
    if j >= len(tokens) or tokens[j][0].lower() != word:
        return False
    gap = text[last : tokens[j][1]]
    if work is not None:
        work.add(len(gap))
    return all(c.isspace() or c in "_-" for c in gap)


def parse_plan(response: str, work: ScanWork | None = None) -> ParsedPlan:
    """Parse a model response: the plan in its last answer block, or a parse failure with a reason."""
    answer = extract_answer(response, work)
    if answer is None:
        return ParsedPlan(None, "no <answer> block")
    actions, error = parse_actions(answer, work)
    return ParsedPlan(actions, error, answer)
