"""How well the in-domain (per-slice) classifier learns the synthetic lesions, and whether its
maps find them, apart from the chapters: generate a cohort in memory, train
:func:`mrlib.classifier.train_slice_classifier` and print

* the slice AUC on the evaluation volumes beside what a slice's position alone gives;
* the lesion-vs-twin test: on every lesion slice of the evaluation volumes, the logit of the
  slice and of the same slice of its lesion-free twin (the only difference is the lesion);
* localisation: the strict pointing game and the energy in the boxes of Grad-CAM and
  LayerCAM at ``--layer`` on the evaluation lesion slices, beside the training boxes' prior.

Run: ``python benchmarks/bench_slice_classifier.py [--n-train 100] [--epochs 20] [--precision bf16]``.
Diagnostic variants, none of them the chapters' method: ``--max-pool`` (global max instead of
average pooling), ``--batch-norm`` (a BatchNorm after each convolution), ``--twin-negatives``
(each lesion slice's negative is its own lesion-free twin: synthetic data only).
The issue notes' classifier tables were measured with it (cohort seed 7, 128 px, 10 slices).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from mrlib import cam, classifier
from mrlib.data import synth
from mrlib.metrics import energy_in_boxes, pointing_game, roc_auc
from mrlib.models import MRNet


def cohort(cfg: synth.SynthConfig, seed: int, counts: dict[str, int]):
    """A per-slice ExamSet (targets at native size, a slice positive when a lesion crosses
    it), each volume's lesion-free twin prepared alike, and each volume's lesion mask."""
    exams, twins, masks, per_slice, split_of = [], [], [], [], []
    for code, (split, n) in enumerate(counts.items()):
        for i in range(n):
            vol = synth.make_fastmri_volume(cfg, synth.subject_rng(seed, 0, code, i), twin=True)
            mask = np.zeros(vol.target.shape, bool)
            for lesion in vol.lesions:
                mask |= lesion.mask
            exams.append(classifier.prepare_exam(vol.target, size=cfg.image_size))
            twins.append(classifier.prepare_exam(vol.twin, size=cfg.image_size))
            masks.append(mask)
            per_slice.append(mask.any(axis=(1, 2)).astype(int))
            split_of.append(split)
    split_of = np.array(split_of)
    splits = {s: np.flatnonzero(split_of == s) for s in counts}
    labels = np.array([int(y.any()) for y in per_slice])
    return classifier.ExamSet(exams, labels, [str(i) for i in range(len(exams))], splits, per_slice), twins, masks


def with_twin_negatives(data: classifier.ExamSet, twins: list) -> classifier.ExamSet:
    """The training split plus each training volume's twin as an all-negative exam; an epoch
    then visits every lesion slice and the same slice of its twin (patches the sampler)."""
    train = list(data.splits["train"])
    exams, labels = list(data.exams), list(data.slice_labels)
    twin_of = {}
    for i in train:
        twin_of[i] = len(exams)
        exams.append(twins[i])
        labels.append(np.zeros_like(data.slice_labels[i]))
    splits = {**data.splits, "train": np.array(train + [twin_of[i] for i in train])}
    offsets = np.cumsum([0] + [len(labels[i]) for i in splits["train"]])
    start = {i: int(offsets[k]) for k, i in enumerate(splits["train"])}

    def paired(slice_labels, idx, rng, n_bins=5):
        pos = [start[i] + s for i in train for s in np.flatnonzero(slice_labels[i])]
        neg = [start[twin_of[i]] + s for i in train for s in np.flatnonzero(slice_labels[i])]
        return rng.permutation(np.array(pos + neg, dtype=np.int64))
    classifier.matched_negatives = paired
    return classifier.ExamSet(exams, np.r_[data.labels, np.zeros(len(train), int)], [str(i) for i in range(len(exams))],
                              splits, labels)


def boxes_of(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The bounding box ``(x, y, w, h)`` of each connected lesion region of a ``(H, W)`` mask."""
    labelled, _ = ndimage.label(mask)
    return [(x.start, y.start, x.stop - x.start, y.stop - y.start) for y, x in ndimage.find_objects(labelled)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--contrast", type=float, nargs=2, default=(0.4, 0.9))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the classifier's seed")
    parser.add_argument("--cohort-seed", type=int, default=7)
    parser.add_argument("--layer", default="features.4",
                        help="the CAM layer (after conv2; with --batch-norm that ReLU is features.6)")
    parser.add_argument("--max-pool", action="store_true")
    parser.add_argument("--batch-norm", action="store_true")
    parser.add_argument("--twin-negatives", action="store_true")
    args = parser.parse_args()
    cfg = synth.SynthConfig(image_size=128, n_slices=10, lesion_contrast=tuple(args.contrast))
    t0 = time.perf_counter()
    data, twins, masks = cohort(cfg, args.cohort_seed, {"train": args.n_train, "val": args.n_val, "test": args.n_test})
    test = data.splits["test"]
    if args.twin_negatives:
        data = with_twin_negatives(data, twins)
    t1 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = MRNet()
    if args.batch_norm:
        model.features = nn.Sequential(*[m for layer in model.features for m in (
            (layer, nn.BatchNorm2d(layer.out_channels)) if isinstance(layer, nn.Conv2d) else (layer,))])
    if args.max_pool:
        model.pool = nn.AdaptiveMaxPool2d(1)
    with tempfile.TemporaryDirectory() as out:
        history = classifier.train_slice_classifier(model, data, out, epochs=args.epochs, lr=args.lr,
                                                    weight_decay=args.weight_decay, seed=args.seed,
                                                    precision=args.precision, progress=False)
    t2 = time.perf_counter()
    model.eval()
    logits = np.concatenate(classifier.slice_logits(model, data.exams, test, torch.device("cpu")))
    y = np.concatenate([data.slice_labels[i] for i in test])
    prior = np.zeros((cfg.image_size,) * 2)
    for i in data.splits["train"][:args.n_train]:
        for s in np.flatnonzero(data.slice_labels[i]):
            for x0, y0, w, h in boxes_of(masks[i][s]):
                prior[y0:y0 + h, x0:x0 + w] += 1
    lesion, twin, scores = [], [], {"box prior": [], "gradcam": [], "layercam": []}
    layer = dict(model.named_modules())[args.layer]
    for i in test:
        slices = np.flatnonzero(data.slice_labels[i])
        if len(slices) == 0:
            continue
        with torch.no_grad():
            lesion += model.slice_logits(data.exams[i][slices])[:, 0].tolist()
            twin += model.slice_logits(twins[i][slices])[:, 0].tolist()
        maps = {m: cam.slice_cams(model, data.exams[i][slices], m, target_layer=layer)[0] for m in ("gradcam", "layercam")}
        for k, s in enumerate(slices):
            boxes = boxes_of(masks[i][s])
            for name in scores:
                heat = prior if name == "box prior" else maps[name][k]
                scores[name].append((pointing_game(heat, boxes), energy_in_boxes(heat, boxes)))
    lesion, twin = np.array(lesion), np.array(twin)
    print(json.dumps({
        "args": vars(args),
        "lesion_slices": {s: int(sum(data.slice_labels[i].sum() for i in data.splits[s][:n])) for s, n in
                          (("train", args.n_train), ("val", args.n_val), ("test", args.n_test))},
        "slice_auc_last_epoch": round(roc_auc(y, logits), 3),
        "position_alone_auc": round(classifier.slice_position_auc(data.slice_labels, test), 3),
        "lesion_vs_twin": {"share_higher": round(float((lesion > twin).mean()), 3),
                           "mean_logit_difference": round(float((lesion - twin).mean()), 3)},
        "localisation": {name: {"pointing_game": round(float(np.mean([p for p, _ in v])), 3),
                                "energy_in_box": round(float(np.mean([e for _, e in v])), 4), "n_slices": len(v)}
                         for name, v in scores.items()},
        "train_loss_per_epoch": [round(h["train_loss"], 3) for h in history],
        "selection_auc_per_epoch": [round(h["val_auc"], 3) for h in history],
        "seconds": {"generate": round(t1 - t0, 1), "train": round(t2 - t1, 1)},
    }))


if __name__ == "__main__":
    main()
