"""Grad-CAM of MRNet per slice (mrlib.cam) and its heatmap file.

The localisation test trains a real :class:`mrlib.models.MRNet` on a task where a small
bright square decides the label. To stay fast on 2 CPU cores, ``features[:10]``
(AlexNet's conv1-conv4 with their ReLUs and pools) keep their random initialisation
(their outputs are computed once) and only the last convolution ``features[10]``, the
pooling and the linear head are trained (30 Adam steps): the layers whose activations
and gradients Grad-CAM reads. A full MRNet trained end to end for 30 steps localises as
well (checked by hand: GradCAM pointing game 9/9 held-out positive slices, about 45 s of training) but is too
slow for the unit tests.
"""

from __future__ import annotations


import h5py
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models import alexnet

from mrlib import cam
from mrlib.classifier import prepare_exam, to_source
from mrlib.data import synth
from mrlib.data.fastmri_h5 import read_volume
from mrlib.errors import DataError, ParameterError
from mrlib.metrics import roc_auc
from mrlib.models import MRNet
from mrlib.rundir import RunDir

SIZE, SQ = 64, 8  # slice size and lesion square side

#: The classes of pytorch-grad-cam that each method name must pick (spelled out here, not
#: read from ``cam.METHODS``, so a wrong mapping there fails).
GRAD_CAM_CLASSES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM}


class _SliceLogits(torch.nn.Module):
    """The reference's model: each slice scored by its own logit."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.slice_logits(x)


def _square_exams(rng, n_exams, n_slices=4, labels=None):
    """Exams of noisy 64x64 slices; a positive slice carries a bright 8x8 square.

    Returns the prepared input ``(E*S, 3, 224, 224)``, labels ``(E*S,)`` and each slice's
    box ``(x, y, w, h)`` or None.
    """
    xs, ys, boxes = [], [], []
    for _ in range(n_exams):
        vol = rng.normal(0.2, 0.05, (n_slices, SIZE, SIZE)).astype(np.float32)
        lab = rng.integers(0, 2, n_slices) if labels is None else np.full(n_slices, labels)
        for s in range(n_slices):
            if lab[s]:
                x0, y0 = (int(v) for v in rng.integers(2, SIZE - SQ - 2, 2))
                vol[s, y0 : y0 + SQ, x0 : x0 + SQ] = 1.0
                boxes.append((x0, y0, SQ, SQ))
            else:
                boxes.append(None)
        vol[:, 0, 0] = 1.0  # same intensity range in every exam (prepare_exam min-max scales)
        xs.append(prepare_exam(vol))
        ys.append(lab)
    return torch.cat(xs), torch.as_tensor(np.concatenate(ys), dtype=torch.float32), boxes


def _inside(box, row, col):
    x, y, w, h = box
    return x <= col < x + w and y <= row < y + h


@pytest.fixture(scope="module")
def lesion_model():
    """An MRNet whose last conv layer and head learned 'bright square => positive'.

    Its frozen layers keep torchvision's default initialisation (not MRNet's He
    initialisation), under which these random features keep where a square is: the test
    is of the CAM plumbing, not of learning.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MRNet(pretrained=False)
    torch.manual_seed(0)
    model.features, model.classifier = alexnet().features, torch.nn.Linear(256, 1)
    x, y, _ = _square_exams(rng, 24)
    with torch.no_grad():
        frozen = model.features[:10](x)
    head = torch.nn.Sequential(*model.features[10:], model.pool, torch.nn.Flatten(), model.classifier)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(0, len(frozen), (16,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(frozen[idx])[:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def test_every_slice_gets_its_own_map_and_score(lesion_model):
    """MRNet's max over slices would give one map; per-slice scoring gives each slice its own."""
    rng = np.random.default_rng(1)
    x, _, boxes = _square_exams(rng, 1, n_slices=5, labels=1)
    layer = lesion_model.features[11]  # the layer the fixture trained
    maps, scores = cam.slice_cams(lesion_model, x, "gradcam", target_layer=layer, batch_size=2)  # 3 batches
    assert maps.shape == (5, 224, 224) and maps.dtype == np.float32
    assert scores.shape == (5,) and scores.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert (maps.reshape(5, -1).max(axis=1) > 0.5).all(), "a slice got an empty map"
    with torch.no_grad():
        expected = lesion_model.slice_logits(x)[:, 0].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # each slice's map points at that slice's own square (the squares are at different places)
    src = to_source(maps, (SIZE, SIZE))
    peaks = [np.unravel_index(int(m.argmax()), m.shape) for m in src]
    assert sum(_inside(b, *p) for b, p in zip(boxes, peaks)) >= 4
    # hooks released, model left as it was
    assert not layer._forward_hooks and not lesion_model.training
    assert all(p.grad is None and p.requires_grad for p in lesion_model.parameters())


def test_gradcam_points_at_the_lesion(lesion_model):
    rng = np.random.default_rng(2)
    x, y, boxes = _square_exams(rng, 6)
    maps, scores = cam.slice_cams(lesion_model, x, "gradcam", target_layer=lesion_model.features[11])
    # the classifier learned the task (ranking; 30 steps leave its calibration rough) ...
    assert roc_auc(y.numpy(), scores) >= 0.95
    # ... and its map's peak falls in the square on most positive slices
    src = to_source(maps, (SIZE, SIZE))
    hits = [_inside(b, *np.unravel_index(int(src[k].argmax()), src[k].shape))
            for k, b in enumerate(boxes) if b is not None]
    assert len(hits) >= 8
    assert np.mean(hits) >= 0.8, f"GradCAM pointing game {np.mean(hits):.2f} on {len(hits)} positive slices"


def test_the_methods_are_the_four_of_pytorch_grad_cam():
    assert sorted(cam.METHODS) == sorted(GRAD_CAM_CLASSES)


@pytest.mark.parametrize("method", sorted(GRAD_CAM_CLASSES))
def test_all_methods_run(lesion_model, method):
    rng = np.random.default_rng(3)
    x, _, _ = _square_exams(rng, 1, n_slices=2, labels=1)
    maps, scores = cam.slice_cams(lesion_model, x, method.upper())  # names are case-insensitive
    assert maps.shape == (2, 224, 224) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6 and maps.max() > 0
    assert scores.shape == (2,)
    # the reference: pytorch-grad-cam's own class for this method, run directly
    with GRAD_CAM_CLASSES[method](model=_SliceLogits(lesion_model), target_layers=[cam.default_target_layer(lesion_model)]) as c:
        ref = c(input_tensor=x, targets=[ClassifierOutputTarget(0)] * 2)
    lesion_model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(maps, ref, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(scores, lesion_model.slice_logits(x)[:, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_methods_give_different_maps(lesion_model):
    x, _, _ = _square_exams(np.random.default_rng(3), 1, n_slices=2, labels=1)
    maps = {m: cam.slice_cams(lesion_model, x, m)[0] for m in GRAD_CAM_CLASSES}
    names = sorted(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(maps[a] - maps[b]).max() > 1e-3, (a, b)


def test_unknown_method_is_refused(lesion_model):
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(ParameterError, match="gradcam, gradcam\\+\\+, hirescam, layercam"):
        cam.slice_cams(lesion_model, x, "scorecam")
    with pytest.raises(ParameterError, match="batch_size"):
        cam.slice_cams(lesion_model, x, "gradcam", batch_size=0)
    with pytest.raises(ParameterError, match="S, 3, H, W"):
        cam.slice_cams(lesion_model, torch.zeros(3, 224, 224), "gradcam")


# --------------------------------------------------------------------------- heatmap file


@pytest.fixture(scope="module")
def synth_targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = synth.SynthConfig(image_size=64, n_slices=3, n_train=2, n_val=1, n_test=0,
                            kneemri_exams=0, kneemri_slices=6, kneemri_size=64)
    synth.generate(root, cfg, seed=0, progress=False)
    files = sorted((root / "fastmri").glob("singlecoil_*/*.h5"))
    return root, [(f.stem, read_volume(f)[1]) for f in files]


@pytest.fixture(scope="module")
def heatmap_file(synth_targets, tmp_path_factory):
    torch.manual_seed(0)
    model = MRNet().eval()
    out = RunDir(tmp_path_factory.mktemp("run")).heatmaps("kneemri")
    path = cam.compute_heatmaps(model, synth_targets[1], ["gradcam", "layercam"], out, progress=False)
    return model, path


def test_compute_and_read_round_trip(synth_targets, heatmap_file):
    model, path = heatmap_file
    _, volumes = synth_targets
    assert path.is_file()
    assert not list(path.parent.glob("*.part")), "temporary file left behind"
    info = cam.heatmap_info(path)
    assert info["methods"] == ["gradcam", "layercam"]
    assert info["files"] == sorted(stem for stem, _ in volumes)
    assert info["target_layer"] == cam.DEFAULT_TARGET_LAYER and info["flip_ud"] is False
    for stem, target in volumes:
        with torch.no_grad():
            expected = model.slice_logits(prepare_exam(target))[:, 0].numpy()
        for method in ("gradcam", "layercam"):
            maps, scores = cam.read_heatmaps(path, method, stem, n_slices=target.shape[0], shape=target.shape[1:])
            assert maps.shape == target.shape and maps.dtype == np.float32
            assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
            np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    maps, _ = cam.read_heatmaps(path, "gradcam", volumes[0][0] + ".h5")  # an .h5 name works too
    assert maps.shape == volumes[0][1].shape
    # the stored maps are the classifier's maps moved back onto the target's pixels
    stem, target = volumes[0]
    for method in ("gradcam", "layercam"):
        want = to_source(cam.slice_cams(model, prepare_exam(target), method)[0], target.shape[1:])
        np.testing.assert_allclose(cam.read_heatmaps(path, method, stem)[0], want, atol=1e-5)


def test_read_heatmaps_mismatches_name_the_file(synth_targets, heatmap_file, tmp_path):
    _, path = heatmap_file
    stem, target = synth_targets[1][0]
    cases = [
        dict(method="gradcam", file_stem="file9999999"),                       # other dataset
        dict(method="hirescam", file_stem=stem),                               # method not computed
        dict(method="gradcam", file_stem=stem, n_slices=target.shape[0] + 1),  # wrong slice count
        dict(method="gradcam", file_stem=stem, shape=(32, 32)),                # wrong geometry
    ]
    for kwargs in cases:
        with pytest.raises(DataError) as info:
            cam.read_heatmaps(path, **kwargs)
        assert str(path) in str(info.value), kwargs
    missing = tmp_path / "nothing.h5"
    with pytest.raises(DataError, match="does not exist") as info:
        cam.read_heatmaps(missing, "gradcam", stem)
    assert str(missing) in str(info.value)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5") as info:
        cam.read_heatmaps(junk, "gradcam", stem)
    assert str(junk) in str(info.value)


def test_failed_compute_leaves_nothing(tmp_path):
    torch.manual_seed(0)
    model = MRNet().eval()
    good = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    bad = good.copy()
    bad[0, 3, 3] = np.nan
    out = tmp_path / "heatmaps.h5"
    with pytest.raises(DataError, match="bad_volume"):
        cam.compute_heatmaps(model, [("ok", good), ("bad_volume", bad)], "gradcam", out, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ParameterError, match="unknown CAM method"):
        cam.compute_heatmaps(model, [("ok", good)], ["gradcam", "nope"], out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_flip_ud_maps_land_on_the_source_pixels(lesion_model, tmp_path):
    """A volume stored upside down, computed with flip_ud=True, gives the flipped maps."""
    rng = np.random.default_rng(4)
    vol = rng.normal(0.2, 0.05, (2, SIZE, SIZE)).astype(np.float32)
    vol[:, 5:13, 40:48] = 1.0
    vol[:, 0, 0] = 1.0
    up = cam.compute_heatmaps(lesion_model, [("v", vol)], "gradcam", tmp_path / "a.h5", progress=False)
    down = cam.compute_heatmaps(lesion_model, [("v", vol[:, ::-1].copy())], "gradcam", tmp_path / "b.h5",
                                flip_ud=True, progress=False)
    a, _ = cam.read_heatmaps(up, "gradcam", "v")
    b, _ = cam.read_heatmaps(down, "gradcam", "v")
    for m in a:  # the maps are not flat: each peaks on the square (rows 5-12, columns 40-47)
        assert _inside((40, 5, SQ, SQ), *np.unravel_index(int(m.argmax()), m.shape))
    np.testing.assert_allclose(b, a[:, ::-1], atol=1e-4)
    with h5py.File(down) as f:
        assert bool(f.attrs["flip_ud"]) is True


def _split_files(boxes, info):
    files = sorted(set(boxes.file) & set(info["files"]))
    if len(files) < 2:
        pytest.skip("the fixture has one annotated file")
    return files[:1], files[1:]


def test_localization_records_by_hand(synth_targets, heatmap_file):
    from mrlib.data.annotations import boxes_for, read_boxes
    from mrlib.metrics import box_iou, energy_in_boxes, pointing_game

    root, volumes = synth_targets
    _, path = heatmap_file
    boxes = read_boxes(root / "annotations" / "knee.csv", image_height=64)
    assert len(boxes), "the synthetic data should carry lesion boxes"
    info = cam.heatmap_info(path)
    scored, prior = _split_files(boxes, info)
    records = cam.slice_records(path, boxes, ["gradcam", "layercam"], scored, prior)
    table = cam.summarize_records(records, info, "evaluation")
    assert list(table.columns) == list(cam.TABLE_COLUMNS)
    assert set(table.layer) == {cam.DEFAULT_TARGET_LAYER} and set(table.grid) == {"x".join(map(str, info["grid"]))}
    n_annotated = len(boxes[boxes.file.isin(scored)].drop_duplicates(["file", "slice"]))
    assert (table["n_slices"] == n_annotated).all()
    # each CAM row by hand: every annotated slice's map against the union of its boxes
    for method in ("gradcam", "layercam"):
        row = table.set_index("method").loc[method]
        hits, energy, iou = [], [], []
        for stem, s in sorted(set(zip(boxes.loc[boxes.file.isin(scored), "file"], boxes.loc[boxes.file.isin(scored), "slice"]))):
            m = cam.read_heatmaps(path, method, stem)[0][int(s)]
            b = boxes_for(boxes, stem, int(s))
            hits.append(pointing_game(m, b))
            energy.append(energy_in_boxes(m, b))
            iou.append(box_iou(m, b, 0.5))
        assert row.pointing_game == pytest.approx(np.mean(hits))
        assert row.energy_in_box == pytest.approx(np.mean(energy))
        assert row.iou == pytest.approx(np.mean(iou))
    with pytest.raises(DataError, match="none of the"):
        cam.slice_records(path, boxes.assign(file="file9999999"), ["gradcam"], scored, prior)
    with pytest.raises(ParameterError, match="overlap"):
        cam.slice_records(path, boxes, ["gradcam"], scored, scored)


def test_baselines_are_scored_on_the_same_slices(synth_targets, heatmap_file):
    from mrlib.data.annotations import read_boxes
    from mrlib.data.boxes import boxes_mask
    from mrlib.metrics import energy_in_boxes

    root, volumes = synth_targets
    _, path = heatmap_file
    boxes = read_boxes(root / "annotations" / "knee.csv", image_height=64)
    info = cam.heatmap_info(path)
    scored, prior = _split_files(boxes, info)
    table = cam.summarize_records(cam.slice_records(path, boxes, ["gradcam"], scored, prior), info, "evaluation")
    assert list(table.method) == ["gradcam", "uniform", "box prior", "map prior (gradcam)",
                                  f"ideal at {info['grid'][0]}x{info['grid'][1]}"]
    n = len(boxes[boxes.file.isin(scored)].drop_duplicates(["file", "slice"]))
    assert (table.n_slices == n).all()
    # the box prior is the mean of the prior files' box masks, scored on the scored slices
    shape = (64, 64)
    masks = [boxes_mask(shape, list(g[["x", "y", "width", "height"]].itertuples(index=False, name=None)))
             for _, g in boxes[boxes.file.isin(prior)].groupby(["file", "slice"])]
    mean = np.mean(masks, axis=0)
    want = np.mean([energy_in_boxes(mean, list(g[["x", "y", "width", "height"]].itertuples(index=False, name=None)))
                    for _, g in boxes[boxes.file.isin(scored)].groupby(["file", "slice"])])
    assert table.set_index("method").loc["box prior", "energy_in_box"] == pytest.approx(want)
    ideal = table[table.method.str.startswith("ideal")].iloc[0]
    uniform = table[table.method == "uniform"].iloc[0]
    assert ideal.energy_in_box > 2 * uniform.energy_in_box  # the grid's ceiling is far above no information


def test_twin_shift_is_the_lesion_maps_energy_minus_the_twins(synth_targets, tmp_path):
    """Twin maps equal to the lesion maps shift nothing; other twin maps shift by the difference."""
    from mrlib.data.annotations import boxes_for, read_boxes
    from mrlib.metrics import energy_in_boxes

    root, volumes = synth_targets
    torch.manual_seed(0)
    model = MRNet().eval()
    path = cam.compute_heatmaps(model, volumes, ["gradcam"], tmp_path / "maps.h5", progress=False)
    boxes = read_boxes(root / "annotations" / "knee.csv", image_height=64)
    info = cam.heatmap_info(path)
    scored, prior = _split_files(boxes, info)
    same = cam.compute_heatmaps(model, [v for v in volumes if v[0] in scored], ["gradcam"], tmp_path / "twin.h5",
                                progress=False)
    records = cam.slice_records(path, boxes, ["gradcam"], scored, prior, twin_path=same)
    shift = records[records.method == "twin shift (gradcam)"]
    assert len(shift) == (records.method == "gradcam").sum() > 0
    np.testing.assert_allclose(shift.energy_in_box, 0.0, atol=1e-6)
    flat = cam.compute_heatmaps(model, [(s, np.zeros_like(v)) for s, v in volumes if s in scored], ["gradcam"],
                                tmp_path / "flat.h5", progress=False)
    records = cam.slice_records(path, boxes, ["gradcam"], scored, prior, twin_path=flat)
    lesion = records[records.method == "gradcam"]
    shift = records[records.method == "twin shift (gradcam)"].energy_in_box.to_numpy()
    by_hand = [energy_in_boxes(cam.read_heatmaps(flat, "gradcam", r.file)[0][r.slice], boxes_for(boxes, r.file, r.slice))
               for r in lesion.itertuples()]
    np.testing.assert_allclose(shift, lesion.energy_in_box.to_numpy() - np.array(by_hand), atol=1e-6)
    d = cam.paired_difference(records, "twin shift (gradcam)", None)
    assert d["difference"] == pytest.approx(shift.mean()) and d["low"] <= d["difference"] <= d["high"]


def test_gating_zeroes_the_map_of_a_slice_below_tau():
    maps = np.ones((3, 4, 4), np.float32)
    scores = np.array([-2.0, 0.0, 2.0])  # probabilities 0.12, 0.5, 0.88
    gated = cam.gate_maps(maps, scores, tau=0.5)
    assert gated[0].max() == 0 and (gated[1:] == 1).all()
    assert (cam.gate_maps(maps, scores, float("nan")) == maps).all()  # no tau: no gate
    assert maps.min() == 1  # a new array


def test_cluster_bootstrap_resamples_volumes():
    from mrlib.stats import cluster_bootstrap

    values = [1.0, 1.0, 1.0, 3.0]  # three slices of one volume, one of another
    mean, low, high, n = cluster_bootstrap(values, ["a", "a", "a", "b"], n_boot=500)
    assert n == 2 and mean == pytest.approx(1.5)
    assert low == pytest.approx(1.0) and high == pytest.approx(3.0)  # a resample of only a or only b


class _BrightSpot(torch.nn.Module):
    """Hand-set weights: a 5 x 5 mean filter with a high threshold (fires on a bright spot
    only), global average pooling and a linear unit of weight 1."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 5, padding=2), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1.0 / 75)
            self.features[0].bias.fill_(-1.5)  # prepared scale: a bright spot is near 4, dim anatomy below 0.4
            self.classifier.weight.fill_(1.0)
            self.classifier.bias.zero_()

    def slice_logits(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def test_a_hand_set_bright_spot_detector_maps_back_onto_its_lesion(tmp_path):
    """Through the classifier's crop (128 -> 112 px) and up/down flip and back, the map's peak
    lies in the lesion's box; on the lesion-free twin the box holds under twice its area share."""
    from mrlib.data.boxes import boxes_mask
    from mrlib.metrics import energy_in_boxes

    cfg = synth.SynthConfig(image_size=128, n_slices=6, lesion_free_fraction=0.0)
    for index in range(20):  # the first subject with a lesion inside the classifier's central crop
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(0, 0, 0, index), twin=True)
        found = [(les.mask, s) for les in vol.lesions for s in np.flatnonzero(les.mask.sum(axis=(1, 2)) >= 30)
                 if np.nonzero(les.mask[s])[0].min() >= 10 and np.nonzero(les.mask[s])[0].max() < 118
                 and np.nonzero(les.mask[s])[1].min() >= 10 and np.nonzero(les.mask[s])[1].max() < 118]
        if found:
            break
    mask, s = found[0]
    rows, cols = np.nonzero(mask[s])
    box = [(int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1))]
    twin = 0.3 * vol.twin[s] / vol.twin[s].max()  # the anatomy, dimmed
    lesion = np.where(mask[s], 1.0, twin)  # the lesion, the brightest thing on the slice
    model = _BrightSpot().eval()
    out = {}
    for name, image in (("lesion", lesion), ("twin", twin)):
        path = cam.compute_heatmaps(model, [(name, image[None].astype(np.float32))], ["gradcam"], tmp_path / f"{name}.h5",
                                    flip_ud=True, input_size=112, target_layer=model.features[1], progress=False)
        out[name] = cam.read_heatmaps(path, "gradcam", name)[0][0]
        assert cam.heatmap_info(path)["grid"] == (112, 112)
    peak = np.unravel_index(int(out["lesion"].argmax()), out["lesion"].shape)
    assert boxes_mask((128, 128), box)[peak], f"peak {peak} outside the lesion box {box}"
    share = boxes_mask((128, 128), box).mean()
    assert energy_in_boxes(out["twin"], box) < 2 * share


def test_auto_layer_is_each_classifiers_own_and_a_wrong_name_lists_the_relus():
    from mrlib.models import SliceNet

    mrnet, slicenet = MRNet(), SliceNet(4)
    assert cam.default_target_layer(mrnet) is dict(mrnet.named_modules())["features.4"]
    assert cam.default_target_layer(slicenet, "auto") is dict(slicenet.named_modules())["features.13"]
    assert cam.default_target_layer(slicenet, "features.10") is slicenet.features[10]
    with pytest.raises(ParameterError, match="features.13"):
        cam.default_target_layer(slicenet, "features.4")  # MRNet's layer name is a BatchNorm here
    maps, _ = cam.slice_cams(slicenet, torch.randn(2, 3, 32, 32), "layercam")
    assert maps.shape == (2, 32, 32)
