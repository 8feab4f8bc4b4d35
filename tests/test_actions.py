from hypothesis import given, settings
from hypothesis import strategies as st

from mgsd.actions import ACTIONS, extract_answer, parse_plan


def actions_of(text):
    return parse_plan(text).actions


def test_compact_letters_and_separators():
    assert actions_of("<answer>UUR</answer>") == ("U", "U", "R")
    assert actions_of("<answer>U, U; R | D</answer>") == ("U", "U", "R", "D")
    assert actions_of("<answer> l d r u </answer>") == ("L", "D", "R", "U")


def test_words_arrows_and_filler():
    assert actions_of("<answer>Up, then RIGHT, then down</answer>") == ("U", "R", "D")
    assert actions_of("<answer>↑ → ↓ ←</answer>") == ("U", "R", "D", "L")
    assert actions_of("<answer>move left</answer>") == ("L",)


def test_pick_up_and_put_down_phrases():
    assert actions_of("<answer>U, pick up, R, put down</answer>") == ("U", "PICK", "R", "DROP")
    assert actions_of("<answer>L,PICK_UP,D,PUT-DOWN</answer>") == ("L", "PICK", "D", "DROP")
    assert actions_of("<answer>U,PICK,R,DROP</answer>") == ("U", "PICK", "R", "DROP")


def test_trailing_punctuation_ignored():
    assert actions_of("<answer>LLD.</answer>") == ("L", "L", "D")
    assert actions_of("<answer>`RRU`!</answer>") == ("R", "R", "U")


def test_last_answer_block_wins():
    assert actions_of("<answer>UU</answer> on second thought <answer>RR</answer>") == ("R", "R")
    assert extract_answer("a <ANSWER>L</ANSWER>") == "L"


def test_failures_are_reported_not_guessed():
    # No answer block: coordinates in the text must never become actions.
    p = parse_plan("The player is at (3,1). Go up twice: UU")
    assert p.actions is None and "no <answer>" in p.error
    # Digits are not actions.
    p = parse_plan("<answer>1. Up 2. Right</answer>")
    assert p.actions is None and "'1'" in p.error
    assert parse_plan("<answer>0123</answer>").actions is None
    assert parse_plan("<answer></answer>").error == "empty answer"
    assert parse_plan("<answer>jump</answer>").actions is None
    assert parse_plan("<answer>UUR").actions is None  # unterminated block


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises(text):
    p = parse_plan(text)
    assert (p.actions is None) == (p.error is not None)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_parser_never_raises_inside_answer(before, inside):
    p = parse_plan(f"{before}<answer>{inside}</answer>")
    if p.actions is not None:
        assert p.actions and all(a in ACTIONS for a in p.actions)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=20), st.sampled_from(["", ",", ", ", " ", "; "])
)
def test_round_trip_of_formatted_plans(plan, sep):
    if sep == "" and any(len(a) > 1 for a in plan):
        sep = ","  # compact form only exists for single letters
    assert actions_of(f"<answer>{sep.join(plan)}</answer>") == tuple(plan)


# -- untrusted input: linear work, no silent look-alikes ---------------------------------------------

from mgsd.actions import ScanWork  # noqa: E402
from mgsd.scoring.perception import split_sections  # noqa: E402

# Fragments whose repetition made the old parser quadratic (unclosed tags), or could make a
# backtracking regex so (long joiner runs after "pick", digit runs, blank lines).
_HOSTILE = ["<answer>", "<ANSWER>", "</answer>", "<answer", "pick", "put it", " ", "_", "-", "U", "1", "\n"]
_HOSTILE.append("Ｕ")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from(_HOSTILE), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=4_000_000),
    st.booleans(),
)
def test_parser_work_is_linear_on_adversarial_input(pattern, size, closed):
    unit = "".join(pattern)
    text = unit * max(1, size // len(unit))
    if closed:
        text = "<answer>" + text + "</answer>"
    work = ScanWork()
    p = parse_plan(text, work)
    assert (p.actions is None) == (p.error is not None)
    # Every pass reads each character a bounded number of times (tags, tokens, gaps at most twice).
    assert work.chars <= 5 * len(text) + 64


def test_unclosed_answer_tags_of_several_megabytes_parse():
    text = "<answer>" * 500_000  # 4 MB: the old lazy ``(.*?)`` rescanned the rest from every tag
    work = ScanWork()
    assert parse_plan(text, work).error == "no <answer> block"
    assert work.chars <= 2 * len(text)
    text = "<answer>U" * 400_000 + "<answer>RD</answer>"
    assert parse_plan(text).actions == ("R", "D")


def test_last_block_is_the_latest_opened_and_closed():
    assert actions_of("<answer>UU</answer> then <answer>RR") == ("U", "U")
    assert actions_of("<answer>UU<answer>RR</answer>") == ("R", "R")
    assert actions_of("<answer>UU</answer> stray </answer>") == ("U", "U")


def test_non_ascii_letters_and_digits_are_parse_failures():
    for bad in ("ＵL", "U,Ｄ", "Uр", "ДL", "U\u0301R", "U２", "L²"):
        p = parse_plan(f"<answer>{bad}</answer>")
        assert p.actions is None, bad
        assert "unrecognised" in p.error
    # Non-ASCII punctuation still separates, and an arrow with its emoji variation selector is an arrow.
    assert actions_of("<answer>U，R。“D”</answer>") == ("U", "R", "D")
    assert actions_of("<answer>⬆️ ➡️</answer>") == ("U", "R")
    assert actions_of("<answer>pick_it_up, put it down, pick_ up</answer>") == ("PICK", "DROP", "PICK")
    assert actions_of("<answer>pick, up</answer>") == ("PICK", "U")


def test_perception_sections_are_linear_on_blank_lines():
    # ``^\s*`` rescanned every following blank line from each line start; now one pass.
    text = "\n" * 300_000 + "1. 3x3\n2) (0,1)"
    assert split_sections(text) == {1: "3x3", 2: "(0,1)"}
