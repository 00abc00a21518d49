"""Reproducibility tools: comparing two run directories, and the book's record of what
produced it.

* ``mrlib.compare`` (``python -m mrlib compare RUN_A RUN_B``): unit tests on small run
  directories: it finds every changed number and string, ignores timings, treats NaN as
  equal to NaN, takes a tolerance, and names the file and the place.
* The run's ``run_info`` page (:attr:`mrlib.rundir.RunDir.run_info`) records the
  parameters, package versions, device and git commit.

That two smoke runs with the same seed agree is checked on the shared smoke pair
(``tests/test_chain.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrlib.compare import TIMING_FIELDS, compare_runs
from mrlib.errors import MrlibError
from mrlib.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# --------------------------------------------------------------------------- compare_runs


def _run(d: Path, auc=0.75, psnr="31.25", seconds="0.5", extra=None) -> Path:
    rd = RunDir(d)
    rd.classifier_metrics("kneemri").parent.mkdir(parents=True)
    rd.metrics_csv.parent.mkdir()
    # the stamp differs between two run directories, and is not a result
    rd.stamp.write_text(json.dumps({"preset": "smoke", "parameters": {"run_dir": str(d), "seed": 0}}))
    metrics = {"auc": auc, "auc_ci": [0.5, 1.0], "sensitivity": float("nan"), "seconds_per_volume": float(seconds),
               "checkpoint": str(rd.classifier("kneemri").best)}  # an absolute path inside the run: compared as <run>/...
    metrics.update(extra or {})
    rd.classifier_metrics("kneemri").write_text(json.dumps(metrics))
    rd.metrics_csv.write_text(
        "variant,acceleration,psnr,seconds\n" f"unweighted,4,{psnr},{seconds}\n" "gradcam,4,30.0,0.25\n"
    )
    return d


def test_identical_runs_in_two_directories_agree(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", seconds="9.75")  # timings differ, and so do the run_dir paths
    assert compare_runs(a, b) == []
    assert compare_runs(a, a) == []
    # positive control on the same pair: with timings compared, exactly the two timings differ
    # (the stamps and the run directories' paths in the results do not count)
    assert compare_runs(a, b, ignore=()) == [
        "evaluation/metrics.csv: row 1 column seconds: '0.5' != '9.75'",
        "mrnet/kneemri/metrics.json: $.seconds_per_volume: 0.5 != 9.75",
    ]


def test_every_difference_is_named(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", auc=0.7500001, psnr="31.26", extra={"new": 1})
    diffs = compare_runs(a, b)
    assert "mrnet/kneemri/metrics.json: $.auc: 0.75 != 0.7500001" in diffs
    assert "mrnet/kneemri/metrics.json: $.new: only in the second run" in diffs
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
    (b / "mrnet" / "kneemri" / "metrics.json").write_text(json.dumps({"auc": 0.75, "auc_ci": [0.5], "sensitivity": None}))
    (a / "mrnet" / "history.json").write_text("[]")
    (a / "mrnet" / ".history.json.x.part").write_text("half")  # temporaries are not results
    diffs = compare_runs(a, b)
    assert "evaluation/metrics.csv: 2 rows != 1 rows" in diffs
    assert "mrnet/kneemri/metrics.json: $.auc_ci: 2 items != 1 items" in diffs
    assert "mrnet/kneemri/metrics.json: $.sensitivity: nan != None" in diffs
    assert f"mrnet/history.json: only in {a}" in diffs
    assert not any(".part" in d for d in diffs)


def test_nan_equals_nan_but_not_a_number(tmp_path):
    a = _run(tmp_path / "a", extra={"x": float("nan")})
    b = _run(tmp_path / "b", extra={"x": 1.0})
    assert compare_runs(a, b) == ["mrnet/kneemri/metrics.json: $.x: nan != 1.0"]
    assert compare_runs(a, _run(tmp_path / "c", extra={"x": float("nan")})) == []


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
    (b / "mrnet" / "kneemri" / "metrics.json").write_text("{not json")
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
    assert "mrnet/kneemri/metrics.json: $.auc: 0.75 != 0.5" in differ.stdout and "1 difference(s)" in differ.stdout
    assert compare(a, c, "--ignore", "auc").returncode == 0
    assert compare(a, c, "--tolerance", "0.5").returncode == 0
    missing = compare(a, tmp_path / "nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope'}: is not a run directory")


# --------------------------------------------------------------------------- run_info.md


def _check_run_info(text: str, commit: str | None) -> None:
    import torch
    from importlib.metadata import version

    assert "--preset smoke" in text
    assert "| `seed` | `0` |" in text and "| `unet_epochs` | `2` |" in text
    assert "`run_dir`" not in text  # paths are not parameters of the run
    assert f"| torch | {version('torch')} |" in text and f"| fastmri | {version('fastmri')} |" in text
    assert "| papermill |" in text and "| numpy |" in text
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU ("
    assert f"on {device}" in text
    assert "Python " in text
    if commit:
        assert f"at git commit `{commit}" in text


def test_run_info_records_parameters_versions_device_and_commit(tmp_path):
    from mrlib.pipeline import claim_run_dir, write_run_info

    rd = RunDir(tmp_path / "run")
    stamp = claim_run_dir(rd, "smoke", {"seed": 0, "unet_epochs": 2, "run_dir": "x"}, ["01_data"])
    page = write_run_info(rd, stamp)  # its parent folders do not exist yet
    assert page == rd.run_info and page.is_file()
    # git is asked inside the checkout, wherever the page goes
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    _check_run_info(page.read_text(), commit.stdout.strip() or None)
    assert "on the preset's synthetic data" in page.read_text()
