"""``mgsd eval model`` / ``eval gap`` logic: scoring, failures, resume, seeds, perception, attribution.

Most tests use a canned backend (responses chosen per sample and per kind of query); a few run the
tiny random local model end to end through the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mgsd.backends.base import GenerationConfig, Query, Reply
from mgsd.backends.local import LocalBackend
from mgsd.cli import main
from mgsd.data.generate import generate_dataset
from mgsd.data.io import read_rows, write_rows
from mgsd.eval.gap import CATEGORIES, attribute, evaluate_gap, format_gap
from mgsd.eval.model import evaluate_model
from mgsd.eval.perception import evaluate_perception
from mgsd.eval.queries import load_samples
from mgsd.eval.responses import CACHE_NAME, task_batches
from mgsd.files import read_jsonl
from mgsd.models import init_tiny
from mgsd.prompts import perception_target, text_student_prompt
from mgsd.tasks import get_task

LEVELS = {"frozenlake": [3, 4], "maze": [3], "minibehaviour": [5]}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    for name, levels in LEVELS.items():
        generate_dataset(get_task(name), levels, 2, split="test", seed=3, out=out, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def samples(data: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in read_rows(data)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="tiny", seed=0)


def kind_of(q: Query) -> str:
    """Which run a query belongs to: planning from the image or from text, or perception."""
    if not any(isinstance(p, Image.Image) for p in q.user):
        return "text"
    return "perception" if q.user[0].startswith("Describe the") else "image"


class Canned:
    """A backend answering ``respond(query, cfg)``; None means the request failed."""

    def __init__(self, respond: Callable[[Query, GenerationConfig], str | None]) -> None:
        self.respond = respond
        self.calls: list[str] = []

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        out = []
        for q in queries:
            self.calls.append(q.id)
            text = self.respond(q, cfg)
            out.append(Reply(None, "boom: connection reset") if text is None else Reply(text, None, 5))
        return out

    def describe(self) -> dict[str, Any]:
        return {"type": "canned"}


class KillAfter(Canned):
    """Raises (like a killed process) once ``n`` queries have been answered."""

    def __init__(self, inner: Canned, n: int) -> None:
        super().__init__(inner.respond)
        self.n = n

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        if len(self.calls) >= self.n:
            raise KeyboardInterrupt
        return super().generate(queries, cfg)


def plan_answer(samples: dict[str, dict[str, Any]]) -> Callable[[Query, GenerationConfig], str | None]:
    """By sample index: optimal plan, an illegal first move, no answer block, failed request."""
    ids = sorted(samples)

    def respond(q: Query, cfg: GenerationConfig) -> str | None:
        s = samples[q.id]
        k = ids.index(q.id) % 4
        if k == 0:
            return f"I see the grid.\n<answer>{s['optimal_plan']}</answer>"
        if k == 1:
            task = get_task(s["task"])
            state = task.load_state(s["state"])
            bad = next(a for a in "UDLR" if task.step(state, task.initial(state), a).invalid)
            return f"<answer>{bad}</answer>"
        if k == 2:
            return "no idea"
        return None

    return respond


def test_metrics_end_to_end_counts_every_sample(data: Path, samples: dict, tmp_path: Path) -> None:
    backend = Canned(plan_answer(samples))
    m = evaluate_model(backend, [data], tmp_path, model="canned", progress=False, batch_size=3)
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert m["n"] == len(rows) == len(samples) == 8  # failed requests stay in the denominator
    ids = sorted(samples)
    by_id = {r["id"]: r for r in rows}
    for i, sid in enumerate(ids):
        r = by_id[sid]
        assert r["success"] == (i % 4 == 0) and r["optimal"] == (i % 4 == 0)
        assert r["invalid"] == (i % 4 == 1)
        assert r["parse_failure"] == (i % 4 in (2, 3))
        if i % 4 == 3:
            assert r["reason"].startswith("request_failed: ") and r["error"] and r["response"] is None
        else:
            assert r["error"] is None and isinstance(r["response"], str)
    assert m["success"] == pytest.approx(2 / 8)
    assert m["request_failures"] == 2 and m["outcomes"]["request_failed"] == 2
    assert m["modality"] == "image" and m["model"] == "canned" and m["data"] == [str(data.resolve())]
    assert m["generation"]["greedy"] and m["backend"] == {"type": "canned"}
    lo, hi = m["macro"]["ci"]["success"]
    assert lo <= m["macro"]["success"] <= hi
    # Failed requests are not cached, so a rerun retries exactly those.
    again = Canned(plan_answer(samples))
    evaluate_model(again, [data], tmp_path, model="canned", progress=False)
    assert sorted(again.calls) == [ids[3], ids[7]]


def test_text_modality_sends_no_image(data: Path, samples: dict, tmp_path: Path) -> None:
    seen: list[str] = []

    def respond(q: Query, cfg: GenerationConfig) -> str:
        seen.append(kind_of(q))
        task = get_task(samples[q.id]["task"])
        assert q.user == [text_student_prompt(task, task.load_state(samples[q.id]["state"]))]
        return f"<answer>{samples[q.id]['optimal_plan']}</answer>"

    m = evaluate_model(Canned(respond), [data], tmp_path, modality="text", progress=False)
    assert set(seen) == {"text"} and m["success"] == 1.0 and m["modality"] == "text"


def test_resume_after_kill_gives_identical_files(data: Path, samples: dict, tmp_path: Path) -> None:
    full = tmp_path / "full"
    evaluate_model(Canned(plan_answer(samples)), [data], full, progress=False, batch_size=2)
    part = tmp_path / "part"
    killed = KillAfter(Canned(plan_answer(samples)), n=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(killed, [data], part, progress=False, batch_size=2)
    assert not (part / "metrics.json").exists()
    cached = read_jsonl(part / CACHE_NAME)[1:]
    assert len(cached) == 3  # two batches of two, one of them a failed (uncached) request
    # A write cut short by the kill leaves a partial line: it is dropped, not fatal.
    with (part / CACHE_NAME).open("a") as f:
        f.write('{"id": "frozenlake/te')
    rest = Canned(plan_answer(samples))
    evaluate_model(rest, [data], part, progress=False, batch_size=2)
    assert len(rest.calls) == 8 - 3
    for name in ("samples.jsonl", "metrics.json"):
        assert (part / name).read_bytes() == (full / name).read_bytes()


def test_unicode_line_separators_inside_responses_survive(data: Path, samples: dict, tmp_path: Path) -> None:
    # JSON leaves U+2028 / U+0085 unescaped; only "\n" may end a JSONL record.
    def respond(q: Query, cfg: GenerationConfig) -> str:
        return f"odd\u2028text\x85here\n<answer>{samples[q.id]['optimal_plan']}</answer>"

    out = tmp_path / "out"
    m = evaluate_model(Canned(respond), [data], out, progress=False, batch_size=2)
    again = Canned(respond)
    assert evaluate_model(again, [data], out, progress=False, batch_size=2) == m and not again.calls  # cache
    rows = read_jsonl(out / "samples.jsonl")
    assert (
        len(rows) == m["n"] and all("\u2028" in r["response"] for r in rows) and m["macro"]["success"] == 1.0
    )


def test_cache_refuses_other_settings(data: Path, samples: dict, tmp_path: Path) -> None:
    evaluate_model(Canned(plan_answer(samples)), [data], tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        evaluate_model(
            Canned(plan_answer(samples)),
            [data],
            tmp_path,
            gen=GenerationConfig(max_new_tokens=7),
            progress=False,
        )


def test_seeds_give_per_seed_metrics_and_their_mean(data: Path, samples: dict, tmp_path: Path) -> None:
    def respond(q: Query, cfg: GenerationConfig) -> str:
        # Seed 0 solves everything, seed 1 nothing: the mean must be one half.
        return f"<answer>{samples[q.id]['optimal_plan']}</answer>" if cfg.seed == 0 else "<answer>X</answer>"

    gen = GenerationConfig(max_new_tokens=16, temperature=0.7, top_p=0.9, seed=0)
    m = evaluate_model(Canned(respond), [data], tmp_path, gen=gen, seeds=2, progress=False)
    assert m["seeds"] == [0, 1]
    assert m["per_seed"]["0"]["success"] == 1.0 and m["per_seed"]["1"]["success"] == 0.0
    assert m["success"] == pytest.approx(0.5) and m["macro"]["success"] == pytest.approx(0.5)
    assert (tmp_path / "seed1" / "metrics.json").exists()
    with pytest.raises(ValueError, match="sampling"):
        evaluate_model(Canned(respond), [data], tmp_path / "g", seeds=2, progress=False)


def test_limit_is_per_task_and_level(data: Path) -> None:
    rows = load_samples([data], limit=1)
    assert sorted((r["task"], r["level"]) for r in rows) == sorted(
        (t, lv) for t, levels in LEVELS.items() for lv in levels
    )


def test_corrupt_image_is_a_counted_failure(data: Path, tmp_path: Path) -> None:
    rows = read_rows(data)[:3]
    rows[1]["image"] = b"not a png"
    bad = tmp_path / "bad"
    write_rows(rows, bad / "x.parquet")
    backend = Canned(lambda q, cfg: "<answer>U</answer>")
    m = evaluate_model(backend, [bad], tmp_path / "out", progress=False)
    assert m["n"] == 3 and m["request_failures"] == 1
    failed = [r for r in read_jsonl(tmp_path / "out" / "samples.jsonl") if r["error"]]
    assert failed[0]["id"] == rows[1]["id"] and "corrupt image" in failed[0]["error"]


def test_perception_of_a_perfect_backend_is_100_percent(data: Path, samples: dict, tmp_path: Path) -> None:
    def respond(q: Query, cfg: GenerationConfig) -> str:
        assert kind_of(q) == "perception"
        task = get_task(samples[q.id]["task"])
        return perception_target(task, task.load_state(samples[q.id]["state"]))

    m = evaluate_perception(Canned(respond), [data], tmp_path / "p", progress=False)
    assert m["n"] == 8 and m["all_correct"] == 1.0 and m["all_correct_ci"] == [1.0, 1.0]
    for block in [*m["by_task"].values(), *m["by_task_level"].values()]:
        assert block["all_correct"] == 1.0
        assert all(q["accuracy"] == 1.0 for q in block["questions"].values())
    assert set(m["by_task_level"]) == {"frozenlake/3", "frozenlake/4", "maze/3", "minibehaviour/5"}
    # A backend that says nothing useful, or fails, scores zero: a missing answer is wrong.
    empty = evaluate_perception(Canned(lambda q, c: ""), [data], tmp_path / "e", progress=False)
    failed = evaluate_perception(Canned(lambda q, c: None), [data], tmp_path / "f", progress=False)
    assert empty["all_correct"] == 0.0 and empty["question_accuracy"] == 0.0
    assert failed["request_failures"] == 8 and failed["question_accuracy"] == 0.0


def test_attribution_truth_table() -> None:
    assert attribute(True, False, False) == "solved"
    assert attribute(True, True, True, request_failed=True) == "solved"
    assert attribute(False, True, False) == "perception"
    assert attribute(False, True, True) == "image_reasoning"
    assert attribute(False, False, True) == "reasoning"
    assert attribute(False, False, False) == "perception_and_reasoning"
    assert attribute(False, True, True, request_failed=True) == "request_failed"


def test_gap_covers_every_category_and_resumes(data: Path, samples: dict, tmp_path: Path) -> None:
    ids = sorted(samples)
    # Per sample index: (image ok, text ok, perception ok, a request fails) -> expected category.
    plan = {
        0: (True, False, False, False, "solved"),
        1: (False, True, False, False, "perception"),
        2: (False, True, True, False, "image_reasoning"),
        3: (False, False, True, False, "reasoning"),
        4: (False, False, False, False, "perception_and_reasoning"),
        5: (False, True, True, True, "request_failed"),
        6: (False, True, True, False, "image_reasoning"),
        7: (True, True, True, False, "solved"),
    }

    def respond(q: Query, cfg: GenerationConfig) -> str | None:
        s = samples[q.id]
        img_ok, text_ok, perc_ok, fail, _ = plan[ids.index(q.id)]
        kind = kind_of(q)
        if kind == "perception":
            if fail:
                return None
            task = get_task(s["task"])
            return perception_target(task, task.load_state(s["state"])) if perc_ok else "1. no idea"
        ok = img_ok if kind == "image" else text_ok
        return f"<answer>{s['optimal_plan']}</answer>" if ok else "<answer>R,R,R,R,R,R,R,R,R</answer>"

    backend = Canned(respond)
    gap = evaluate_gap(backend, [data], tmp_path, model="canned", progress=False)
    assert len(backend.calls) == 3 * 8
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "gap_samples.jsonl")}
    for i, sid in enumerate(ids):
        assert rows[sid]["category"] == plan[i][4], sid
    counts = gap["total"]["counts"]
    assert set(CATEGORIES) == set(counts) and all(counts[c] >= 1 for c in CATEGORIES)
    assert sum(counts.values()) == gap["total"]["n"] == 8
    assert gap["total"]["fractions"]["image_reasoning"] == pytest.approx(2 / 8)
    assert gap["request_failures"] == {"image": 0, "text": 0, "perception": 1}
    for name in ("image", "text", "perception"):
        assert (tmp_path / name / "samples.jsonl").exists()
    # The canned plan answers restate no facts: scored as perception, none is right.
    facts = gap["runs"]["answer_facts"]
    assert facts["n"] == 8 and facts["question_accuracy"] == 0.0
    assert (tmp_path / "answer_facts.json").exists()
    table = format_gap(gap)
    assert "frozenlake/3" in table and "total" in table and "img-reas" in table
    # A rerun reuses the three runs: only the failed request is asked again.
    again = Canned(respond)
    evaluate_gap(again, [data], tmp_path, model="canned", progress=False)
    assert again.calls == [ids[5]]


def test_local_backend_isolates_an_image_the_processor_refuses(tiny: Path) -> None:
    backend = LocalBackend.load(str(tiny), batch_size=4, device="cpu")
    good = Image.new("RGB", (256, 256), (200, 220, 255))
    queries = [
        Query("a", ["Plan.", good]),
        Query("b", ["Plan.", Image.new("RGB", (4000, 8), (0, 0, 0))]),  # aspect ratio > 200: refused
        Query("c", ["Plan, text only."]),
    ]
    replies = backend.generate(queries, GenerationConfig(max_new_tokens=4))
    assert replies[0].error is None and replies[2].error is None and replies[1].text is None
    assert "aspect ratio" in replies[1].error
    assert all(r.tokens > 0 for r in (replies[0], replies[2]))


def test_cli_eval_model_with_the_tiny_model(tiny: Path, data: Path, tmp_path: Path, capsys) -> None:
    common = ["--model", str(tiny), "--data", str(data), "--max-new-tokens", "8", "--quiet", "--limit", "1"]
    assert main(["eval", "model", *common, "--out", str(tmp_path / "img"), "--batch-size", "3"]) == 0
    m = json.loads((tmp_path / "img" / "metrics.json").read_text())
    assert m["n"] == 4 and m["model"] == str(tiny.resolve()) and m["backend"]["batch_size"] == 3
    assert m["generation"] == {
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "greedy": True,
    }
    rows = read_jsonl(tmp_path / "img" / "samples.jsonl")
    assert all(isinstance(r["response"], str) and r["tokens"] >= 1 for r in rows)
    assert main(["eval", "model", *common, "--out", str(tmp_path / "txt"), "--modality", "text"]) == 0
    assert main(["eval", "model", *common, "--out", str(tmp_path / "per"), "--perception"]) == 0
    assert (tmp_path / "per" / "perception_metrics.json").exists()
    out = capsys.readouterr().out
    assert "macro success 95% CI" in out and "all correct" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{data}", "--data", "{data}"], "not a model directory"),
        (["--model", "{tiny}", "--data", "{tiny}"], "no .parquet files"),
        (["--model", "{tiny}", "--data", "{schema}"], "missing column"),
        (["--data", "{data}"], "give --model"),
        (["--model", "{tiny}", "--data", "{data}", "--seeds", "2"], "needs sampling"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tiny, data, tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = tmp_path / "schema"
    schema.mkdir()
    pq.write_table(pa.table({"id": ["a"], "task": ["maze"]}), schema / "x.parquet")
    fill = {"data": str(data), "tiny": str(tiny), "schema": str(schema)}
    argv = ["eval", "model", *[a.format(**fill) for a in args], "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgsd: error:") and message in err[0]


def test_cache_is_keyed_by_what_it_answers(data: Path, samples: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def solve(q: Query, cfg: GenerationConfig) -> str:
        return f"<answer>{samples[q.id]['optimal_plan']}</answer>"

    evaluate_model(Canned(solve), [data], out, progress=False)
    again = Canned(solve)
    evaluate_model(again, [data], out, progress=False)
    assert not again.calls  # same data, same backend: all from the cache
    # Other data under the same ids (here: two FrozenLake rows swap their states and images).
    rows = read_rows(data)
    a, b = [r for r in rows if r["task"] == "frozenlake"][:2]
    a_new = {**a, **{k: b[k] for k in ("state", "image", "optimal_plan", "optimal_length", "level")}}
    b_new = {**b, **{k: a[k] for k in ("state", "image", "optimal_plan", "optimal_length", "level")}}
    rows = [a_new if r["id"] == a["id"] else b_new if r["id"] == b["id"] else r for r in rows]
    other = tmp_path / "other"
    write_rows(rows, other / "test.parquet")
    fresh = Canned(lambda q, cfg: "<answer>U</answer>")
    m = evaluate_model(fresh, [other], out, progress=False)
    assert sorted(fresh.calls) == sorted([a["id"], b["id"]])  # exactly the changed samples re-asked
    assert m["n"] == len(rows)
    # The stale answers are gone from the cache: each id appears once.
    ids = [r["id"] for r in read_jsonl(out / CACHE_NAME)[1:]]
    assert len(ids) == len(set(ids)) == len(rows)


class Weighted(Canned):
    def __init__(self, respond, weights: str) -> None:
        super().__init__(respond)
        self.weights = weights

    def describe(self) -> dict[str, Any]:
        return {"type": "canned", "weights": self.weights}


def test_cache_reevaluates_other_weights_at_the_same_path(data: Path, samples: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate_model(Weighted(plan_answer(samples), "w1"), [data], out, model="m", progress=False)
    retrained = Weighted(lambda q, cfg: "<answer>U</answer>", "w2")
    m = evaluate_model(retrained, [data], out, model="m", progress=False)
    assert len(retrained.calls) == m["n"] and m["success"] < 1.0


def test_local_backend_fingerprints_its_weights(tiny: Path, tmp_path: Path) -> None:
    import shutil

    first = LocalBackend.load(str(tiny)).describe()["weights"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert LocalBackend.load(str(copy)).describe()["weights"] == first  # content, not path
    init_tiny(copy, preset="tiny", seed=1)  # "retrained" at the same path
    assert LocalBackend.load(str(copy)).describe()["weights"] != first


def test_batches_hold_one_task_each_and_every_sample_once() -> None:
    """A batch never straddles two tasks (its prompts then share their instruction), in order."""
    samples = [{"id": str(i), "task": t} for i, t in enumerate("aaaaabbbaa")]
    batches = task_batches(samples, 3)
    assert [[s["id"] for s in b] for b in batches] == [
        ["0", "1", "2"],
        ["3", "4", "8"],
        ["9"],
        ["5", "6", "7"],
    ]
