import pytest

from mgsd.prompts import perception_target
from mgsd.scoring.perception import parse_section, score_perception, split_keyed, split_sections
from mgsd.tasks import TASK_NAMES, PerceptionItem, get_task


def items():
    return [
        PerceptionItem("size", "size", "How big?", "4x4"),
        PerceptionItem("player", "position", "Where is the player?", "(3,1)"),
        PerceptionItem("holes", "cells", "Where are the holes?", "none"),
        PerceptionItem("moves", "actions", "Legal moves?", "up, right"),
        PerceptionItem("open", "open_dirs", "Open directions?", "(0,0): right\n(0,1): left, down"),
    ]


def test_sections_split_on_numbers():
    assert split_sections("1. a\n2) b\nmore\n3. c") == {1: "a", 2: "b\nmore", 3: "c"}


def test_keyed_sections_match_the_facts_format():
    text = "size: 4x4\nplayer: (3,1)\nholes: none\nmoves: right, up\nopen:\n(0,0): right\n(0,1): down, left"
    r = score_perception(items(), text)
    assert r["all_correct"]
    # a key missing from a keyed answer is wrong, even if a numbered line would have matched
    r = score_perception(items(), "size: 4x4\n2. (3,1)")
    assert r["questions"]["size"] and not r["questions"]["player"]
    # only the questions' own keys mark sections: "goal:" inside a value is text
    assert split_keyed("size: 4x4\nnote: x\nplayer: (1,1)", ["size", "player"]) == {
        "size": "4x4\nnote: x",
        "player": "(1,1)",
    }


def test_exact_answers_score_all_correct():
    r = score_perception(
        items(), "1. 4x4\n2. (3, 1)\n3. none\n4. right, up\n5. (0,0): right\n(0,1): down, left"
    )
    assert r["all_correct"] and r["accuracy"] == 1.0


def test_missing_section_is_wrong_even_when_target_is_empty():
    r = score_perception(items(), "1. 4x4\n2. (3,1)")
    assert r["questions"]["holes"] is False  # "none" target vs missing section: not a free point
    assert r["questions"]["size"] and r["questions"]["player"]
    assert score_perception(items(), None)["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("size", "The map is 5x5.", (5, 5)),
        ("size", "6", (6, 6)),
        ("position", "(2,3) and (1,1)", None),  # two positions: ambiguous, wrong
        ("cells", "(1,2); (0,0)", frozenset({(1, 2), (0, 0)})),
        ("cells", "I am not sure", None),
        ("actions", "none", frozenset()),
        ("open_dirs", "(0,0): none\n(0,1): up", {(0, 0): frozenset(), (0, 1): frozenset({"up"})}),
        (
            "open_dirs",
            " ┌╴\n└┼ ",
            {
                (0, 0): frozenset({"right", "down"}),
                (0, 1): frozenset({"left"}),
                (1, 0): frozenset({"up", "right"}),
                (1, 1): frozenset({"up", "right", "down", "left"}),
            },
        ),
        ("open_dirs", "┌x\n└┼", None),
    ],
)
def test_parse_section(kind, text, value):
    assert parse_section(kind, text) == value


def test_wrong_set_member_is_wrong():
    r = score_perception(items(), "1. 4x4\n2. (3,1)\n3. (1,1)\n4. up\n5. (0,0): right\n(0,1): left, down")
    assert not r["questions"]["holes"] and not r["questions"]["moves"] and r["questions"]["open"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_target_scores_perfectly(name):
    import random

    task = get_task(name)
    for seed in range(20):
        state = task.generate(task.levels[seed % len(task.levels)], random.Random(seed))
        r = score_perception(task.perception(state), perception_target(task, state))
        assert r["all_correct"], (name, state)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_plan_answer_facts_score_as_perception(name):
    """The reference plan answer restates the facts block: scored as perception, it is all right;
    a plan answer whose first fact is wrong is not."""
    import json
    import random

    from mgsd.eval.perception import score_answer_facts
    from mgsd.prompts import reference_response

    task = get_task(name)
    samples, answers = [], []
    for seed in range(6):
        state = task.generate(task.levels[0], random.Random(seed))
        plan = task.solve(state)
        samples.append({"id": str(seed), "task": name, "level": task.levels[0], "state": json.dumps(state)})
        answers.append({"id": str(seed), "response": reference_response(task, state, plan)})
    assert score_answer_facts(samples, answers)["all_correct"] == 1.0
    first = task.perception(json.loads(samples[0]["state"]))[0].key
    answers[0]["response"] = answers[0]["response"].replace(f"{first}:", f"{first}: 99x99\nignored:", 1)
    facts = score_answer_facts(samples, answers)
    assert facts["all_correct"] == pytest.approx(5 / 6)
    assert facts["by_task"][name]["questions"][first]["accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no plan answer"):
        score_answer_facts(samples, answers[1:])
