import numpy as np
import pytest

from mgsd.scoring.aggregate import aggregate, paired_bootstrap_diff
from mgsd.scoring.plans import METRICS, score_response
from mgsd.tasks import get_task

_COUNTER = iter(range(10**9))


def row(task, level, success, *, optimal=None, progress=None, invalid=False, parse_failure=False):
    return {
        "id": f"s{next(_COUNTER)}",
        "task": task,
        "level": level,
        "success": success,
        "optimal": success if optimal is None else optimal,
        "progress": float(success) if progress is None else progress,
        "invalid": invalid,
        "parse_failure": parse_failure,
        "reason": None if success else "incomplete",
    }


def test_hand_computed_micro_task_level_and_macro():
    rows = (
        [row("frozenlake", 3, True)] * 3
        + [row("frozenlake", 3, False)]  # level 3: 3/4
        + [row("frozenlake", 4, False, invalid=True)] * 4  # level 4: 0/4 (only in total)
        + [row("maze", 3, True)] * 1
        + [row("maze", 3, False, parse_failure=True)]  # maze: 1/2
    )
    m = aggregate(rows, n_boot=200)
    assert m["n"] == 10
    assert m["success"] == pytest.approx(4 / 10)
    assert m["by_task"]["frozenlake"]["success"] == pytest.approx(3 / 8)
    # level-balanced: mean(3/4, 0/4) = 0.375; macro = mean(0.375, 0.5)
    assert m["by_task"]["frozenlake"]["level_balanced"]["success"] == pytest.approx(0.375)
    assert m["macro"]["success"] == pytest.approx((0.375 + 0.5) / 2)
    assert m["by_task_level"]["frozenlake/4"]["invalid"] == pytest.approx(1.0)
    assert m["by_task_level"]["maze/3"]["parse_failure"] == pytest.approx(0.5)
    for key in (
        "n",
        "success",
        "optimal",
        "progress",
        "invalid",
        "parse_failure",
        "ci",
        "by_task",
        "by_task_level",
        "macro",
    ):
        assert key in m
    for metric in METRICS:
        lo, hi = m["ci"][metric]
        assert lo <= m[metric] + 1e-12 and m[metric] <= hi + 1e-12


def test_level_balanced_differs_from_sample_weighted():
    rows = [row("maze", 3, True)] * 90 + [row("maze", 6, False)] * 10
    m = aggregate(rows, n_boot=100)
    assert m["by_task"]["maze"]["success"] == pytest.approx(0.9)
    assert m["macro"]["success"] == pytest.approx(0.5)


def test_bootstrap_ci_covers_known_distribution():
    """95% intervals for a Bernoulli(0.3) mean should cover 0.3 about 95% of the time."""
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    trials = 150
    for t in range(trials):
        succ = rng.random(200) < 0.3
        m = aggregate([row("maze", 3, bool(s)) for s in succ], n_boot=400, seed=t)
        lo, hi = m["ci"]["success"]
        covered += lo <= 0.3 <= hi
        widths.append(hi - lo)
    assert 0.88 <= covered / trials <= 0.995
    # Width close to the normal-approximation value 2 * 1.96 * sqrt(p(1-p)/n) = 0.127.
    assert np.mean(widths) == pytest.approx(0.127, rel=0.15)


def test_paired_diff_detects_improvement_and_rejects_mismatch():
    rng = np.random.default_rng(0)
    base = [row("maze", 3, bool(rng.random() < 0.3)) for _ in range(300)]
    better = [dict(r, success=r["success"] or bool(rng.random() < 0.5)) for r in base]
    d = paired_bootstrap_diff(base, better)
    assert d["diff"] > 0.2 and d["ci"][0] > 0
    same = paired_bootstrap_diff(base, base)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        paired_bootstrap_diff(base, better[:-1])


def test_aggregate_rejects_empty():
    with pytest.raises(ValueError):
        aggregate([])


# -- per-sample scores through the task simulator ---------------------------------------------------
LAKE = {"grid": ["SFF", "FHF", "FFG"]}


@pytest.mark.parametrize(
    ("response", "success", "optimal", "progress", "reason"),
    [
        ("<answer>RRDD</answer>", True, True, 1.0, None),
        ("<answer>RRDDL</answer>", True, False, 1.0, None),  # trailing junk: success, not optimal
        ("<answer>RDDR</answer>", False, False, 0.25, "fell_into_hole"),
        ("<answer>RR</answer>", False, False, 0.5, "incomplete"),
        ("<answer>U</answer>", False, False, 0.0, "out_of_bounds:U"),
        (
            "<answer>RLRRDD</answer>",
            True,
            False,
            0.25,
            None,
        ),  # detour: progress stops at the first non-improving move
        ("no answer here", False, False, 0.0, "parse_failure: no <answer> block"),
    ],
)
def test_score_response(response, success, optimal, progress, reason):
    task = get_task("frozenlake")
    s = score_response(task, task.validate(LAKE), response, sample_id="x", optimal_length=4)
    assert (s.success, s.optimal, s.reason) == (success, optimal, reason)
    assert s.progress == pytest.approx(progress)
    assert s.invalid == (reason is not None and reason.split(":")[0] in ("fell_into_hole", "out_of_bounds"))
    assert s.parse_failure == (reason is not None and reason.startswith("parse_failure"))


def test_missing_response_is_parse_failure():
    task = get_task("frozenlake")
    s = score_response(task, task.validate(LAKE), None, sample_id="x", optimal_length=4)
    assert s.parse_failure and not s.success
