"""`mgsd run` end to end on the smoke config: every step runs, outputs are complete, a rerun resumes."""

import json
from pathlib import Path

import pytest

from mgsd.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_pipeline_end_to_end_and_resume(tmp_path, shared_data, capsys):
    out = tmp_path / "run"
    vsp = shared_data / "vsp_examples"
    args = [
        "run",
        "--config",
        str(ROOT / "configs" / "smoke.yaml"),
        "--out",
        str(out),
        "--external",
        f"vsp={vsp}",
        "--set",
        "baselines=[plan_sft]",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["model"], r["modality"], r["dataset"]): r for r in summary["rows"]}
    for key in [
        ("base", "image", "test"),
        ("base", "text", "test"),
        ("base", "teacher+plan", "test"),
        ("base", "teacher", "test"),
        ("coldstart", "image", "test"),
        ("mgsd", "image", "test"),
        ("plan_sft", "image", "test"),
        ("mgsd", "image", "vsp"),
    ]:
        assert key in rows, key
    r = rows[("mgsd", "image", "test")]
    assert r["n"] == 36 and set(r["macro"]) >= {"success", "optimal", "progress", "ci"}
    assert set(r["by_task"]) == {"frozenlake", "maze", "minibehaviour"}
    assert rows[("mgsd", "image", "vsp")]["n"] == 48
    assert "perception" in rows[("coldstart", "image", "test")]
    assert (out / "eval" / "mgsd" / "gap.json").is_file()
    h = summary["headline"]
    assert {"mgsd_minus_coldstart_success", "gap_closed_fraction", "mgsd_beats_coldstart"} <= set(h)
    assert set(h["baselines_minus_mgsd_success"]) >= {"plan_sft"}  # paired against MGSD, same samples
    assert h["baselines_minus_mgsd_success"]["plan_sft"]["n"] == 36
    assert set(summary["timings"]) >= {
        "data",
        "stage 1: cold-start perception SFT",
        "stage 2: MGSD on-policy self-distillation",
    }
    html = (out / "report.html").read_text()
    assert "<table" in html and "mgsd" in html
    # test and train never share a state
    from mgsd.data.io import read_rows

    test = {x["state"] for x in read_rows(out / "data" / "test")}
    train = {x["state"] for x in read_rows(out / "data" / "train")}
    assert not test & train
    # nor any state the shipped base saw in pretraining; the overlap is reported
    assert summary["overlap_with_pretraining"]["test"] == {"n": 36, "seen_in_pretraining": 0}
    assert summary["overlap_with_pretraining"]["vsp"]["n"] == 48
    tc = summary["teacher_competence"]
    assert set(tc["reference_logprob"]) == {"frozenlake", "maze", "minibehaviour"}
    # A rerun finds every step complete and redoes nothing.
    capsys.readouterr()
    assert main(args) == 0
    assert "== " not in capsys.readouterr().out
