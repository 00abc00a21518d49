"""How well the in-domain (per-slice) classifier learns the synthetic lesions, and whether its
maps find them, apart from the chapters: generate a cohort in memory, train
:func:`mrlib.classifier.train_slice_classifier` and print

* the slice AUC on the evaluation volumes beside what a slice's position alone gives;
* the lesion-vs-twin test: on every lesion slice of the evaluation volumes, the logit of the
  slice and of the same slice of its lesion-free twin (the only difference is the lesion);
* localisation: the strict pointing game and the energy in the boxes of Grad-CAM and
  LayerCAM at ``--layer`` on the evaluation lesion slices, beside the training boxes' prior.

Run: ``python benchmarks/bench_slice_classifier.py [--n-train 100] [--epochs 20] [--precision bf16]``.
It trains the chapters' per-slice classifier by default (:class:`mrlib.models.SliceNet`, width 16,
lr 1e-3, half of the negatives the positive's own lesion-free twin: ``--twin-share``).
``--arch mrnet`` trains MRNet's AlexNet features instead, with the diagnostic switches
``--max-pool`` (global max instead of average pooling) and ``--batch-norm`` (a BatchNorm after
each convolution).
The issue notes' classifier tables were measured with it (cohort seed 7, 128 px, 10 slices);
that cohort is a development cohort, apart from every preset's data.
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
from mrlib.models import MRNet, SliceNet


def cohort(cfg: synth.SynthConfig, seed: int, counts: dict[str, int], size: int):
    """A per-slice ExamSet (targets at native size, a slice positive when a lesion crosses
    it), each volume's lesion-free twin prepared alike, and each volume's lesion mask."""
    exams, twins, masks, per_slice, split_of = [], [], [], [], []
    for code, (split, n) in enumerate(counts.items()):
        for i in range(n):
            vol = synth.make_fastmri_volume(cfg, synth.subject_rng(seed, 0, code, i), twin=True)
            mask = np.zeros(vol.target.shape, bool)
            for lesion in vol.lesions:
                mask |= lesion.mask
            exams.append(classifier.prepare_exam(vol.target, size=size))
            twins.append(classifier.prepare_exam(vol.twin, size=size))
            masks.append(mask)
            per_slice.append(mask.any(axis=(1, 2)).astype(int))
            split_of.append(split)
    split_of = np.array(split_of)
    splits = {s: np.flatnonzero(split_of == s) for s in counts}
    labels = np.array([int(y.any()) for y in per_slice])
    return classifier.ExamSet(exams, labels, [str(i) for i in range(len(exams))], splits, per_slice), twins, masks


def to_image(maps: np.ndarray, size: int) -> np.ndarray:
    """``(S, s, s)`` maps over the classifier's input resampled to the ``(S, size, size)`` image."""
    if maps.shape[-1] == size:
        return maps
    return torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(size, size), mode="bilinear",
                                           align_corners=False)[:, 0].numpy()


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
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--contrast", type=float, nargs=2, default=(0.4, 0.9))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the classifier's seed")
    parser.add_argument("--cohort-seed", type=int, default=7)
    parser.add_argument("--layer", nargs="+", default=["auto"],
                        help="CAM layers: auto is the model's own; slicenet's ReLUs are features.2, .6, .10, .13; "
                             "mrnet's features.4 is after conv2 (with --batch-norm that ReLU is features.6, "
                             "and the last ReLU features.16)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="the classifier's input size; above the image size the slices are upsampled")
    parser.add_argument("--max-pool", action="store_true")
    parser.add_argument("--batch-norm", action="store_true")
    parser.add_argument("--twin-share", type=float, default=0.5,
                        help="share of the negatives that are the positive's own lesion-free twin slice")
    parser.add_argument("--arch", default="slicenet", choices=["slicenet", "mrnet"])
    parser.add_argument("--width", type=int, default=16, help="slicenet: the first block's channels (doubling)")
    args = parser.parse_args()
    cfg = synth.SynthConfig(image_size=128, n_slices=10, lesion_contrast=tuple(args.contrast))
    t0 = time.perf_counter()
    size = args.input_size or cfg.image_size
    data, twins, masks = cohort(cfg, args.cohort_seed, {"train": args.n_train, "val": args.n_val, "test": args.n_test},
                                size)
    test = data.splits["test"]
    data = data._replace(twins={int(i): twins[i] for i in data.splits["train"]})
    t1 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = SliceNet(args.width) if args.arch == "slicenet" else MRNet()
    if args.batch_norm:
        model.features = nn.Sequential(*[m for layer in model.features for m in (
            (layer, nn.BatchNorm2d(layer.out_channels)) if isinstance(layer, nn.Conv2d) else (layer,))])
    if args.max_pool:
        model.pool = nn.AdaptiveMaxPool2d(1)
    with tempfile.TemporaryDirectory() as out:
        history = classifier.train_slice_classifier(model, data, out, epochs=args.epochs, lr=args.lr,
                                                    weight_decay=args.weight_decay, seed=args.seed,
                                                    precision=args.precision, progress=False,
                                                    twin_share=args.twin_share)
    t2 = time.perf_counter()
    model.eval()
    logits = np.concatenate(classifier.slice_logits(model, data.exams, test, torch.device("cpu")))
    y = np.concatenate([data.slice_labels[i] for i in test])
    prior = np.zeros((cfg.image_size,) * 2)
    for i in data.splits["train"][:args.n_train]:
        for s in np.flatnonzero(data.slice_labels[i]):
            for x0, y0, w, h in boxes_of(masks[i][s]):
                prior[y0:y0 + h, x0:x0 + w] += 1
    methods = [(m, layer) for layer in args.layer for m in ("gradcam", "layercam")]
    lesion, twin, scores = [], [], {"box prior": [], **{f"{m} {layer}": [] for m, layer in methods}}
    modules = {name: cam.default_target_layer(model, name) for name in args.layer}
    for i in test:
        slices = np.flatnonzero(data.slice_labels[i])
        if len(slices) == 0:
            continue
        with torch.no_grad():
            lesion += model.slice_logits(data.exams[i][slices])[:, 0].tolist()
            twin += model.slice_logits(twins[i][slices])[:, 0].tolist()
        maps = {f"{m} {layer}": to_image(cam.slice_cams(model, data.exams[i][slices], m, target_layer=modules[layer])[0],
                                         cfg.image_size) for m, layer in methods}
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
