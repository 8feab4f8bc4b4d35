"""External test sets: importer ids and checks, hand-written plans against an independent solver,
`mgsd run`'s up-front check, and `mgsd eval benchmark` end to end with a scripted backend."""

from __future__ import annotations

import json
import random
import shutil
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from mgsd.backends.base import GenerationConfig, Reply
from mgsd.cli import main
from mgsd.data.importers import check_imported, import_visualplanning, import_vsp, manifest_path
from mgsd.data.io import DataError, read_rows, write_rows
from mgsd.eval.benchmark import prepare_set, run_benchmark
from mgsd.files import read_jsonl
from mgsd.scoring.plans import score_response
from mgsd.tasks import get_task

MOVE = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
BACK = {"U": "D", "D": "U", "L": "R", "R": "L"}
WALL = {"U": 1, "D": 2, "L": 4, "R": 8}  # N, S, W, E as in the reference layout masks


# -- an independent simulator and BFS solver, written from the rules in TASKS.md -----------------------


def _step(task: str, st: dict[str, Any], sim: Any, a: str) -> tuple[Any, str]:
    """(next simulator state, "ok" | "success" | "invalid")."""
    if task == "minibehaviour":
        (r, c), carrying = sim
        n, printer, table = st["size"], tuple(st["printer"]), {tuple(x) for x in st["table"]}
        if a == "PICK":
            ok = not carrying and abs(r - printer[0]) + abs(c - printer[1]) == 1
            return (((r, c), True), "ok") if ok else (sim, "invalid")
        if a == "DROP":
            near = any(abs(r - tr) + abs(c - tc) == 1 for tr, tc in table)
            return (sim, "success") if carrying and near else (sim, "invalid")
        if a not in MOVE:
            return sim, "invalid"
        nr, nc = r + MOVE[a][0], c + MOVE[a][1]
        if not (0 <= nr < n and 0 <= nc < n) or (nr, nc) in table or (not carrying and (nr, nc) == printer):
            return sim, "invalid"
        return ((nr, nc), carrying), "ok"
    if a not in MOVE:
        return sim, "invalid"
    r, c = sim
    nr, nc = r + MOVE[a][0], c + MOVE[a][1]
    if task == "maze":
        if st["walls"][r][c] & WALL[a]:
            return sim, "invalid"
        return (nr, nc), "success" if [nr, nc] == st["goal"] else "ok"
    grid = st["grid"]
    if not (0 <= nr < len(grid) and 0 <= nc < len(grid)) or grid[nr][nc] == "H":
        return sim, "invalid"
    return (nr, nc), "success" if grid[nr][nc] == "G" else "ok"


def _start(task: str, st: dict[str, Any]) -> Any:
    if task == "minibehaviour":
        return (tuple(st["agent"]), False)
    if task == "maze":
        return tuple(st["start"])
    return next((r, row.index("S")) for r, row in enumerate(st["grid"]) if "S" in row)


def _actions(task: str) -> list[str]:
    return [*MOVE, "PICK", "DROP"] if task == "minibehaviour" else list(MOVE)


def _run(task: str, st: dict[str, Any], plan: list[str]) -> str:
    sim = _start(task, st)
    for a in plan:
        sim, status = _step(task, st, sim, a)
        if status != "ok":
            return status
    return "incomplete"


def _bfs(task: str, st: dict[str, Any], goal: Any = None) -> list[str] | None:
    """A shortest plan to success, or (``goal``: a predicate on simulator states) to such a state."""
    start = _start(task, st)
    parent: dict[Any, tuple[Any, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        if goal is not None and goal(s):
            plan = []
            while parent[s] is not None:
                s, a = parent[s]
                plan.append(a)
            return plan[::-1]
        for a in _actions(task):
            t, status = _step(task, st, s, a)
            if status == "success" and goal is None:
                plan = [a]
                while parent[s] is not None:
                    s, prev = parent[s]
                    plan.append(prev)
                return plan[::-1]
            if status == "ok" and t not in parent:
                parent[t] = (s, a)
                queue.append(t)
    return None


def _size(task: str, st: dict[str, Any]) -> int:
    return len(st["grid"]) if task == "frozenlake" else st["size"]


def _hand_written(task: str, st: dict[str, Any]) -> dict[str, list[str]]:
    """Plans of every kind the issue names, built with the independent solver."""
    best = _bfs(task, st)
    assert best is not None
    plans = {"optimal": best}
    sim0 = _start(task, st)
    for a in MOVE:
        t, status = _step(task, st, sim0, a)
        if status == "ok" and _step(task, st, t, BACK[a])[1] == "ok":
            plans["detour"] = [a, BACK[a], *best]
            break
    n = _size(task, st)

    def pos(s: Any) -> tuple[int, int]:
        return s[0] if task == "minibehaviour" else s

    for a, (dr, dc) in MOVE.items():  # walk to a border cell, then one step off the grid
        path = _bfs(
            task, st, lambda s, dr=dr, dc=dc: not (0 <= pos(s)[0] + dr < n and 0 <= pos(s)[1] + dc < n)
        )
        if path is not None:
            plans["off_grid"] = [*path, a]
            break
    if task == "frozenlake":
        holes = {(r, c) for r, row in enumerate(st["grid"]) for c, t in enumerate(row) if t == "H"}
        for a, (dr, dc) in MOVE.items():
            path = _bfs(task, st, lambda s, dr=dr, dc=dc: (s[0] + dr, s[1] + dc) in holes)
            if path is not None:
                plans["into_hole"] = [*path, a]
                break
    if task == "minibehaviour":
        plans["drop_without_carrying"] = ["DROP", *best]
        plans["never_dropping"] = best[:-1]
    return plans


def _check_row(row: dict[str, Any]) -> set[str]:
    """Score every hand-written plan of one imported row and compare with the independent solver."""
    task = get_task(row["task"])
    st = json.loads(row["state"])
    best = _bfs(row["task"], st)
    assert best is not None and len(best) == row["optimal_length"], row["id"]
    kinds = set()
    for kind, plan in _hand_written(row["task"], st).items():
        expected = _run(row["task"], st, plan)
        got = score_response(
            task,
            task.load_state(row["state"]),
            f"<answer>{task.format_plan(plan)}</answer>",
            sample_id=row["id"],
            optimal_length=row["optimal_length"],
        )
        assert got.success == (expected == "success"), (row["id"], kind, plan)
        assert got.invalid == (expected == "invalid"), (row["id"], kind, plan)
        assert got.optimal == (expected == "success" and len(plan) == len(best)), (row["id"], kind)
        assert not got.parse_failure
        kinds.add(kind)
        if kind == "optimal":
            assert got.optimal and got.progress == 1.0
        if kind in ("off_grid", "into_hole", "drop_without_carrying"):
            assert got.invalid and not got.success, (row["id"], kind)
        if kind == "detour":
            assert got.success and not got.optimal
        if kind == "never_dropping":
            assert got.reason == "incomplete"
    for garbage in ("no plan here", "<answer>banana split</answer>", "<answer></answer>"):
        got = score_response(
            task,
            task.load_state(row["state"]),
            garbage,
            sample_id=row["id"],
            optimal_length=row["optimal_length"],
        )
        assert got.parse_failure and not got.success and not got.optimal, (row["id"], garbage)
    return kinds


# -- source files built for the tests -----------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def minibehaviour_two_levels(shared_data: Path, tmp_path: Path) -> Path:
    """The five shared MiniBehaviour rows (level 5) and the same rooms as level 6 with the same idx,
    as in the real file, whose idx numbers samples per level."""
    rows = _lines(shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl")
    lifted = [
        {"meta": {k: r["meta"][k] for k in ("start_pos", "printer_pos", "table_pos", "idx")} | {"level": 6}}
        for r in rows
    ]
    return _write_jsonl(tmp_path / "minibehaviour_test.jsonl", rows + lifted)


def maze_visualplanning_file(tmp_path: Path, n: int = 8) -> Path:
    """A Maze test file in the VisualPlanning meta schema (layout of wall dicts, flat start/target ids,
    distance_map to the target, level; no idx), from generated mazes, with the optimal trajectory."""
    task = get_task("maze")
    records = []
    for i in range(n):
        level = task.levels[i % len(task.levels)]
        st = task.generate(level, random.Random(i))
        walls = st["walls"]
        layout = [
            [{k: bool(m & b) for k, b in (("north", 1), ("south", 2), ("west", 4), ("east", 8))} for m in row]
            for row in walls
        ]
        goal = tuple(st["goal"])
        dist = {goal: 0}
        queue = deque([goal])
        while queue:  # BFS distance to the target, written independently of the task module
            r, c = queue.popleft()
            for a, (dr, dc) in MOVE.items():
                if not walls[r][c] & WALL[a] and (r + dr, c + dc) not in dist:
                    dist[(r + dr, c + dc)] = dist[(r, c)] + 1
                    queue.append((r + dr, c + dc))
        flat = {str(r * level + c): d for (r, c), d in dist.items()}
        path = _bfs("maze", st)
        cells, cell = [tuple(st["start"])], tuple(st["start"])
        for a in path:
            cell = (cell[0] + MOVE[a][0], cell[1] + MOVE[a][1])
            cells.append(cell)
        meta = {
            "layout": layout,
            "start_pos": st["start"][0] * level + st["start"][1],
            "target_pos": goal[0] * level + goal[1],
            "distance_map": flat,
            "level": level,
        }
        records.append({"input_state": str([r * level + c for r, c in cells]), "meta": meta})
    return _write_jsonl(tmp_path / "maze_test.jsonl", records)


# -- importers ----------------------------------------------------------------------------------------


def test_minibehaviour_idx_repeating_across_levels_gets_unique_ids_and_scores(shared_data, tmp_path, capsys):
    src = minibehaviour_two_levels(shared_data, tmp_path)
    rows = read_rows(import_visualplanning(src, "minibehaviour", tmp_path / "data", progress=False))
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) == 10
    assert (
        "visualplanning/minibehaviour/level5/504" in ids and "visualplanning/minibehaviour/level6/504" in ids
    )
    assert {r["level"] for r in rows} == {5, 6}
    # the ids are stable: a second import gives the same ones
    again = read_rows(import_visualplanning(src, "minibehaviour", tmp_path / "again", progress=False))
    assert [r["id"] for r in again] == ids
    preds = tmp_path / "preds.jsonl"
    _write_jsonl(preds, [{"id": r["id"], "response": f"<answer>{r['optimal_plan']}</answer>"} for r in rows])
    assert (
        main(
            [
                "eval",
                "plans",
                "--data",
                str(tmp_path / "data"),
                "--predictions",
                str(preds),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["success"] == 1.0 and metrics["optimal"] == 1.0
    assert set(metrics["by_task_level"]) == {"minibehaviour/5", "minibehaviour/6"}


def test_colliding_ids_are_refused_naming_the_first_collision(shared_data, tmp_path):
    rows = _lines(shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl")
    src = _write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[1], rows[0], rows[1]])
    with pytest.raises(
        DataError,
        match=r"dup\.jsonl:3: sample id 'visualplanning/minibehaviour/level5/504' collides with line 1",
    ):
        import_visualplanning(src, "minibehaviour", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="collides"):  # a broken file is never "skipped"
        import_visualplanning(src, "minibehaviour", tmp_path / "out", progress=False, skip_bad=True)
    assert not list(tmp_path.glob("out/*.parquet"))


def test_bad_rows_are_one_clear_error_or_counted_with_skip_bad(shared_data, tmp_path, capsys):
    rows = _lines(shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl")
    short = dict(rows[3], input_state=rows[3]["input_state"][:-1])  # one state short
    src = _write_jsonl(tmp_path / "bad.jsonl", [rows[0], rows[1], "{not json", rows[2], short])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not a VisualPlanning minibehaviour row"):
        import_visualplanning(src, "minibehaviour", tmp_path / "out", progress=False)
    src2 = _write_jsonl(tmp_path / "bad2.jsonl", [rows[0], short])
    with pytest.raises(DataError, match=r"bad2\.jsonl:2: input_state does not replay on the parsed state"):
        import_visualplanning(src2, "minibehaviour", tmp_path / "out", progress=False)
    # a trajectory that contradicts the state (the printer moved) is a misread row, not a sample
    moved = dict(rows[0], meta=dict(rows[0]["meta"], printer_pos=[0, 4]))
    bad3 = _write_jsonl(tmp_path / "bad3.jsonl", [moved])
    with pytest.raises(DataError, match=r"bad3\.jsonl:1: input_state does not replay"):
        import_visualplanning(bad3, "minibehaviour", tmp_path / "o", progress=False)
    # a valid reference longer than the optimum is kept and counted (the BFS optimum is what we score)
    first = rows[0]["input_state"]  # starts at (2,4), level 5; (1,4) is free
    longer = dict(rows[0], input_state=[first[0], [[1, 4], False], *first])
    path = import_visualplanning(
        _write_jsonl(tmp_path / "long.jsonl", [longer]), "minibehaviour", tmp_path / "l", progress=False
    )
    assert json.loads(manifest_path(path).read_text())["checks"]["input_state_longer_than_optimal"] == 1
    assert (
        main(
            [
                "data",
                "import",
                "visualplanning",
                str(src),
                "--task",
                "minibehaviour",
                "--out",
                str(tmp_path / "ok"),
                "--skip-bad",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 3 samples" in printed and "skipped 2 bad row(s)" in printed
    (parquet,) = (tmp_path / "ok").glob("*.parquet")
    log = json.loads(manifest_path(parquet).read_text())
    assert log["rows"] == 3 and [s["line"] for s in log["skipped"]] == ["3", "5"]
    assert len(read_rows(parquet)) == 3


def test_visualplanning_maze_format_imports(tmp_path):
    src = maze_visualplanning_file(tmp_path)
    rows = read_rows(import_visualplanning(src, "maze", tmp_path / "out", progress=False))
    assert [r["id"] for r in rows] == [f"visualplanning/maze/level{3 + i % 4}/line{i + 1}" for i in range(8)]
    task = get_task("maze")
    for r, line in zip(rows, _lines(src), strict=True):
        st = task.load_state(r["state"])
        n = st["size"]
        assert st["start"] == list(divmod(line["meta"]["start_pos"], n))
        assert st["goal"] == list(divmod(line["meta"]["target_pos"], n))
        assert r["optimal_length"] == line["meta"]["distance_map"][str(line["meta"]["start_pos"])]
    (parquet,) = (tmp_path / "out").glob("*.parquet")
    assert json.loads(manifest_path(parquet).read_text())["checks"] == {"input_state": 8, "distance_map": 8}
    lines = _lines(src)
    lines[2]["meta"]["distance_map"][str(lines[2]["meta"]["start_pos"])] += 1
    with pytest.raises(DataError, match=r"maze_test\.jsonl:3: distance_map gives the start distance"):
        import_visualplanning(_write_jsonl(src, lines), "maze", tmp_path / "out2", progress=False)


def _vsp_copy(shared_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "vsp"
    shutil.copytree(shared_data / "vsp_examples", dst)
    return dst


def test_vsp_rows_out_of_order_are_placed_by_number(shared_data, tmp_path):
    vsp = _vsp_copy(shared_data, tmp_path)
    for level, stem in ((3, 0), (8, 3)):
        table = vsp / f"level{level}" / "table" / f"{stem}.txt"
        header, *body = table.read_text().splitlines()
        table.write_text("\n".join([header, *reversed(body)]) + "\n")
    shuffled = {r["id"]: r["state"] for r in read_rows(import_vsp(vsp, tmp_path / "a", progress=False))}
    original = {
        r["id"]: r["state"]
        for r in read_rows(import_vsp(shared_data / "vsp_examples", tmp_path / "b", progress=False))
    }
    assert shuffled == original
    table = vsp / "level3" / "table" / "1.txt"
    table.write_text(table.read_text().replace("| Row 3 |", "| Row 2 |"))
    with pytest.raises(DataError, match=r"level3/table/1\.txt: VSP table lists 'Row 2' twice"):
        import_vsp(vsp, tmp_path / "c", progress=False)


def test_vsp_table_that_is_not_its_png_is_refused_or_skipped(shared_data, tmp_path):
    vsp = _vsp_copy(shared_data, tmp_path)
    lvl = vsp / "level4"
    for sub in ("table", "pure_text"):  # swap map 0 and map 1's descriptions; the PNGs stay
        a, b = lvl / sub / "0.txt", lvl / sub / "1.txt"
        ta, tb = a.read_text(), b.read_text()
        a.write_text(tb)
        b.write_text(ta)
    with pytest.raises(DataError, match=r"level4/table/0\.txt: the table does not match the PNG"):
        import_vsp(vsp, tmp_path / "out", progress=False)
    rows = read_rows(import_vsp(vsp, tmp_path / "out", progress=False, skip_bad=True))
    assert len(rows) == 46 and "vsp/level4/0" not in {r["id"] for r in rows}
    log = json.loads(manifest_path(tmp_path / "out" / "frozenlake-vsp.parquet").read_text())
    assert [s["id"] for s in log["skipped"]] == ["vsp/level4/0", "vsp/level4/1"]
    # a table whose pure_text disagrees is refused as well
    (lvl / "pure_text" / "0.txt").write_text(
        (shared_data / "vsp_examples/level4/pure_text/0.txt").read_text()
    )
    (lvl / "table" / "0.txt").write_text((shared_data / "vsp_examples/level4/table/1.txt").read_text())
    with pytest.raises(DataError, match="pure_text says"):
        import_vsp(vsp, tmp_path / "out2", progress=False)


def test_hand_written_plans_agree_with_an_independent_solver_on_every_imported_row(shared_data, tmp_path):
    paths = [
        import_vsp(shared_data / "vsp_examples", tmp_path / "vsp", progress=False),
        import_visualplanning(
            shared_data / "visualplanning_samples" / "frozenlake_test_first5.jsonl",
            "frozenlake",
            tmp_path / "fl",
            progress=False,
        ),
        import_visualplanning(
            minibehaviour_two_levels(shared_data, tmp_path), "minibehaviour", tmp_path / "mb", progress=False
        ),
        import_visualplanning(maze_visualplanning_file(tmp_path), "maze", tmp_path / "mz", progress=False),
    ]
    rows = read_rows(paths)
    assert len(rows) == 48 + 5 + 10 + 8
    kinds: dict[str, set[str]] = {}
    for r in rows:
        kinds.setdefault(r["task"], set()).update(_check_row(r))
    assert kinds["frozenlake"] >= {"optimal", "detour", "off_grid", "into_hole"}
    assert kinds["maze"] >= {"optimal", "detour"}
    assert kinds["minibehaviour"] >= {
        "optimal",
        "detour",
        "off_grid",
        "drop_without_carrying",
        "never_dropping",
    }


# -- mgsd run checks external sets first --------------------------------------------------------------


def test_run_checks_external_sets_before_any_training(shared_data, tmp_path, monkeypatch):
    import mgsd.pipeline.run as pipeline  # the module whose build_data and train_stage run_pipeline calls

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data generation or training started before the external sets were checked")

    monkeypatch.setattr(pipeline, "build_data", fail)
    monkeypatch.setattr(pipeline, "train_stage", fail)
    cfg = pipeline.PipelineConfig(progress=False)
    rows = _lines(shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl")
    dup = _write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[0]])
    with pytest.raises(DataError, match="collides with line 1"):
        pipeline.run_pipeline(cfg, tmp_path / "run", {"visualplanning-minibehaviour": str(dup)})
    # an import left by an older mgsd with colliding ids is caught too (it is not re-imported)
    stale = tmp_path / "run2" / "data" / "external" / "visualplanning-minibehaviour"
    sample = shared_data / "visualplanning_samples" / "minibehaviour_test_first5.jsonl"
    good = read_rows(import_visualplanning(sample, "minibehaviour", tmp_path / "tmp", progress=False))
    write_rows([good[0], good[0]], stale / "minibehaviour-visualplanning.parquet")
    (stale / "COMPLETE").write_text("ok\n")
    with pytest.raises(
        DataError, match=r"external test set 'visualplanning-minibehaviour'.*duplicate sample id"
    ):
        pipeline.run_pipeline(cfg, tmp_path / "run2", {"visualplanning-minibehaviour": str(dup)})
    assert check_imported({"x": tmp_path / "tmp"}) == {"x": 5}


# -- mgsd eval benchmark ------------------------------------------------------------------------------


class ScriptedBackend:
    """Answers each query id with a fixed response (the optimal plan, unless told otherwise)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.calls, self.configs = answers, 0, []

    def generate(self, queries, cfg):
        self.calls += len(queries)
        self.configs.append(cfg)
        return [Reply(self.answers.get(q.id, "no idea"), tokens=5) for q in queries]

    def describe(self) -> dict[str, Any]:
        return {"type": "scripted"}


def _sources(shared_data: Path, tmp_path: Path) -> dict[str, Path]:
    return {
        "vsp": shared_data / "vsp_examples",
        "visualplanning-maze": maze_visualplanning_file(tmp_path),
        "visualplanning-minibehaviour": minibehaviour_two_levels(shared_data, tmp_path),
    }


def _oracle(sources: dict[str, Path], cache: Path) -> dict[str, str]:
    answers = {}
    for name, src in sources.items():
        for r in read_rows(prepare_set(name, src, cache, progress=False).data):
            answers[r["id"]] = f"I see it.\n<answer>{r['optimal_plan']}</answer>"
    return answers


def test_benchmark_writes_the_papers_table_keeping_the_level_mix(shared_data, tmp_path):
    sources = _sources(shared_data, tmp_path)
    cache = tmp_path / "cache"
    answers = _oracle(sources, cache)
    wrong = "visualplanning/minibehaviour/level6/28"
    answers[wrong] = "<answer>DROP</answer>"
    backend = ScriptedBackend(answers)
    vsp_import = cache / next(p.name for p in cache.iterdir() if p.name.startswith("vsp-")) / "import"
    result = run_benchmark(
        backend,
        sources,
        tmp_path / "out",
        model="scripted",
        limit=2,
        cache_dir=cache,
        seen=[vsp_import],
        progress=False,
    )
    m = result["metrics"]
    assert {k: v["n"] for k, v in m["by_task_level"].items()} == {
        **{f"frozenlake/{lv}": 2 for lv in range(3, 9)},
        **{f"maze/{lv}": 2 for lv in range(3, 7)},  # 8 rows over 4 levels: 2 each
        "minibehaviour/5": 2,
        "minibehaviour/6": 2,
    }
    assert backend.configs[0].max_new_tokens == 4096 and backend.configs[0].temperature == 0.0
    assert m["by_task"]["frozenlake"]["success"] == 1.0 and m["by_task"]["maze"]["optimal"] == 1.0
    mb = m["by_task"]["minibehaviour"]
    assert mb["success"] == 0.75 and mb["invalid"] == 0.25
    assert m["by_task_level"]["minibehaviour/6"]["success"] == 0.5
    # the paper's all-task macro: the mean of the three sample-weighted task accuracies
    assert result["all_tasks_macro"]["success"] == pytest.approx((1 + 1 + 0.75) / 3)
    lo, hi = result["all_tasks_macro"]["ci"]["success"]
    assert lo <= result["all_tasks_macro"]["success"] <= hi
    assert result["sets"]["vsp"]["overlap"] == {"n": 12, "seen_in_training": 12}
    assert result["training_states"]["known"]
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| minibehaviour | 6 | 2 | 50.0 |" in table and "task macro by level" in table
    assert "macro (paper: mean of task scores)" in table
    assert (
        json.loads((tmp_path / "out" / "benchmark.json").read_text())["generation"]["max_new_tokens"] == 4096
    )
    # a rerun resumes from the caches: nothing is generated again
    calls = backend.calls
    again = run_benchmark(
        backend, sources, tmp_path / "out", model="scripted", limit=2, cache_dir=cache, progress=False
    )
    assert backend.calls == calls and again["metrics"]["success"] == m["success"]
    assert again["sets"]["vsp"]["overlap"]["seen_in_training"] is None  # nothing known about a scripted model


def test_benchmark_views_and_stale_results(shared_data, tmp_path):
    from mgsd.data.io import decode_image

    cache = tmp_path / "cache"
    original = prepare_set("vsp", shared_data / "vsp_examples", cache, progress=False)
    rerender = prepare_set("vsp", shared_data / "vsp_examples", cache, rerender=True, progress=False)
    a, b = read_rows(original.data), read_rows(rerender.data)
    assert [r["state"] for r in a] == [r["state"] for r in b]
    assert all(decode_image(r["image"]).size == (256, 256) for r in a + b)
    first = next(r for r in a if r["id"] == "vsp/level5/0")
    raw = decode_image((shared_data / "vsp_examples/level5/img/0.png").read_bytes())
    from PIL import Image

    assert decode_image(first["image"]) == raw.resize((256, 256), Image.LANCZOS)  # the paper's resize
    # the import is cached by content: a second prepare does not import again
    stamp = (original.data.parent / "import" / "frozenlake-vsp.parquet").stat().st_mtime_ns
    prepare_set("vsp", shared_data / "vsp_examples", cache, progress=False)
    assert (original.data.parent / "import" / "frozenlake-vsp.parquet").stat().st_mtime_ns == stamp
    # results of another version of the test set are never mixed into an output directory
    vsp = _vsp_copy(shared_data, tmp_path)
    backend = ScriptedBackend({})
    run_benchmark(backend, {"vsp": vsp}, tmp_path / "out", limit=1, cache_dir=cache, progress=False)
    shutil.rmtree(vsp / "level8")
    with pytest.raises(ValueError, match="another version of this test set"):
        run_benchmark(backend, {"vsp": vsp}, tmp_path / "out", limit=1, cache_dir=cache, progress=False)
    res = run_benchmark(
        backend, {"vsp": vsp}, tmp_path / "out", limit=1, rerender=True, cache_dir=cache, progress=False
    )
    assert "vsp-rerender" in res["sets"] and res["metrics"]["parse_failure"] == 1.0


def test_benchmark_cli_uses_the_papers_token_budgets(shared_data, tmp_path, monkeypatch, capsys):
    import mgsd.backends.factory as factory

    seen: list[GenerationConfig] = []

    class Recording(ScriptedBackend):
        def generate(self, queries, cfg):
            seen.append(cfg)
            return super().generate(queries, cfg)

    monkeypatch.setattr(factory, "open_backend", lambda *a, **k: Recording({}))
    src = minibehaviour_two_levels(shared_data, tmp_path)
    common = [
        "eval",
        "benchmark",
        "--visualplanning-minibehaviour",
        str(src),
        "--limit",
        "1",
        "--quiet",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main([*common, "--model", "m", "--out", str(tmp_path / "a")]) == 0
    assert (
        main(
            [*common, "--api-base", "http://127.0.0.1:9/v1", "--api-model", "x", "--out", str(tmp_path / "b")]
        )
        == 0
    )
    assert [c.max_new_tokens for c in seen] == [4096, 10240]
    out = capsys.readouterr().out
    assert "| minibehaviour | 5 | 1 |" in out and "benchmark.md" in out
    assert main(["eval", "benchmark", "--model", "m", "--out", str(tmp_path / "c")]) == 2
    assert main(["eval", "benchmark", "--vsp", str(tmp_path / "nope"), "--model", "m", "--out", "x"]) == 2
    assert "--vsp: " in capsys.readouterr().err


def test_benchmark_gap_attributes_each_failure(shared_data, tmp_path):
    sources = {"visualplanning-minibehaviour": minibehaviour_two_levels(shared_data, tmp_path)}
    cache = tmp_path / "cache"
    answers = _oracle(sources, cache)
    answers["visualplanning/minibehaviour/level6/28"] = "<answer>DROP</answer>"
    result = run_benchmark(
        ScriptedBackend(answers),
        sources,
        tmp_path / "out",
        limit=2,
        cache_dir=cache,
        gap=True,
        progress=False,
    )
    out = tmp_path / "out" / "visualplanning-minibehaviour"
    assert all((out / run / "samples.jsonl").is_file() for run in ("image", "text", "perception"))
    counts = result["gap"]["total"]["counts"]
    # the scripted answers are plans, never perception answers: the one failure is "both"
    assert counts["solved"] == 3 and counts["perception_and_reasoning"] == 1
    assert result["metrics"]["success"] == 0.75
    assert "Modality-gap attribution" in (tmp_path / "out" / "benchmark.md").read_text()


def test_vsp_table_parser_refuses_incomplete_tables():
    fl = get_task("frozenlake")
    head = "| | Col 1 | Col 2 | Col 3 |"
    rows = ["| Row 1 | @ | _ | _ |", "| Row 2 | _ | * | _ |", "| Row 3 | _ | # | # |"]
    assert fl.from_vsp_table("\n".join([head, rows[2], rows[0], rows[1]])) == {"grid": ["SFF", "FGF", "FHH"]}
    with pytest.raises(ValueError, match=r"rows are numbered \[1, 3\], expected 1..2"):
        fl.from_vsp_table("\n".join([head, rows[0], rows[2]]))
    with pytest.raises(ValueError, match="header has 3 columns for 2 rows"):
        fl.from_vsp_table("\n".join([head, "| Row 1 | @ | _ |", "| Row 2 | _ | * |"]))


class ImageEcho(ScriptedBackend):
    """Answers with a plan chosen by a hash of the image pixels: equal answers mean equal images."""

    def generate(self, queries, cfg):
        import hashlib

        from PIL import Image

        replies = []
        for q in queries:
            img = next(x for x in q.user if isinstance(x, Image.Image))
            h = hashlib.sha256(img.tobytes() + str(img.size).encode()).digest()[0]
            replies.append(Reply(f"<answer>{'LDRU'[h % 4]}{'LDRU'[h // 4 % 4]}</answer>", tokens=2))
        return replies


def test_run_external_rows_equal_the_benchmark_at_the_same_settings(shared_data, tmp_path):
    from mgsd.eval.model import evaluate_model
    from mgsd.pipeline import import_external

    spec = {"vsp": str(shared_data / "vsp_examples")}
    gen = GenerationConfig(max_new_tokens=16)
    dirs = import_external(spec, tmp_path / "run" / "external")  # what `mgsd run` evaluates
    run = evaluate_model(ImageEcho({}), [dirs["vsp"]], tmp_path / "run-eval", gen=gen, progress=False)
    bench = run_benchmark(
        ImageEcho({}), spec, tmp_path / "bench", gen=gen, cache_dir=tmp_path / "c", progress=False
    )
    a = {r["id"]: r["response"] for r in read_jsonl(tmp_path / "run-eval" / "samples.jsonl")}
    b = {r["id"]: r["response"] for r in read_jsonl(tmp_path / "bench" / "vsp" / "samples.jsonl")}
    assert a == b and len(set(a.values())) > 1  # same images, hence the same answers
    assert bench["metrics"]["by_task_level"] == run["by_task_level"]
    rerender = run_benchmark(
        ImageEcho({}),
        spec,
        tmp_path / "bench",
        gen=gen,
        cache_dir=tmp_path / "c",
        rerender=True,
        progress=False,
    )
    assert rerender["sets"]["vsp-rerender"]["n"] == 48
