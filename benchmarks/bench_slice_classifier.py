"""How well the in-domain (per-slice) classifier learns the synthetic lesions, apart from
the chapters: generate a cohort in memory, train :func:`mrlib.classifier.train_slice_classifier`
and print the slice AUC on the evaluation volumes beside what a slice's position alone gives.

Run: ``python benchmarks/bench_slice_classifier.py [--n-train 100] [--epochs 20] [--precision bf16]``.
The issue notes' classifier tables were measured with it (cohort seed 7, 128 px, 10 slices).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from mrlib import classifier
from mrlib.data import synth
from mrlib.metrics import roc_auc
from mrlib.models import MRNet


def cohort(cfg: synth.SynthConfig, seed: int, counts: dict[str, int]) -> classifier.ExamSet:
    """A per-slice ExamSet: targets at native size, a slice positive when a lesion crosses it."""
    exams, per_slice, split_of = [], [], []
    for code, (split, n) in enumerate(counts.items()):
        for i in range(n):
            vol = synth.make_fastmri_volume(cfg, synth.subject_rng(seed, 0, code, i))
            y = np.zeros(vol.target.shape[0], dtype=int)
            for lesion in vol.lesions:
                y |= lesion.mask.any(axis=(1, 2))
            exams.append(classifier.prepare_exam(vol.target, size=cfg.image_size))
            per_slice.append(y)
            split_of.append(split)
    split_of = np.array(split_of)
    splits = {s: np.flatnonzero(split_of == s) for s in counts}
    labels = np.array([int(y.any()) for y in per_slice])
    return classifier.ExamSet(exams, labels, [str(i) for i in range(len(exams))], splits, per_slice)


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
    args = parser.parse_args()
    cfg = synth.SynthConfig(image_size=128, n_slices=10, lesion_contrast=tuple(args.contrast))
    t0 = time.perf_counter()
    data = cohort(cfg, args.cohort_seed, {"train": args.n_train, "val": args.n_val, "test": args.n_test})
    t1 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = MRNet()
    with tempfile.TemporaryDirectory() as out:
        history = classifier.train_slice_classifier(model, data, out, epochs=args.epochs, lr=args.lr,
                                                    weight_decay=args.weight_decay, seed=args.seed,
                                                    precision=args.precision, progress=False)
    t2 = time.perf_counter()
    test = data.splits["test"]
    logits = np.concatenate(classifier.slice_logits(model, data.exams, test, torch.device("cpu")))
    y = np.concatenate([data.slice_labels[i] for i in test])
    print(json.dumps({
        "args": vars(args),
        "lesion_slices": {s: int(sum(data.slice_labels[i].sum() for i in idx)) for s, idx in data.splits.items()},
        "slice_auc_last_epoch": round(roc_auc(y, logits), 3),
        "position_alone_auc": round(classifier.slice_position_auc(data.slice_labels, test), 3),
        "selection_auc_per_epoch": [round(h["val_auc"], 3) for h in history],
        "seconds": {"generate": round(t1 - t0, 1), "train": round(t2 - t1, 1)},
    }))


if __name__ == "__main__":
    main()
