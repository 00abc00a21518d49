"""End to end: the smoke preset through papermill, then the book build without warnings."""

import json
from pathlib import Path

import pytest

from mrlib import pipeline
from mrlib.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent


def _images(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_smoke_run_and_book(tmp_path):
    run_dir = tmp_path / "run"

    # A chapter that finds no manifest stops the run, naming the notebook and the cell.
    with pytest.raises(pipeline.NotebookError) as err:
        pipeline.run("smoke", run_dir=run_dir, notebooks=["02_masking"], progress=False)
    assert "02_masking" in err.value.where and "cell" in err.value.problem and "manifest.json" in err.value.problem

    written = pipeline.run("smoke", run_dir=run_dir, progress=False)
    assert [p.stem for p in written] == list(pipeline.NOTEBOOKS)

    manifest = read_manifest(run_dir)
    assert manifest["checks"]["ok"] and manifest["counts"]["train"]["volumes"] == 3
    assert manifest["image_size"] == [64, 64] and manifest["kspace_shape"] == [128, 74]
    masking_spec = json.loads((run_dir / "masking.json").read_text())
    assert masking_spec["accelerations"] == [4, 8]
    assert not list(run_dir.rglob("*.part")), "a temporary file was left behind"
    mrnet = json.loads((run_dir / "mrnet" / "metrics.json").read_text())
    assert {"auc", "auc_ci", "n_test"} <= set(mrnet) and len(mrnet["auc_ci"]) == 2
    header = (run_dir / "gradcam" / "localization.csv").read_text().splitlines()[0]
    assert header == "method,n_slices,pointing_game,energy_in_box,iou"
    assert (run_dir / "gradcam" / "heatmaps.h5").is_file()
    runs = json.loads((run_dir / "unet" / "runs.json").read_text())
    assert {r["variant"] for r in runs} == {"unweighted", "gradcam", "oracle", "random", "l1"}
    header = (run_dir / "evaluation" / "metrics.csv").read_text().splitlines()[0]
    assert header == "variant,acceleration,seed,volume,nmse,psnr,ssim,roi_nmse,roi_psnr,roi_ssim,seconds"
    assert "comparisons" in json.loads((run_dir / "evaluation" / "summary.json").read_text())
    for nb in written:
        assert _images(nb) >= 2, f"{nb.name} shows too few figures"

    index = pipeline.build_book()
    html = index.parent
    assert index.is_file()
    for nb in pipeline.NOTEBOOKS:
        page = html / "book" / "notebooks" / f"{nb}.html"
        assert page.is_file() and "<img" in page.read_text()
