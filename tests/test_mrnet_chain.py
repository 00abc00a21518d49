"""MRNet-v1.0's coronal series as an ROI source, end to end on the smoke cohort (issue 13):
chapter 1 on the smoke preset's data, chapter 3 trains MRNet on the coronal meniscus task,
chapter 4 maps fastMRI's coronal slices with it (the same plane: nothing maps between
planes), and a one-step chapter-5 run trains the Grad-CAM variant weighted by those maps,
as notebook 05 does (chapter 2's masks are built here rather than run as a notebook)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mrlib import cam, pipeline
from mrlib.config import UnetConfig
from mrlib.masking import MaskSpec
from mrlib.recon import load_bank
from mrlib.rundir import RunDir
from mrlib.unet import train_run, weight_context
from mrlib.variants import make_variant

pytestmark = pytest.mark.slow

#: the MRNet coronal source; one CAM method keeps chapter 4 short
CORONAL = ["roi_sources=['mrnet']", "roi_source=mrnet", "task=meniscus", "plane=coronal", "methods=['gradcam']"]
#: the contract of RUN/mrnet/<source>/metrics.json (test_chain.py checks the other sources')
CONTRACT = {"auc", "auc_ci", "auc_ci_method", "baseline_auc", "baseline_auc_ci", "n", "n_positive", "seeds"}


@pytest.fixture(scope="module")
def run(synth_data, tmp_path_factory) -> RunDir:
    run_dir = tmp_path_factory.mktemp("mrnet_coronal") / "run"
    pipeline.run("smoke", data_dir=synth_data, run_dir=run_dir, overrides=CORONAL,
                 notebooks=["01_data", "03_mrnet", "04_gradcam"], progress=False)
    return RunDir(run_dir)


def test_chapter_3_trains_mrnet_on_the_coronal_meniscus_task(run):
    assert run.classifier_sources() == ["mrnet"]
    metrics = run.read_classifier_metrics("mrnet")
    assert CONTRACT <= set(metrics)
    assert (metrics["source"], metrics["task"], metrics["plane"], metrics["input_size"]) == ("mrnet", "meniscus", "coronal", 64)
    assert (metrics["n"], metrics["n_positive"]) == (4, 2)  # the smoke preset's valid split, half of it torn
    assert 0.0 <= metrics["auc_ci"][0] <= metrics["auc"] <= metrics["auc_ci"][1] <= 1.0
    assert [m["seed"] for m in metrics["seeds"]] == [0]
    splits = run.read_classifier_splits("mrnet")
    assert all(name.startswith("valid/coronal/") for name in splits["test"]) and len(splits["test"]) == 4
    assert all(name.startswith("train/coronal/") for name in splits["train"] + splits["val"])


def test_chapter_4_maps_the_fastmri_coronal_slices_with_it(run):
    manifest = run.read_manifest()
    path = run.heatmaps("mrnet", 0)
    info = cam.heatmap_info(path)
    assert info["source"] == "mrnet" and info["flip_ud"], "MRNet's slices are stored as viewed, fastMRI's upside down"
    shapes = {f["name"][:-3]: tuple(f["target_shape"]) for s in manifest["splits"].values() for f in s["files"]}
    assert shapes
    for stem, shape in shapes.items():
        maps, scores = cam.read_heatmaps(path, "gradcam", stem)
        assert maps.shape == shape and scores.shape == shape[:1], stem
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    table = pd.read_csv(run.localization())
    assert set(table.source) == {"mrnet"} and "gradcam" in set(table.method)


def test_chapter_5_trains_a_unet_weighted_by_its_maps(run):
    manifest = run.read_manifest()
    banks = {role: load_bank(run.split_paths(role, manifest), "cpu", verbose=False) for role in ("train", "selection")}
    context = weight_context(run, manifest)
    assert list(context.heatmaps) == ["mrnet"]
    cfg = UnetConfig(variant="gradcam", roi_source="mrnet", unet_epochs=1, unet_steps_per_epoch=1, device="cpu")
    variant = make_variant(cfg.variant, cfg.identity())
    weights = variant.weights(banks["train"], context)
    assert tuple(weights.shape) == (len(banks["train"]), *banks["train"].target.shape[-2:])
    assert torch.isfinite(weights).all() and weights.min() >= 1 and weights.max() > 1, "the maps weight nothing"
    config, history = train_run(banks, MaskSpec(), cfg, run, context, progress=False)
    assert config["roi_source"] == "mrnet" and len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert [r["variant"] for r in run.read_registry()] == [variant.key]
