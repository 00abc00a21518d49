"""Families as classes: loss variants (keys, registry, weights), exam sources, boxes.

The extension test defines a new loss variant as one class here and trains it for one
epoch through :func:`mrlib.unet.train_run`, the function notebook 05 calls, with no file
of mrlib changed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mrlib import classifier, variants
from mrlib.config import UnetConfig
from mrlib.data.boxes import Box, boxes_mask, crop_around
from mrlib.errors import DataError, ParameterError
from mrlib.masking import MaskSpec
from mrlib.recon import load_bank
from mrlib.rundir import RunDir
from mrlib.unet import train_run
from mrlib.variants import LossVariant, WeightContext, make_variant, parse_key


class Centre(LossVariant):
    """A variant defined outside mrlib: up-weight a centred square of every slice."""

    name = "centre-test"
    description = "MSE up-weighted in the middle quarter of every slice (a test of extension)"
    params = {"alpha": 4.0}

    def weights(self, bank, context):
        h, w = bank.crop
        weights = torch.ones(len(bank), h, w)
        weights[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] += self.values["alpha"]
        return weights


def test_a_new_variant_is_one_class_and_trains_through_notebook_05s_function(synth_data, tmp_path):
    assert variants.REGISTRY["centre-test"] is Centre
    splits = {s: sorted((synth_data / "fastmri" / f"singlecoil_{s}").glob("*.h5")) for s in ("train", "val")}
    banks = {"train": load_bank(splits["train"], "cpu"), "selection": load_bank(splits["val"], "cpu")}
    run = RunDir(tmp_path / "run")
    cfg = UnetConfig(variant="centre-test[alpha=9]", unet_epochs=1, chans=4, pools=1)
    config, history = train_run(banks, MaskSpec(), cfg, run, WeightContext(), progress=False)

    assert config["variant"] == "centre-test[alpha=9]" and config["alpha"] == 9.0 and config["loss"] == "weighted_mse"
    assert len(history) == 1 and run.unet_run("centre-test[alpha=9]", 0).best.is_file()
    assert [(r["variant"], r["seed"]) for r in run.read_registry()] == [("centre-test[alpha=9]", 0)]
    # the weights were used: the variant's own validation loss is not the plain MSE
    assert history[0]["val_loss"] != pytest.approx(history[0]["val_mse"], rel=1e-6)


def test_keys_name_the_class_and_the_parameters_that_differ():
    assert make_variant("oracle").key == "oracle"
    assert make_variant("oracle", {"alpha": 4.0, "chans": 8}).key == "oracle"  # other names are ignored
    assert make_variant("oracle", {"alpha": 16}).key == "oracle[alpha=16]"
    assert make_variant("oracle[alpha=50]", {"alpha": 16}).key == "oracle[alpha=50]"  # the key wins
    assert make_variant("oracle[alpha=2.5]").values == {"alpha": 2.5}
    key = make_variant("gradcam[cam_method=layercam, alpha=8]").key
    assert key == "gradcam[alpha=8,cam_method=layercam]"  # canonical: the class's parameter order
    assert make_variant(key).key == key
    assert parse_key("random[alpha=3]") == ("random", {"alpha": 3})
    for name in ("unweighted", "gradcam", "oracle", "random", "l1"):  # today's names stay valid
        assert make_variant(name).key == name


def test_a_key_names_the_same_variant_again_under_the_runs_parameters():
    # the study's alpha=4 arms were trained as alpha=50 arms: `oracle[alpha=4]` became `oracle`
    # (4 is the class default), which the run's alpha=50 read back as oracle[alpha=50]
    run = {"alpha": 50.0, "weight_rule": "matched", "cam_method": "layercam"}
    assert make_variant("oracle[alpha=4]", run).key == "oracle[alpha=4]"
    assert make_variant("oracle[alpha=4]", {"alpha": 4.0}).key == "oracle"  # nothing to pin
    from mrlib.presets import get_preset
    params = get_preset("study")["params"]
    keys = [make_variant(v, params).key for v in params["variants"]]
    assert len(set(keys)) == len(keys) == 13
    for key in keys:  # what notebook 05 passes to train_run, which resolves it again
        variant = make_variant(key, params)
        assert variant.key == key and variant.values == make_variant(key).values | {
            k: v for k, v in params.items() if k in variant.params and k not in parse_key(key)[1]}


@pytest.mark.parametrize("key, message", [
    ("dcgan", "unknown variant 'dcgan'"),
    ("oracle[beta=2]", "takes no parameter beta"),
    ("oracle[alpha=big]", "alpha must be float"),
    ("oracle[alpha]", "name=value"),
    ("oracle alpha=2", "not a variant key"),
])
def test_bad_keys_are_refused_with_the_reason(key, message):
    with pytest.raises(ParameterError, match=message):
        make_variant(key)


def test_loss_and_recorded_loss_of_each_variant():
    pred, target = torch.rand(2, 8, 8), torch.rand(2, 8, 8)
    assert make_variant("l1").loss(pred, target, None) == pytest.approx(torch.nn.functional.l1_loss(pred, target).item())
    assert make_variant("unweighted").loss(pred, target, None) == pytest.approx(torch.mean((pred - target) ** 2).item())
    assert [make_variant(n).loss_name for n in ("unweighted", "l1", "oracle")] == ["mse", "l1", "weighted_mse"]


def _knee(h=16, w=20):
    """A bright block (the knee) on a dark background: rows 1-14, columns 1-18."""
    image = np.zeros((h, w), np.float32)
    image[1:15, 1:19] = 1.0
    return image


class _Bank:
    """The slices a variant needs to know: their files, slice numbers, image size and targets."""

    files = ["file1", "file1", "file2"]
    slice_nums = np.array([0, 1, 0])
    crop = (16, 20)
    target = torch.from_numpy(np.stack([_knee()] * 3))

    def __len__(self):
        return 3


BOXES = pd.DataFrame([dict(file="file1", slice=1, x=2, y=3, width=4, height=5, label="tear")])


def test_oracle_weights_the_true_boxes_and_random_the_same_area_elsewhere_in_the_knee():
    oracle = make_variant("oracle[alpha=3]").weights(_Bank(), WeightContext(boxes=BOXES, seed=0))
    assert oracle.shape == (3, 16, 20)
    assert torch.all(oracle[[0, 2]] == 1)  # slices without a box weigh 1
    assert torch.all(oracle[1, 3:8, 2:6] == 4) and oracle[1].sum() == 16 * 20 + 3 * 4 * 5
    rand = make_variant("random[alpha=3]").weights(_Bank(), WeightContext(boxes=BOXES, seed=0))
    again = make_variant("random[alpha=3]").weights(_Bank(), WeightContext(boxes=BOXES, seed=0))
    other = make_variant("random[alpha=3]").weights(_Bank(), WeightContext(boxes=BOXES, seed=1))
    assert torch.equal(rand, again) and rand[1].sum() == oracle[1].sum()  # deterministic, same area
    assert torch.all(rand[[0, 2]] == 1)  # the same slices as the true boxes
    assert not torch.equal(rand, other)  # the seed moves the boxes
    with pytest.raises(Exception, match="lesion boxes"):
        make_variant("oracle").weights(_Bank(), WeightContext())


def test_random_boxes_lie_in_the_knee_and_miss_the_true_boxes():
    image = _knee(40, 48)
    true = [Box(10, 12, 6, 5, "tear"), Box(30, 20, 4, 4, "edema")]
    truth = boxes_mask(image.shape, true)
    for seed in range(30):
        placed = variants.boxes_in_foreground(true, image, np.random.default_rng(seed))
        assert [(b.width, b.height) for b in placed] == [(6, 5), (4, 4)]
        m = boxes_mask(image.shape, placed)
        assert m.sum() == 6 * 5 + 4 * 4  # inside the image, not overlapping each other
        assert not (m & truth).any() and np.all(image[m] > 0)  # in the knee, away from the true boxes
    with pytest.raises(Exception, match="no place inside the knee"):
        variants.boxes_in_foreground([Box(0, 0, 30, 30)], image, np.random.default_rng(0))


def test_shuffled_keeps_the_weights_and_moves_every_map_to_another_volume(monkeypatch):
    files = np.repeat(["a", "b", "c", "d"], [3, 2, 4, 3])
    gate = np.array([1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0], bool)

    class Bank:
        crop = (4, 5)
        slice_nums = np.concatenate([np.arange(n) for n in (3, 2, 4, 3)])

        def __len__(self):
            return len(files)
    Bank.files = list(files)
    maps = np.zeros((len(files), 4, 5), np.float32)
    for i in np.flatnonzero(gate):
        maps[i].flat[i % 20] = 1.0  # each gated-on slice's map is its own
        maps[i, 3, 4] = 0.1 * (i + 1)
    monkeypatch.setattr(variants.GradCAM, "maps", lambda self, bank, context: maps)
    cam = make_variant("gradcam[alpha=4]").weights(Bank(), WeightContext(seed=0))
    shuffled = make_variant("shuffled[alpha=4]").weights(Bank(), WeightContext(seed=0))
    assert torch.equal(cam.flatten().sort().values, shuffled.flatten().sort().values)  # the whole bank's weights
    source = [int(np.flatnonzero((cam == shuffled[i]).flatten(1).all(dim=1))[0]) for i in range(len(files))]
    for i, j in enumerate(source):
        assert gate[i] == gate[j]  # the same gate state
        if gate[i]:
            assert files[i] != files[j]  # a map from another volume
    perm = variants.cross_volume_derangement(files, gate, np.random.default_rng(0))
    assert sorted(perm) == list(range(len(files))) and all(files[perm] != files)
    assert not np.array_equal(perm, variants.cross_volume_derangement(files, gate, np.random.default_rng(1)))
    with pytest.warns(UserWarning, match="2 of them keep a map of their own volume"):  # 3 of 4 in one volume
        perm = variants.cross_volume_derangement(["a", "a", "a", "b"], [0, 0, 0, 0], np.random.default_rng(0))
    assert sorted(perm) == [0, 1, 2, 3]


def write_user_maps(path, volumes: dict, method: str = "mine") -> None:
    """A map file as a user writes it, following the heatmaps.h5 contract of
    book/reproduce.md with h5py alone: ``volumes`` is ``{stem: maps (S, H, W) in [0, 1]}``."""
    import json

    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["methods"] = json.dumps([method])
        f.attrs["image_shapes"] = json.dumps({stem: list(m.shape) for stem, m in volumes.items()})
        for stem, maps in volumes.items():
            f.create_dataset(f"{method}/{stem}/maps", data=np.asarray(maps, np.float32))
            f.create_dataset(f"{method}/{stem}/scores", data=np.zeros(len(maps), np.float32))


def test_a_users_own_map_file_weights_the_slices_and_a_mismatched_one_is_refused(tmp_path):
    maps = {"file1": np.zeros((2, 16, 20), np.float32), "file2": np.zeros((1, 16, 20), np.float32)}
    maps["file1"][1, 3:8, 2:6] = 1.0  # the user's ROI: slice 1 of file1
    path = tmp_path / "my maps.h5"
    write_user_maps(path, maps)
    key = f"gradcam[roi_source=file:{path},cam_method=mine,alpha=3,weight_rule=threshold]"
    w = make_variant(key).weights(_Bank(), WeightContext(seed=5))
    assert torch.all(w[[0, 2]] == 1) and torch.all(w[1, 3:8, 2:6] == 4) and w[1].sum() == 16 * 20 + 3 * 4 * 5
    assert torch.equal(w, make_variant(key).weights(_Bank(), WeightContext(seed=0)))  # one file for every seed

    def refused(volumes, match, name="bad.h5"):
        bad = tmp_path / name
        write_user_maps(bad, volumes)
        with pytest.raises(DataError, match=match) as err:
            make_variant(f"gradcam[roi_source=file:{bad},cam_method=mine]").weights(_Bank(), WeightContext())
        assert str(bad) in str(err.value)

    refused({"file1": maps["file1"]}, "holds no mine heatmaps for 'file2'", "missing.h5")
    refused({**maps, "file1": np.zeros((2, 16, 21), np.float32)}, r"file1 maps are \(16, 21\) but the images are "
            r"\(16, 20\)", "shape.h5")
    refused({**maps, "file1": np.zeros((1, 16, 20), np.float32)}, "has 1 slices of file1; slice 1 is needed", "slices.h5")
    refused({**maps, "file2": np.full((1, 16, 20), 255.0, np.float32)}, r"mine/file2: maps must lie in \[0, 1\]",
            "range.h5")
    with pytest.raises(DataError, match="no such map file"):
        make_variant(f"gradcam[roi_source=file:{tmp_path / 'none.h5'}]").weights(_Bank(), WeightContext())


def test_a_users_map_file_trains_a_unet_through_notebook_05s_function(synth_data, tmp_path):
    splits = {s: sorted((synth_data / "fastmri" / f"singlecoil_{s}").glob("*.h5")) for s in ("train", "val")}
    banks = {"train": load_bank(splits["train"], "cpu"), "selection": load_bank(splits["val"], "cpu")}
    h, w = banks["train"].crop
    volumes = {}
    for bank in banks.values():
        for stem, idx in bank.volumes.items():
            volumes[stem] = np.zeros((len(idx), h, w), np.float32)
            volumes[stem][:, h // 4: h // 2, w // 4: w // 2] = 1.0
    path = tmp_path / "maps.h5"
    write_user_maps(path, volumes)
    key = f"gradcam[roi_source=file:{path},cam_method=mine,weight_rule=threshold]"
    run = RunDir(tmp_path / "run")
    config, history = train_run(banks, MaskSpec(), UnetConfig(variant=key, unet_epochs=1, chans=4, pools=1), run,
                                WeightContext(), progress=False)
    key = make_variant(key).key  # the key in the class's parameter order
    assert config["variant"] == key and config["roi_source"] == f"file:{path}"
    assert [r["variant"] for r in run.read_registry()] == [key] and run.unet_run(key, 0).best.is_file()
    assert history[0]["val_loss"] != pytest.approx(history[0]["val_mse"], rel=1e-6)  # the maps weighted the loss


def test_matched_threshold_gives_the_true_boxes_area_and_weight_share_its_formula():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 16, 20)).astype(np.float32)
    boxes = np.zeros((6, 16, 20), bool)
    boxes[1, 2:6, 3:8] = boxes[4, 0:3, 0:3] = True  # 20 and 9 pixels on two lesion slices
    tau = variants.matched_threshold(maps, boxes)
    assert (maps[[1, 4]] >= tau).sum() == 29  # the region covers as many pixels as the boxes
    share = variants.weight_stats(make_variant("oracle[alpha=3]").weights(_Bank(), WeightContext(boxes=BOXES)),
                                  _Bank(), WeightContext(boxes=BOXES))
    a = 20 / (16 * 20)  # the box's area share on its one lesion slice
    assert share["weight_share"] == pytest.approx((1 + 3) * a / (1 + 3 * a))
    assert variants.weight_stats(None, _Bank(), WeightContext(boxes=BOXES))["weight_share"] == pytest.approx(a)


def test_exam_sources_are_a_registry():
    assert set(classifier.SOURCES) == {"kneemri", "mrnet", "fastmri"}
    with pytest.raises(ParameterError, match="unknown classifier data 'nope'; use one of kneemri, mrnet, fastmri"):
        classifier.load_exams({}, source="nope")
    with pytest.raises(ParameterError, match="tasks acl, acl_complete, not 'meniscus'"):
        classifier.KneeMRISource().check_task("meniscus")


def test_box_is_one_validated_type():
    assert Box.of((1, 2, 3, 4, "tear")) == Box(1, 2, 3, 4, "tear") and Box.of([1.0, 2, 3, 4]).label == ""
    for bad, message in [((1, 2, 3), "x, y, width, height"), ((1, 2, -3, 4), "negative"), (("a", 2, 3, 4), "integer")]:
        with pytest.raises(ParameterError, match=message):
            Box.of(bad)
    assert Box(-2, 1, 5, 3).clip((4, 6)) == (1, 4, 0, 3)  # cut at the image edge
    assert Box(10, 10, 2, 2).clip((4, 6)) is None
    mask = boxes_mask((4, 6), [(-2, 1, 5, 3), Box(5, 0, 4, 1)])
    assert mask.sum() == 3 * 3 + 1 and mask[0, 5] and not mask[0, 0]
    rows, cols = crop_around((30, 5, 4, 4), (40, 48), size=24)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (24, 24) and cols.stop == 44
