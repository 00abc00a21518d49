"""Reproducibility: two runs with the same seed give the same results, and the book says
what produced it.

* ``mrlib.compare`` (``python -m mrlib compare RUN_A RUN_B``): unit tests on small run
  directories: it finds every changed number and string, ignores timings, treats NaN as
  equal to NaN, takes a tolerance, and names the file and the place.
* Slow: the smoke chain (all six notebooks, shrunk with ``-p``) run twice with the same
  seed into two run directories gives identical JSON and CSV results, timings aside.
* ``book/generated/run_info.md`` records the parameters, package versions, device and
  git commit.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import scratch_cli, shrunk_run_args
from mrlib.compare import TIMING_FIELDS, compare_runs
from mrlib.errors import MrlibError

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# --------------------------------------------------------------------------- compare_runs


def _run(d: Path, auc=0.75, psnr="31.25", seconds="0.5", extra=None) -> Path:
    (d / "mrnet").mkdir(parents=True)
    (d / "evaluation").mkdir()
    (d / "run.json").write_text(json.dumps({"preset": "smoke", "parameters": {"run_dir": str(d), "seed": 0}}))
    metrics = {"auc": auc, "auc_ci": [0.5, 1.0], "sensitivity": float("nan"), "seconds_per_volume": float(seconds)}
    metrics.update(extra or {})
    (d / "mrnet" / "metrics.json").write_text(json.dumps(metrics))
    (d / "evaluation" / "metrics.csv").write_text(
        "variant,acceleration,psnr,seconds\n" f"unweighted,4,{psnr},{seconds}\n" "gradcam,4,30.0,0.25\n"
    )
    return d


def test_identical_runs_in_two_directories_agree(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", seconds="9.75")  # timings differ, and so do the run_dir paths
    assert compare_runs(a, b) == []
    assert compare_runs(a, a) == []


def test_every_difference_is_named(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", auc=0.7500001, psnr="31.26", extra={"new": 1})
    diffs = compare_runs(a, b)
    assert "mrnet/metrics.json: $.auc: 0.75 != 0.7500001" in diffs
    assert "mrnet/metrics.json: $.new: only in the second run" in diffs
    assert "evaluation/metrics.csv: row 1 column psnr: '31.25' != '31.26'" in diffs
    assert len(diffs) == 3
    assert compare_runs(a, b, tolerance=1e-3, ignore=(*TIMING_FIELDS, "new")) == []
    assert compare_runs(a, b, tolerance=1e-6, ignore=(*TIMING_FIELDS, "new")) == [
        "evaluation/metrics.csv: row 1 column psnr: '31.25' != '31.26'"]


def test_timings_are_compared_when_not_ignored(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", seconds="2")
    diffs = compare_runs(a, b, ignore=())
    assert any("column seconds" in d for d in diffs) and any("seconds_per_volume" in d for d in diffs)


def test_structure_changes_and_missing_files(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    (b / "evaluation" / "metrics.csv").write_text("variant,acceleration,psnr,seconds\nunweighted,4,31.25,0.5\n")
    (b / "mrnet" / "metrics.json").write_text(json.dumps({"auc": 0.75, "auc_ci": [0.5], "sensitivity": None}))
    (a / "mrnet" / "history.json").write_text("[]")
    (a / "mrnet" / ".history.json.x.part").write_text("half")  # temporaries are not results
    diffs = compare_runs(a, b)
    assert "evaluation/metrics.csv: 2 rows != 1 rows" in diffs
    assert "mrnet/metrics.json: $.auc_ci: 2 items != 1 items" in diffs
    assert "mrnet/metrics.json: $.sensitivity: nan != None" in diffs
    assert f"mrnet/history.json: only in {a}" in diffs
    assert not any(".part" in d for d in diffs)


def test_nan_equals_nan_but_not_a_number(tmp_path):
    a = _run(tmp_path / "a", extra={"x": float("nan")})
    b = _run(tmp_path / "b", extra={"x": 1.0})
    assert compare_runs(a, b) == ["mrnet/metrics.json: $.x: nan != 1.0"]
    assert math.isnan(float("nan"))


def test_bad_arguments(tmp_path):
    a = _run(tmp_path / "a")
    with pytest.raises(MrlibError, match="is not a run directory"):
        compare_runs(a, tmp_path / "nope")
    (tmp_path / "empty1").mkdir()
    (tmp_path / "empty2").mkdir()
    with pytest.raises(MrlibError, match="holds no JSON or CSV"):
        compare_runs(tmp_path / "empty1", tmp_path / "empty2")
    with pytest.raises(MrlibError, match="--tolerance"):
        compare_runs(a, a, tolerance=-1)
    b = _run(tmp_path / "b")
    (b / "mrnet" / "metrics.json").write_text("{not json")
    with pytest.raises(MrlibError, match=r"metrics\.json: not valid JSON"):
        compare_runs(a, b)


def test_compare_command(tmp_path):
    a, b, c = _run(tmp_path / "a"), _run(tmp_path / "b"), _run(tmp_path / "c", auc=0.5)

    def compare(*args):
        return subprocess.run([PY, "-m", "mrlib", "compare", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    same = compare(a, b)
    assert same.returncode == 0 and "the runs agree" in same.stdout
    differ = compare(a, c)
    assert differ.returncode == 1
    assert "mrnet/metrics.json: $.auc: 0.75 != 0.5" in differ.stdout and "1 difference(s)" in differ.stdout
    assert compare(a, c, "--ignore", "auc").returncode == 0
    assert compare(a, c, "--tolerance", "0.5").returncode == 0
    missing = compare(a, tmp_path / "nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope'}: is not a run directory")


# --------------------------------------------------------------------------- run_info.md


def _run_info_text(path: Path, stamp: dict) -> str:
    from mrlib.pipeline import write_run_info

    write_run_info(path, stamp)
    return path.read_text()


def _check_run_info(text: str, commit: str | None) -> None:
    import torch
    from importlib.metadata import version

    assert "--preset smoke" in text
    assert "| `seed` | `0` |" in text and "| `unet_epochs` | `2` |" in text
    assert f"| torch | {version('torch')} |" in text and f"| fastmri | {version('fastmri')} |" in text
    assert "| papermill |" in text and "| numpy |" in text
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU ("
    assert f"on {device}" in text
    assert "Python " in text
    if commit:
        assert f"at git commit `{commit}" in text


def _stamp(tmp_path: Path) -> dict:
    from mrlib.pipeline import claim_run_dir

    return claim_run_dir(tmp_path / "run", "smoke", {"seed": 0, "unet_epochs": 2, "run_dir": "x"}, ["01_data"])


def test_run_info_records_parameters_versions_device_and_commit(tmp_path):
    # parents[2] of the page is where git is asked: put it under the checkout's (ignored) _build/
    page = ROOT / "_build" / f"test-run-info-{tmp_path.name}" / "run_info.md"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    try:
        text = _run_info_text(page, _stamp(tmp_path))
    finally:
        if page.parent.is_dir():
            page.unlink(missing_ok=True)
            page.parent.rmdir()
    _check_run_info(text, commit.stdout.strip() or None)


def test_run_info_accepts_the_stamp_that_run_writes(tmp_path):
    from mrlib.pipeline import write_run_info

    write_run_info(tmp_path / "a" / "b" / "run_info.md", _stamp(tmp_path))


# --------------------------------------------------------------------------- two runs

@pytest.mark.slow
def test_two_smoke_runs_with_the_same_seed_agree(tmp_path, reference_run):
    first = reference_run
    second = tmp_path / "run"
    proc = scratch_cli(tmp_path, *shrunk_run_args(second))
    assert proc.returncode == 0, proc.stderr[-4000:]

    for run in (first, second):  # every chapter wrote its results
        for rel in ("manifest.json", "masking.json", "mrnet/metrics.json", "gradcam/localization.csv",
                    "unet/runs.json", "evaluation/metrics.csv", "evaluation/summary.json"):
            assert (run / rel).is_file(), rel
        assert not list(run.rglob("*.part"))
    assert compare_runs(first, second) == []
    same = subprocess.run([PY, "-m", "mrlib", "compare", str(first), str(second)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert same.returncode == 0, same.stdout

    # and the comparison would have seen a change in the last digit of a metric
    csv_path = second / "evaluation" / "metrics.csv"
    lines = csv_path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[4] = repr(float(cells[4]) * (1 + 1e-15) if float(cells[4]) else 1e-300)  # nmse
    csv_path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert [d.split(":")[0] for d in compare_runs(first, second)] == ["evaluation/metrics.csv"]

    text = (tmp_path / "root" / "book" / "generated" / "run_info.md").read_text()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    _check_run_info(text, commit=commit.stdout.strip() or None)  # the commit of the code that ran
