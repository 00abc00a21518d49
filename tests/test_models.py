"""Models, MRNet preprocessing and training, and the shared training loop."""

import json

import numpy as np
import pytest
import torch

from mrlib import classifier
from mrlib.errors import DataError, MrlibError, ParameterError
from mrlib.metrics import bootstrap_auc_ci, roc_auc, score_auc_ci
from mrlib.models import MRNet, SeedUnet, SliceNet, build_classifier, build_unet, count_parameters, fastmri_unet
from mrlib.rundir import CheckpointDir
from mrlib.train import fit, load_weights, save_checkpoint


def test_parameter_counts():
    # The report's Figure 3 U-Net, exactly.
    assert count_parameters(SeedUnet()) == 365_761
    # AlexNet features (2,469,696) + Linear(256, 1) (257): what MRNet's forward pass uses.
    # The report's 61,101,097 includes AlexNet's unused classifier (58,631,144).
    assert count_parameters(MRNet()) == 2_469_953
    assert count_parameters(MRNet()) + 37_752_832 + 16_781_312 + 4_097_000 == 61_101_097
    assert count_parameters(fastmri_unet(chans=32, num_pool_layers=4)) == 7_756_097


def test_the_residual_unet_is_fastmris_plus_its_input():
    torch.manual_seed(0)
    res, plain = build_unet("residual", chans=4, num_pool_layers=2), build_unet("unet", chans=4, num_pool_layers=2)
    assert count_parameters(res) == count_parameters(plain)
    plain.load_state_dict({k.removeprefix("unet."): v for k, v in res.state_dict().items()})  # the same weights
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(res(x), x + plain(x))
        for p in res.unet.up_conv[-1][-1].parameters():  # fastMRI's last layer, a 1 x 1 convolution
            p.zero_()  # a U-Net whose last layer outputs 0 returns the zero-filled input unchanged
        torch.testing.assert_close(res(x), x)
    with pytest.raises(ParameterError, match="residual"):
        build_unet("resnet")


def test_mrnet_scores_each_slice_and_takes_the_max_of_features():
    torch.manual_seed(0)
    model = MRNet().eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        per_slice = model.slice_logits(x)
        exam = model(x)
        feats = model.slice_features(x)
        singles = [model(x[i : i + 1]) for i in range(5)]
        shuffled = model(x.flip(0))
    assert per_slice.shape == (5, 1) and exam.shape == (1,)
    torch.testing.assert_close(exam, model.classifier(feats.max(0).values))
    # a one-slice exam scores as that slice's own logit ...
    for i, single in enumerate(singles):
        torch.testing.assert_close(single, per_slice[i])
    # ... and the order of the slices does not matter
    torch.testing.assert_close(shuffled, exam)
    # the max of the features is not the max of the slice logits (here they differ)
    assert abs(exam.item() - per_slice.max().item()) > 1e-4


def test_exam_with_zero_slices_is_refused():
    with pytest.raises(DataError, match="at least one slice"):
        classifier.prepare_exam(np.zeros((0, 32, 32)), where="empty.pck")
    with pytest.raises(MrlibError, match="S >= 1"):
        MRNet()(torch.zeros(0, 3, 64, 64))


@pytest.mark.parametrize("shape", [(2, 100, 80), (2, 300, 256)])
def test_preprocessing_and_its_inverse(shape):
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    x = classifier.prepare_exam(vol)
    assert x.shape == (shape[0], 3, 224, 224)
    assert torch.equal(x[:, 0], x[:, 2])
    assert abs(float(((x[:, 0] * classifier.STD) + classifier.MEAN).max()) - 255) < 1e-3
    # a marker pixel in the classifier's input comes back at the source pixel it came from
    maps = torch.zeros(shape[0], 224, 224)
    maps[:, 112, 112] = 1
    back = classifier.to_source(maps, shape[1:])
    y, x_ = np.unravel_index(back[0].argmax(), shape[1:])
    assert abs(y - shape[1] / 2) <= 2 and abs(x_ - shape[2] / 2) <= 2
    flipped = classifier.to_source(maps.flip(-2), shape[1:], flip_ud=True)
    np.testing.assert_allclose(flipped, back, atol=1e-6)


def test_mrnet_exams_keep_bien_et_als_field_of_view_at_any_input_size():
    """At 224 the MRNet-v1.0 preprocessing is Bien et al.'s 224 crop; at a CPU preset's 64 it
    shrinks that crop instead of cutting the middle 64 pixels (a quarter of the knee) out."""
    vol = np.zeros((2, 256, 256), np.float32)
    vol[:, 128, 128] = 1.0
    vol[:, 24:40, 24:40] = 2.0  # near the corner: inside Bien et al.'s crop, far outside a 64-pixel one
    bien = classifier.prepare_exam(vol, fov=classifier.MRNET_FOV)
    assert torch.equal(bien, classifier.prepare_exam(vol))  # exactly the 224 crop
    small = classifier.prepare_exam(vol, size=64, fov=classifier.MRNET_FOV)
    assert small.shape == (2, 3, 64, 64)
    y, x = np.unravel_index(int(small[0, 0].argmax()), (64, 64))
    assert y < 10 and x < 10, (y, x)  # the corner square, where 64 / 224 of it puts it
    assert int((classifier.prepare_exam(vol, size=64)[0, 0] > 0).sum()) == 1  # a 64 crop keeps the centre pixel only
    with pytest.raises(ParameterError, match="fov"):
        classifier.prepare_exam(vol, size=64, fov=1.5)


def test_auc_against_a_known_case():
    # 3 of the 4 positive/negative pairs are ordered correctly: AUC 0.75
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.5)
    low, high = bootstrap_auc_ci([0, 0, 0, 1, 1, 1] * 5, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 5)
    assert low == high == 1.0
    low, high = bootstrap_auc_ci([0, 1] * 20, np.random.default_rng(0).random(40))
    assert 0 <= low < 0.5 < high <= 1
    with pytest.raises(DataError, match="both classes"):
        roc_auc([1, 1, 1], [0.2, 0.5, 0.9])


def test_score_auc_interval_stays_wider_than_a_point_at_perfect_separation():
    perfect = ([0, 0, 0, 1, 1, 1] * 5, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 5)
    low, high = score_auc_ci(*perfect)
    assert high == 1.0 and 0.8 < low < 0.99  # the bootstrap above collapses to [1, 1]
    small_low, _ = score_auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert small_low < low  # fewer exams, a wider interval
    # away from the edges it agrees with the bootstrap to a few hundredths
    rng = np.random.default_rng(0)
    y, s = np.r_[np.zeros(60), np.ones(60)], np.r_[rng.normal(0, 1, 60), rng.normal(1, 1, 60)]
    auc, (lo, hi), (blo, bhi) = roc_auc(y, s), score_auc_ci(y, s), bootstrap_auc_ci(y, s)
    assert lo < auc < hi and abs(lo - blo) < 0.03 and abs(hi - bhi) < 0.03
    lo, hi = score_auc_ci(1 - y, s)  # perfectly wrong is the mirror image
    assert lo == pytest.approx(1 - score_auc_ci(y, s)[1], abs=1e-6)


def test_the_feature_auc_within_each_group_ranks_only_against_its_own_negatives():
    """Two acquisitions whose feature scales differ tenfold: within each, every lesion is
    above its twin; pooled, the PD lesions fall below the PDFS twins."""
    pd_pos, pd_neg = [0.30, 0.32, 0.34], [0.20, 0.22, 0.24]
    fs_pos, fs_neg = [3.0, 3.2, 3.4], [2.0, 2.2, 2.4]
    labels = [1, 1, 1, 0, 0, 0] * 2
    scores = pd_pos + pd_neg + fs_pos + fs_neg
    groups = ["PD"] * 6 + ["PDFS"] * 6
    pooled = classifier.feature_auc(labels, scores)["baseline_auc"]
    within = classifier.feature_auc_by_group(labels, scores, groups)
    assert pooled == pytest.approx(0.75)  # the 9 PD-lesion / PDFS-twin pairs are all wrong
    assert set(within) == {"PD", "PDFS"} and all(w["auc"] == 1.0 and w["n"] == 3 for w in within.values())
    assert all(w["auc_ci"][0] < 1.0 for w in within.values())  # an interval, not a point
    one_class = classifier.feature_auc_by_group([1, 1, 0], [1.0, 2.0, 0.5], ["a", "a", "b"])
    assert np.isnan(one_class["a"]["auc"]) and one_class["a"]["n"] == 2


def test_stratified_split_keeps_both_labels_everywhere():
    labels = np.array([0] * 20 + [1] * 10)
    splits = classifier.stratified_split(labels, seed=1)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(30))
    for idx in splits.values():
        assert 0 < labels[idx].sum() < len(idx)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_checkpoint(tmp_path / "unet.pt", {"model": SeedUnet().state_dict()})
    with pytest.raises(MrlibError, match="does not fit MRNet"):
        load_weights(MRNet(), tmp_path / "unet.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MrlibError, match="junk.pt"):
        load_weights(MRNet(), tmp_path / "junk.pt")


def test_unknown_task_is_refused():
    with pytest.raises(ParameterError, match="task"):
        classifier.load_exams({"kneemri": "x", "data_dir": "x"}, task="meniscus")


def _tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).float()
    return x, y


def _train(out_dir, epochs, resume=True, validate_every=1, plateau=True):
    torch.manual_seed(0)
    x, y = _tiny_problem()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1) if plateau else None
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def batches(epoch):
        order = np.random.default_rng([0, epoch]).permutation(32)
        return [order[i : i + 8] for i in range(0, 32, 8)]

    history = fit(
        model, batches, lambda m, idx: loss_fn(m(x[idx])[:, 0], y[idx]),
        lambda m: {"val_loss": loss_fn(m(x)[:, 0], y).item()},
        opt, epochs, out_dir, scheduler=sched, resume=resume, config={"lr": 1e-2}, progress=False,
        validate_every=validate_every,
    )
    return model, history


def test_validating_every_third_epoch_and_the_last_trains_the_same_weights(tmp_path):
    every, h1 = _train(tmp_path / "a", epochs=5, plateau=False)
    sparse, h2 = _train(tmp_path / "b", epochs=5, validate_every=3, plateau=False)
    for p, q in zip(every.parameters(), sparse.parameters()):
        assert torch.equal(p, q)  # validation changes nothing of the training
    assert [("val_loss" in h) for h in h2] == [False, False, True, False, True]
    assert [h["train_loss"] for h in h2] == [h["train_loss"] for h in h1]
    assert [h2[2]["val_loss"], h2[4]["val_loss"]] == [h1[2]["val_loss"], h1[4]["val_loss"]]
    # the best checkpoint is the best of the validated epochs
    best = torch.load(CheckpointDir(tmp_path / "b").best, weights_only=True)
    assert best["epoch"] + 1 == (3 if h1[2]["val_loss"] < h1[4]["val_loss"] else 5)
    with pytest.raises(ParameterError, match="ReduceLROnPlateau"):
        _train(tmp_path / "c", epochs=2, validate_every=2)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    straight, h1 = _train(tmp_path / "a", epochs=4)
    _train(tmp_path / "b", epochs=2)  # "killed" after two epochs
    resumed, h2 = _train(tmp_path / "b", epochs=4)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert h1 == h2
    ckpts = CheckpointDir(tmp_path / "b")
    assert json.loads(ckpts.history.read_text()) == h2 == ckpts.read_history()
    assert ckpts.best.is_file() and not list(tmp_path.rglob("*.part"))


def test_resume_with_other_parameters_is_refused(tmp_path):
    _train(tmp_path, epochs=1)
    from mrlib import train as T

    with pytest.raises(MrlibError, match="other parameters"):
        T.fit(torch.nn.Linear(1, 1), lambda e: [], None, None,
              torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1), 2, tmp_path, config={"lr": 5})


def test_exam_logit_reaches_a_slice_only_through_the_channels_whose_maximum_it_holds():
    """Why chapter 4 scores slices by their own logits (mrlib.cam's docstring)."""
    from mrlib.models import MRNet

    torch.manual_seed(0)
    model = MRNet().eval()
    feats = torch.rand(5, 256, requires_grad=True)  # 5 slices' pooled features
    model.classifier(feats.max(dim=0).values).sum().backward()
    holder = feats.detach().argmax(dim=0)  # which slice holds each channel's maximum
    want = torch.zeros(5, 256)
    want[holder, torch.arange(256)] = model.classifier.weight[0].detach()
    torch.testing.assert_close(feats.grad, want)
    per_slice = (feats.grad != 0).sum(dim=1)
    assert per_slice.sum() == 256 and per_slice.max() < 256  # every slice gets only part of the channels


def test_position_weights_make_a_slices_position_say_nothing_of_its_label():
    from mrlib.classifier import position_weights, slice_position_auc

    # lesions in the middle slices, as at the joint: position alone separates the classes
    labels = [np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
              np.zeros(10, dtype=int)]
    assert slice_position_auc(labels, [0, 1, 2]) > 0.85
    w = position_weights(labels, [0, 1, 2], n_bins=5)
    y = np.concatenate(labels).astype(bool)
    bins = np.concatenate([np.arange(10) * 5 // 10] * 3)
    assert w.mean() == pytest.approx(1.0)
    for b in range(5):
        pos, neg = (bins == b) & y, (bins == b) & ~y
        if pos.any():
            assert w[pos].sum() == pytest.approx(w[neg].sum())  # within a position, the classes weigh the same
        else:
            assert (w[bins == b] == 0).all()  # a position with one class teaches nothing
    # weighted, a score made of the position's fifth alone is at chance (the weights balance
    # the classes per fifth of the volume; finer positions inside a fifth are not balanced)
    from sklearn.metrics import roc_auc_score
    score = -np.abs(bins - 2.0)
    keep = w > 0
    assert roc_auc_score(y[keep], score[keep], sample_weight=w[keep]) == pytest.approx(0.5, abs=1e-6)


def test_matched_negatives_give_both_classes_the_same_position_histogram_and_show_every_position():
    from mrlib.classifier import matched_negatives

    labels = [np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
              np.zeros(10, dtype=int), np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])]
    y = np.concatenate(labels).astype(bool)
    bins = np.concatenate([np.arange(10) * 5 // 10] * 4)
    order = matched_negatives(labels, [0, 1, 2, 3], np.random.default_rng(0))
    assert sorted(order[y[order]]) == sorted(np.flatnonzero(y))  # every positive, once
    positives, negatives = (np.bincount(bins[order[c]], minlength=5) for c in (y[order], ~y[order]))
    # where lesions occur (bins 1 to 4), the negatives have the positives' position histogram;
    # bin 0, with no lesion, gives the mean count of an occupied bin (6 positives / 4 bins -> 2)
    np.testing.assert_array_equal(positives, [0, 1, 3, 1, 1])
    np.testing.assert_array_equal(negatives, [2, 1, 3, 1, 1])
    assert len(order) == 2 * y.sum() + 2
    again = matched_negatives(labels, [0, 1, 2, 3], np.random.default_rng(0))
    np.testing.assert_array_equal(order, again)  # drawn from the rng alone
    with pytest.raises(ParameterError, match="positive and negative"):
        matched_negatives([np.zeros(4, dtype=int)], [0], np.random.default_rng(0))


def test_slice_epoch_pairs_a_share_of_positives_with_their_own_twin_slice():
    from mrlib.classifier import matched_negatives, slice_epoch

    labels = [np.array([0, 0, 1, 1, 0, 0]), np.array([0, 1, 0, 0, 0, 0]), np.zeros(6, dtype=int),
              np.array([0, 0, 0, 1, 0, 0])]
    idx = [0, 1, 2, 3]
    y = lambda rows: np.array([0 if t else labels[i][s] for i, s, t in rows])  # noqa: E731
    flat = np.array([(i, s) for i in idx for s in range(6)])
    plain = slice_epoch(labels, idx, np.random.default_rng(3))
    np.testing.assert_array_equal(plain[:, :2], flat[matched_negatives(labels, idx, np.random.default_rng(3))])
    assert (plain[:, 2] == 0).all()
    # share 1: each positive slice appears once as itself and once from its twin; the
    # negatives of the two bins without a lesion (one each) stay as they are
    rows = slice_epoch(labels, idx, np.random.default_rng(3), twins={0: None, 1: None, 3: None}, twin_share=1.0)
    assert y(rows).sum() == 4 and rows[:, 2].sum() == 4 and len(rows) == 10
    assert sorted(r[1] for r in rows if r[1] >= 4) == [4, 5] and not rows[rows[:, 1] >= 4, 2].any()
    for k in range(50):  # never a twin in place of a lesion-free position's negative, at any share
        rows = slice_epoch(labels, idx, np.random.default_rng(k), twins={0: None, 1: None, 3: None}, twin_share=1.0)
        assert len(rows[rows[:, 1] >= 4]) == 2 and rows[:, 2].sum() == 4
    positives = sorted(map(tuple, rows[y(rows) == 1][:, :2]))
    assert sorted(map(tuple, rows[rows[:, 2] == 1][:, :2])) == positives
    # only exams with a twin are paired; half the share pairs some and leaves the rest matched
    rows = slice_epoch(labels, idx, np.random.default_rng(3), twins={1: None}, twin_share=1.0)
    assert [tuple(r[:2]) for r in rows if r[2]] == [(1, 1)]
    shares = [slice_epoch(labels, idx, np.random.default_rng(k), twins={0: None, 1: None, 3: None},
                          twin_share=0.5)[:, 2].sum() for k in range(200)]
    assert 1.7 < np.mean(shares) < 2.3  # 4 positives x 0.5


def test_slicenet_scores_slices_and_its_exam_is_their_maximum():
    torch.manual_seed(0)
    net = SliceNet(4).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        s = net.slice_logits(x)
        assert s.shape == (5, 1)
        assert net(x).item() == pytest.approx(s.max().item())
        assert net(x[None]).item() == pytest.approx(s.max().item())
    layers = dict(net.named_modules())
    assert isinstance(layers[net.cam_layer], torch.nn.ReLU)
    assert net.features[:-3](x).shape[-2:] == (8, 8)  # the last blocks see a quarter of the input size
    assert isinstance(build_classifier("slicenet"), SliceNet) and isinstance(build_classifier("mrnet"), MRNet)
    with pytest.raises(ParameterError, match="slice_arch"):
        build_classifier("resnet")
    with pytest.raises(MrlibError, match="S >= 1"):
        net(torch.zeros(0, 3, 32, 32))


def test_mrnet_from_scratch_starts_from_he_initialisation():
    torch.manual_seed(0)
    convs = [m for m in MRNet().features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.1)
        assert (conv.bias == 0).all()
