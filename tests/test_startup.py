"""The light sub-commands start without the heavy libraries (issue #12: start-up); writing and
reading datasets does not import pandas (pyarrow would, to convert Python lists: ~0.2 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs mgsd's main() in a fresh interpreter and prints which heavy modules it imported.
_PROBE = """
import sys
from mgsd.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print("RC", rc)
HEAVY = ("torch", "transformers", "matplotlib", "datasets", "pandas")
print("HEAVY", sorted(m for m in HEAVY if m in sys.modules))
"""


def _run(*args: str) -> tuple[str, list[str]]:
    p = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True)
    lines = p.stdout.splitlines()
    rc = next(x for x in lines if x.startswith("RC ")).split()[1]
    heavy = eval(next(x for x in lines if x.startswith("HEAVY ")).split(" ", 1)[1])
    return rc, heavy


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["data", "generate", "--help"],
        ["eval", "model", "--help"],
        ["run", "--help"],
    ],
)
def test_parsing_imports_no_heavy_library(args: list[str]) -> None:
    assert _run(*args) == ("0", [])


def test_generating_and_scoring_data_import_no_model_library(tmp_path) -> None:
    data = tmp_path / "d"
    gen = ["data", "generate", "--task", "maze", "--levels", "3", "--per-level", "2", "--out", str(data)]
    assert _run(*gen) == ("0", [])
    assert (data / "maze-train.parquet").is_file()
    plans = [
        "eval",
        "plans",
        "--oracle",
        "--data",
        str(data / "maze-train.parquet"),
        "--out",
        str(tmp_path / "e"),
    ]
    assert _run(*plans) == ("0", [])
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_version_fast_path_matches_the_parser() -> None:
    from mgsd import __version__

    p = subprocess.run(
        [sys.executable, "-m", "mgsd.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert p.stdout.strip() == f"mgsd {__version__}"


def test_cli_sets_a_passive_openmp_wait_policy_unless_one_is_set() -> None:
    import os

    # A command that fails fast (no such dataset): main() returns, then the policy is printed.
    probe = (
        "import os, sys; from mgsd.cli import main; main(sys.argv[1:]); print(os.environ['OMP_WAIT_POLICY'])"
    )
    args = ["eval", "plans", "--oracle", "--data", "no-such-dataset", "--out", "x"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if given:
            env["OMP_WAIT_POLICY"] = given
        p = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True)
        assert p.stdout.strip().splitlines()[-1] == want
