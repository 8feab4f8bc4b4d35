import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image

from mgsd.cli import main
from mgsd.data.generate import generate_dataset, generate_rows
from mgsd.data.importers import import_visualplanning, import_vsp
from mgsd.data.io import DataError, decode_image, read_rows
from mgsd.tasks import TASK_NAMES, get_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generation_is_deterministic_unique_and_solved(name):
    task = get_task(name)
    a = generate_rows(task, task.levels[:2], 15, split="train", seed=7, progress=False)
    b = generate_rows(task, task.levels[:2], 15, split="train", seed=7, progress=False)
    c = generate_rows(task, task.levels[:2], 15, split="train", seed=8, progress=False)
    assert [r["state"] for r in a] == [r["state"] for r in b]
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert [r["state"] for r in a] != [r["state"] for r in c]
    assert len({r["state"] for r in a}) == len(a) == 30
    for r in a:
        state = task.load_state(r["state"])
        run = task.rollout(state, task.solve(state))
        assert run.success and len(task.solve(state)) == r["optimal_length"]
        assert decode_image(r["image"]).size == (256, 256)


def test_splits_never_share_states_and_exclude_decontaminates(tmp_path):
    task = get_task("maze")
    shared: set[str] = set()
    generate_dataset(
        task, [3], 300, split="test", seed=0, out=tmp_path / "test", exclude=shared, progress=False
    )
    generate_dataset(
        task, [3], 300, split="train", seed=0, out=tmp_path / "train", exclude=shared, progress=False
    )
    test = {r["state"] for r in read_rows(tmp_path / "test")}
    train = {r["state"] for r in read_rows(tmp_path / "train")}
    assert len(test) == len(train) == 300 and not test & train
    # --exclude: a fresh generation with the test set excluded avoids all of its states.
    generate_dataset(
        task,
        [3],
        300,
        split="val",
        seed=0,
        out=tmp_path / "val",
        exclude_dirs=[tmp_path / "test"],
        progress=False,
    )
    val = {r["state"] for r in read_rows(tmp_path / "val")}
    assert not val & test


def test_dataset_is_a_hugging_face_parquet_dataset(tmp_path):
    task = get_task("frozenlake")
    generate_dataset(task, [3, 4], 5, split="test", seed=1, out=tmp_path, progress=False)
    ds = load_dataset(
        "parquet", data_files=str(tmp_path / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(ds) == 10
    assert set(ds.column_names) >= {
        "id",
        "task",
        "level",
        "split",
        "state",
        "image",
        "optimal_plan",
        "optimal_length",
    }
    assert ds[0]["image"].size == (256, 256)  # decoded by the datasets Image feature
    assert json.loads(ds[0]["state"])["grid"]


def test_rows_are_written_as_pyarrow_would_write_them_and_bad_values_are_one_line(tmp_path, monkeypatch):
    """write_rows builds its Arrow columns from buffers (no pandas import): the table equals what
    pyarrow converts from the same Python values, nulls and chunk boundaries included, and a value of
    the wrong type is a DataError naming its column."""
    import pyarrow as pa

    import mgsd.data.io as io

    monkeypatch.setattr(io, "_CHUNK_ROWS", 3)  # several chunks from a few rows
    rows = [
        {
            "id": f"x/{i}",
            "task": "maze",
            "level": i - 3,
            "split": "test",
            "state": "{}",
            "image": b"\x89PNG" * i,
            "optimal_plan": None if i == 4 else "UR" * i,
            "optimal_length": None if i == 2 else 2 * i,
            "source": "é" * i,
        }
        for i in range(7)
    ]
    io.write_rows(rows, tmp_path / "x.parquet")
    cols = {k: [r[k] for r in rows] for k in io.COLUMNS}
    cols["image"] = [{"bytes": b, "path": None} for b in cols["image"]]
    expected = pa.Table.from_pydict(cols, schema=io._schema())
    assert pq_table(tmp_path / "x.parquet").equals(expected)
    assert read_rows([tmp_path / "x.parquet"])[4]["optimal_plan"] is None
    for column, value in (("level", "3"), ("optimal_plan", 5), ("image", "not bytes"), ("level", 2**40)):
        bad = [dict(rows[0], **{column: value})]
        with pytest.raises(DataError, match=f"column {column}"):
            io.write_rows(bad, tmp_path / "bad.parquet")
    io.write_rows([], tmp_path / "empty.parquet")
    assert pq_table(tmp_path / "empty.parquet").num_rows == 0


def pq_table(path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read()


def test_dataset_card_declares_every_task_and_split_and_loads_by_config(tmp_path):
    data = tmp_path / "data"
    generate_dataset(get_task("frozenlake"), [3], 4, split="train", seed=1, out=data, progress=False)
    generate_dataset(get_task("maze"), [3], 3, split="train", seed=1, out=data, progress=False)
    generate_dataset(
        get_task("maze"), [3], 2, split="test", seed=1, out=data, exclude_dirs=[data], progress=False
    )
    card = (data / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "- config_name: maze" in card
    assert "| maze-test.parquet | maze | test | 3 | 2 | 1 | 2 |" in card  # generator settings and rows
    assert not list(data.glob(".*.tmp"))
    cache = str(tmp_path / "cache")
    everything = load_dataset(str(data), "all", cache_dir=cache)
    assert {k: len(v) for k, v in everything.items()} == {"train": 7, "test": 2}
    maze = load_dataset(str(data), "maze", cache_dir=cache)
    assert {k: len(v) for k, v in maze.items()} == {"train": 3, "test": 2}
    assert set(maze["test"]["task"]) == {"maze"}


def test_exhausted_level_fails_clearly():
    task = get_task("frozenlake")
    with pytest.raises(ValueError, match="unique"):
        generate_rows(task, [3], 100_000, split="x", seed=0, render=False, progress=False)


def test_import_vsp_keeps_pngs_and_scores(shared_data, tmp_path):
    path = import_vsp(shared_data / "vsp_examples", tmp_path, progress=False)
    rows = read_rows(path)
    assert {r["level"] for r in rows} == {3, 4, 5, 6, 7, 8}
    first = next(r for r in rows if r["id"] == "vsp/level3/0")
    # the original PNG (192x192 at level 3) as the paper shows it: RGB, LANCZOS-resized to 256x256
    png = Image.open(shared_data / "vsp_examples/level3/img/0.png").convert("RGB")
    assert decode_image(first["image"]) == png.resize((256, 256), Image.LANCZOS)
    kept = read_rows(
        import_vsp(shared_data / "vsp_examples", tmp_path / "kept", progress=False, image_size=None)
    )
    assert kept[0]["image"] == (shared_data / "vsp_examples/level3/img/0.png").read_bytes()
    assert first["optimal_length"] == 2  # the example's answer is R,D


def test_import_vsp_missing_file_is_one_clear_error(shared_data, tmp_path):
    broken = tmp_path / "vsp"
    shutil.copytree(shared_data / "vsp_examples", broken)
    (broken / "level4" / "table" / "3.txt").unlink()
    with pytest.raises(DataError, match=r"missing .*level4.*table.*3\.txt"):
        import_vsp(broken, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "frozenlake-vsp.parquet").exists()


@pytest.mark.parametrize("name", ["frozenlake", "minibehaviour"])
def test_import_visualplanning(shared_data, tmp_path, name):
    src = shared_data / "visualplanning_samples" / f"{name}_test_first5.jsonl"
    rows = read_rows(import_visualplanning(src, name, tmp_path, progress=False))
    assert len(rows) == 5
    lines = [json.loads(x) for x in src.read_text().splitlines()]
    for r, line in zip(rows, lines, strict=True):
        # VisualPlanning's input_state is the optimal trajectory: its length - 1 is the optimal plan length.
        assert r["optimal_length"] == len(line["input_state"]) - 1
        tail = line["meta"].get("idx", f"line{lines.index(line) + 1}")
        assert r["id"] == f"visualplanning/{name}/level{line['meta']['level']}/{tail}"


def test_import_visualplanning_rejects_wrong_task(shared_data, tmp_path):
    src = shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl"
    with pytest.raises(DataError, match=":1: not a VisualPlanning maze row"):
        import_visualplanning(src, "maze", tmp_path, progress=False)


def test_cli_generate_eval_oracle_and_predictions(tmp_path, capsys):
    out = tmp_path / "d"
    assert (
        main(
            [
                "data",
                "generate",
                "--task",
                "maze",
                "--levels",
                "3-4",
                "--per-level",
                "4",
                "--split",
                "test",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["eval", "plans", "--data", str(out), "--oracle", "--out", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 8 and m["success"] == 1.0 and m["optimal"] == 1.0 and m["macro"]["success"] == 1.0
    rows = read_rows(out)
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        json.dumps({"id": rows[0]["id"], "response": f"<answer>{rows[0]['optimal_plan']}</answer>"}) + "\n"
    )
    assert (
        main(["eval", "plans", "--data", str(out), "--predictions", str(preds), "--out", str(tmp_path / "f")])
        == 0
    )
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert m["success"] == pytest.approx(1 / 8) and m["parse_failure"] == pytest.approx(7 / 8)
    assert m["missing_predictions"] == 7
    samples = [json.loads(x) for x in (tmp_path / "f" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and sum(s["success"] for s in samples) == 1
    # an id the dataset does not have is an error, not a silent skip
    preds.write_text(json.dumps({"id": "nope", "response": "<answer>U</answer>"}) + "\n")
    assert (
        main(["eval", "plans", "--data", str(out), "--predictions", str(preds), "--out", str(tmp_path / "g")])
        == 2
    )
    assert "not in the dataset" in capsys.readouterr().err
    assert not (tmp_path / "g" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "generate", "--task", "chess", "--per-level", "1", "--out", "X"], "unknown task 'chess'"),
        (
            ["data", "generate", "--task", "maze", "--levels", "9", "--per-level", "1", "--out", "X"],
            "level 9 is out of range for maze",
        ),
        (["eval", "plans", "--data", "does-not-exist", "--oracle", "--out", "X"], "dataset not found"),
        (["data", "import", "vsp", "does-not-exist", "--out", "X"], "VSP folder not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mgsd.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], proc.stderr


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read"):
        read_rows(tmp_path)


def test_generation_does_not_depend_on_worker_count():
    task = get_task("minibehaviour")
    one = generate_rows(task, [5, 6], 40, split="test", seed=2, progress=False, workers=1)
    two = generate_rows(task, [5, 6], 40, split="test", seed=2, progress=False, workers=2)
    assert one == two


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_generate_leaves_no_orphaned_workers(tmp_path):
    import os
    import signal
    import subprocess

    script = (
        "from mgsd.data.generate import generate_rows\n"
        "from mgsd.tasks import get_task\n"
        "generate_rows(get_task('maze'), [5, 6], 100000, split='x', seed=0, progress=False, workers=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    children: list[int] = []
    for _ in range(600):  # bounded wait (up to 60 s) for both workers to start
        if children_file.exists():
            children = [int(c) for c in children_file.read_text().split()]
        if len(children) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert len(children) >= 2, "the workers never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    alive = children
    for _ in range(300):  # bounded wait (up to 30 s) for the kernel to end them
        alive = [c for c in alive if Path(f"/proc/{c}").exists() and "Z" not in _state(c)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
