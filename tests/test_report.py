"""``mgsd report``: a self-contained HTML page with results, charts, gap attribution and a gallery."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mgsd.backends.base import GenerationConfig, Query, Reply
from mgsd.cli import main
from mgsd.data.generate import generate_dataset
from mgsd.data.io import read_rows
from mgsd.eval.gap import evaluate_gap
from mgsd.eval.model import evaluate_model
from mgsd.eval.plans import eval_plans
from mgsd.prompts import perception_prompt, perception_target
from mgsd.report import build_report
from mgsd.report.gallery import draw_path
from mgsd.tasks import get_task


class Canned:
    """Image queries: optimal, an illegal move, stopping short or no answer, by sample index.
    Text queries: always optimal. Perception: right for even indices."""

    def __init__(self, samples: dict[str, dict[str, Any]]) -> None:
        self.samples, self.ids = samples, sorted(samples)

    def _illegal(self, s: dict[str, Any]) -> str:
        task = get_task(s["task"])
        state = task.load_state(s["state"])
        return next(a for a in "UDLR" if task.step(state, task.initial(state), a).invalid)

    def respond(self, q: Query) -> str:
        s = self.samples[q.id]
        k = self.ids.index(q.id)
        task = get_task(s["task"])
        if not any(isinstance(p, Image.Image) for p in q.user):
            return f"<answer>{s['optimal_plan']}</answer>"
        if q.user[0] == perception_prompt(task, task.load_state(s["state"])):
            return perception_target(task, task.load_state(s["state"])) if k % 2 == 0 else "1. 3x3"
        plan = s["optimal_plan"].split(",") if "," in s["optimal_plan"] else list(s["optimal_plan"])
        choices = [
            s["optimal_plan"],
            task.format_plan([*plan[:1], self._illegal(s)]) if k % 8 == 1 else self._illegal(s),
            task.format_plan(plan[:-1]) if len(plan) > 1 else "",
            None,
        ]
        answer = choices[k % 4]
        return "I am not sure <b>&</b> guessing." if answer is None else f"Route.\n<answer>{answer}</answer>"

    def generate(self, queries: Sequence[Query], cfg: GenerationConfig) -> list[Reply]:
        return [Reply(self.respond(q), None, 3) for q in queries]

    def describe(self) -> dict[str, Any]:
        return {"type": "canned"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = root / "data" / "test"
    for name, levels in (("frozenlake", [3, 5]), ("maze", [4]), ("minibehaviour", [5])):
        generate_dataset(get_task(name), levels, 4, split="test", seed=2, out=data, progress=False, workers=1)
    samples = {r["id"]: r for r in read_rows(data)}
    backend = Canned(samples)
    evaluate_model(backend, [data], root / "eval" / "canned", model="canned-vlm", progress=False)
    eval_plans([data], root / "eval" / "oracle", None)
    evaluate_gap(backend, [data], root / "gap", model="canned-vlm", progress=False)
    train = root / "train"
    train.mkdir()
    with (train / "log.jsonl").open("w") as f:
        for step in range(1, 31):
            rec: dict[str, Any] = {"step": step, "loss": 2 / math.sqrt(step), "reverse_kl": 0.5 / step}
            if step % 10 == 0:
                rec["val_success"] = step / 40
            f.write(json.dumps(rec) + "\n")
        f.write("not json\n")
    summary = {"notes": ["The base model is a tiny random model: numbers are plumbing, not science."]}
    summary["rows"] = [
        {"model": "canned-vlm", "macro_success": 0.25},
        {"model": "oracle", "macro_success": 1.0},
    ]
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_report_has_every_part(run_dir: Path) -> None:
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    assert text.count('<section id="results">') == 1
    for label in ("eval/canned", "eval/oracle", "gap/image", "gap/text"):
        assert f'<td class="l">{label}</td>' in text
    assert "tiny random model" in text and "macro_success" in text  # summary notes and rows
    charts = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    assert any("success per level" in a for a in charts)
    assert any("training curves" in a for a in charts) and "1 unreadable line(s) skipped" in text
    assert any("modality gap" in a for a in charts) and "image reasoning" in text
    assert text.count('<div class="case">') >= 8
    assert 'class="verdict ok"' in text and 'class="verdict bad"' in text
    assert "failure: wall_blocked" in text or "failure: fell_into_hole" in text or "out_of_bounds" in text
    assert "I am not sure &lt;b&gt;&amp;&lt;/b&gt; guessing." in text  # responses are escaped
    assert '<section id="perception">' in text
    # The canned backend answers every other perception query right: the fixture really scores it.
    gap = json.loads((run_dir / "gap" / "gap.json").read_text())
    assert gap["total"]["perceived"] == 0.5
    # Self-contained: nothing is fetched.
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text and "<link" not in text


def test_path_drawing_marks_the_illegal_move() -> None:
    task = get_task("frozenlake")
    state = task.validate({"grid": ["SFF", "HFF", "FFG"]})
    base = task.render(state)
    img = draw_path(base, task, state, ["R", "D", "L"])  # ends in the hole at (1,0)
    px = img.getpixel((int(0.5 * 256 / 3), int(1.5 * 256 / 3)))  # centre of the hole: red cross
    assert px[0] > 180 and px[1] < 90 and px[2] < 90
    assert draw_path(base, task, state, None).tobytes() == base.resize((256, 256)).tobytes()


def test_report_cli_and_empty_dir(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 10_000
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "nothing to report" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    html = build_report(run_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        html.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.resize((128, 200)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # text, tables and charts, not a blank page


def test_experiment_summary_states_the_headline_rows_and_budget() -> None:
    from mgsd.report.summary import summary_section

    ci_ = {"success": [0.1, 0.3]}
    row = {
        "model": "mgsd",
        "modality": "image",
        "dataset": "test",
        "n": 900,
        "macro": {"success": 0.2, "optimal": 0.1, "progress": 0.4, "ci": ci_},
        "by_task": {"maze": {"n": 300, "success": 0.25}},
        "perception": {"all_correct": 0.5},
        "answer_facts": {"question_accuracy": 0.625},
    }
    summary = {
        "rows": [row],
        "headline": {
            "mgsd_minus_coldstart_success": {"diff": 0.05, "ci": [0.01, 0.09], "n": 900},
            "base_visual_success": 0.1,
            "base_symbolic_success": 0.5,
            "mgsd_visual_success": 0.2,
            "gap_closed_fraction": 0.25,
            "baselines_minus_mgsd_success": {"plan_sft": {"diff": 0.07, "ci": [0.04, 0.1], "n": 900}},
        },
        "timings": {
            "data": {"seconds": 12.3, "peak_rss_mb_so_far": 800},
            "base": {"seconds": 100.0, "peak_rss_mb_so_far": 1900},
        },
    }
    html = summary_section(summary)
    assert "+5.0 points" in html and "[+1.0, +9.0]" in html and "interval excludes zero" in html
    assert "closes 25% of the base" in html
    assert "Baselines minus MGSD" in html and "plan_sft +7.0 [+4.0, +10.0]" in html
    assert "maze success" in html and "[10.0, 30.0]" in html and "50.0" in html
    assert "facts in plan answer per question" in html and "62.5" in html
    assert "Wall time and memory" in html and "112" in html and "1900" in html  # total seconds, peak
    summary["headline"]["mgsd_minus_coldstart_success"]["ci"] = [-0.02, 0.09]
    assert "does not exclude zero" in summary_section(summary)


def test_log_reader_keeps_a_record_holding_a_unicode_line_separator(tmp_path: Path) -> None:
    from mgsd.report.discover import read_log

    log = tmp_path / "log.jsonl"
    recs = [{"step": 1, "note": "a\u2028b"}, {"step": 2, "loss": 0.5}]
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    assert read_log(log) == (recs, 0)
