"""The whole chain, as a user runs it: two ``mrlib book`` runs (the full and the shrunk
smoke chain) at the same time into two run directories (the shared ``smoke_pair``), then
what each wrote, what the console showed, what the books hold, and that a comparison of
runs sees the last digit."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from mrlib import evaluate, pipeline
from mrlib.compare import compare_runs
from mrlib.rundir import NOTEBOOKS, RunDir

pytestmark = pytest.mark.slow


def _images(notebook) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_a_missing_input_stops_the_run_naming_the_notebook_and_cell(tmp_path):
    with pytest.raises(pipeline.NotebookError) as err:
        pipeline.run("smoke", run_dir=tmp_path / "run", notebooks=["02_masking"], progress=False)
    assert "02_masking" in err.value.where and "cell" in err.value.problem
    assert RunDir.MANIFEST in err.value.problem and "01_data" in err.value.problem


def test_every_chapter_wrote_its_results(smoke_run):
    rd = smoke_run.rd
    manifest = rd.read_manifest()
    assert manifest["checks"]["ok"] and manifest["counts"]["train"]["volumes"] == 3
    assert manifest["image_size"] == [64, 64] and manifest["kspace_shape"] == [128, 74]
    stored = json.loads(rd.manifest_path.read_text())  # paths are stored relative
    assert stored["data_dir"] == RunDir.DATA and stored["splits"]["train"]["dir"] == "fastmri/singlecoil_train"
    assert rd.read_mask_spec().accelerations == (4, 8)
    assert not list(rd.root.rglob("*.part")), "a temporary file was left behind"
    for source in ("kneemri", "fastmri"):  # the contract of RUN/mrnet/<source>/metrics.json
        metrics = rd.read_classifier_metrics(source)
        assert {"auc", "auc_ci", "auc_ci_method", "baseline_auc", "baseline_auc_ci", "n", "n_positive", "seeds"} <= set(metrics)
        assert rd.heatmaps(source, 0).is_file()
    assert "slice_auc" in rd.read_classifier_metrics("fastmri")
    assert rd.localization().read_text().splitlines()[0] == \
        "source,seed,method,layer,grid,split,n_slices,pointing_game,energy_in_box,iou"
    groups = pd.read_csv(rd.localization(by_group=True))
    assert {"lesion kind", "acquisition"} == set(groups.group) and (groups.n_slices > 0).all()
    assert [r["variant"] for r in rd.read_registry()] == ["unweighted", "gradcam", "shuffled", "oracle", "random", "l1"]
    df, summary = rd.read_evaluation()
    assert list(df.columns) == ["variant", "acceleration", "seed", "volume", "nmse", "psnr", "ssim",
                                "roi_nmse", "roi_psnr", "roi_ssim", "lesion_fidelity", "diagnostic_auc", "seconds"]
    # the diagnosis is scored on every volume with a lesion (its twin's k-space, the in-domain classifier), and only there
    lesion = df["roi_psnr"].notna()
    assert lesion.any() and df.loc[lesion, "diagnostic_auc"].between(0, 1).all()
    assert df.loc[~lesion, "diagnostic_auc"].isna().all()
    ceiling = evaluate.target_diagnosis(rd)  # one row per in-domain classifier, over the lesion volumes
    assert list(ceiling.classifier_seed) == [m["seed"] for m in rd.read_classifier_metrics("fastmri")["seeds"]]
    assert (ceiling.n_volumes == df.loc[lesion, "volume"].nunique()).all() and ceiling.diagnostic_auc.between(0, 1).all()
    assert "comparisons" in summary
    for nb in NOTEBOOKS:
        assert _images(rd.executed(nb)) >= 2, f"{nb} shows too few figures"


def test_the_console_is_plain_lines_with_training_progress(smoke_run):
    log = smoke_run.log
    assert "\r" not in log, "a progress bar was drawn into a log"
    assert "WARNING" not in log and "Kernel is running" not in log, log[:2000]
    for nb in NOTEBOOKS:
        assert re.search(rf"^\[mrlib\] {nb}: start$", log, re.M) and re.search(rf"^\[mrlib\] {nb}: done in \d+ s$", log, re.M)
    assert re.search(r"^\[MRNet\] epoch 2/2: train_loss [\d.e+-]+, val_loss .*; \d+ s left$", log, re.M)
    for variant in ("unweighted", "oracle", "l1"):
        assert re.search(rf"^\[U-Net {variant}\] epoch 2/2: .*val_mse .*; \d+ s left$", log, re.M), variant


def test_two_runs_at_once_each_build_their_own_complete_book(smoke_pair):
    pages = []
    for run in smoke_pair:
        html = run.rd.book_html.parent
        assert run.rd.book_html.is_file() and f"book: {run.rd.book_html}" in run.log
        for nb in NOTEBOOKS:
            page = html / "book" / "notebooks" / f"{nb}.html"
            text = page.read_text()
            assert "<img" in text and "Before you start" in text, nb
            assert "google.colab" not in text, f"{nb}: the Colab set-up cell is shown"
            assert "tag_hide-input" in text, f"{nb}: the import cell's input is not hidden"
            assert str(run.path.parent) not in text, f"{nb}: the book shows a machine's absolute path"
            pages.append(page)
        info = (html / "book" / "intro.html").read_text()
        assert "This edition was produced by" in info and '<span class="pre">smoke</span>' in info
    assert len(set(pages)) == 2 * len(NOTEBOOKS)


def test_each_chapter_ends_with_a_computed_summary(smoke_run):
    for nb in NOTEBOOKS:
        cells = [c for c in json.loads(smoke_run.rd.executed(nb).read_text())["cells"] if c["cell_type"] == "code"]
        last = cells[-1]
        assert "summary" in last["metadata"].get("tags", []), nb
        text = "".join("".join(o.get("text", "")) for o in last["outputs"] if o.get("output_type") == "stream")
        assert re.search(r"\d", text) and text.strip().endswith("."), f"{nb}: {text!r}"


def _injected(run, nb) -> str:
    cells = json.loads(run.rd.executed(nb).read_text())["cells"]
    return "".join(next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))["source"])


def test_the_injected_parameters_are_the_preset_and_relative_paths(smoke_run):
    assert 'preset = "smoke"' in _injected(smoke_run, "01_data")
    for nb in NOTEBOOKS:
        injected = _injected(smoke_run, nb)
        assert 'run_dir = "a"' in injected and str(smoke_run.path.parent) not in injected, injected


def test_the_comparison_sees_the_last_digit_of_a_metric(smoke_run, tmp_path):
    """Two runs with the same seed agree: the killed-run test of test_faults.py compares a
    resumed run with ``smoke_pair``'s uninterrupted ``b``, and book/reproduce.md's papermill
    recipe (run by test_docs.py) compares its chain with ``a``. Here: the comparison sees a
    change in a metric's last digit, in the file that holds it."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(smoke_run.path), str(copy)], check=True)
    assert compare_runs(smoke_run.path, copy) == []
    csv_path = RunDir(copy).metrics_csv
    lines = csv_path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[4] = repr(float(cells[4]) * (1 + 1e-15) if float(cells[4]) else 1e-300)  # nmse
    csv_path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    assert [d.split(":")[0] for d in compare_runs(smoke_run.path, copy)] == ["evaluation/metrics.csv"]
