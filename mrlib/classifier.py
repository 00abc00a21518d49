"""MRNet's input preprocessing and its inverse, shared by training and Grad-CAM.

Bien et al. (2018) centre-crop each slice to 224 x 224, scale the exam to 0-255, subtract
a mean and divide by a standard deviation measured on their data, and repeat the slice
into AlexNet's three channels. kneeMRI and fastMRI slices may be smaller than 224 (the
synthetic presets are), so a slice smaller than 224 is resized up instead of cropped.
:func:`to_source` undoes whichever happened, so a map over the classifier's input lands
on the pixels of the image it came from. MRNet-v1.0's 256-pixel slices at an input under
224 (the CPU presets') keep Bien et al.'s field of view instead, resized down
(:data:`MRNET_FOV`): a 64-pixel crop of them would show the middle quarter of the knee.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data import fastmri_h5, kneemri, mrnet, twins
from .data.annotations import read_file_list
from .data.boxes import foreground
from .data.manifest import acquisitions, file_index, manifest_boxes, role_files, twin_files
from .errors import DataError, ParameterError
from .metrics import AUC_CI_METHOD, roc_auc, score_auc_ci, youden_threshold
from .models import build_classifier
from .runtime import progress_bar, seed_everything
from .train import fit, load_weights

INPUT_SIZE = 224
#: Bien et al. 2018's intensity mean and standard deviation on the 0-255 scale.
MEAN, STD = 58.09, 49.73
#: The share of each MRNet-v1.0 slice (256 x 256) that Bien et al.'s 224 x 224 crop keeps.
MRNET_FOV = INPUT_SIZE / 256


def prepare_exam(
    volume: np.ndarray | torch.Tensor, flip_ud: bool = False, where: str = "exam", size: int = INPUT_SIZE,
    fov: float | None = None,
) -> torch.Tensor:
    """Turn one exam into MRNet's input.

    Args:
        volume: ``(S, H, W)`` slices, any real dtype.
        flip_ud: flip each slice up/down first (for data stored the other way up from
            the classifier's training data).
        where: the file to name in an error.
        size: the input size; Bien et al. use 224. A smaller size (e.g. 112) cuts the
            cost four-fold for CPU presets; AlexNet's features still apply.
        fov: keep the central ``fov`` share of each slice's height and width and resize
            that to ``size`` (antialiased when it shrinks): MRNet-v1.0's exams take
            :data:`MRNET_FOV`, which at ``size`` 224 is exactly Bien et al.'s crop. ``None``:
            crop to ``size`` when the slice is at least that large, else resize up.

    Returns:
        float32 tensor ``(S, 3, size, size)``.
    """
    x = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume).float()
    if x.ndim != 3 or x.shape[0] == 0:
        raise DataError(where, f"expected an exam of shape (slices, H, W) with at least one slice, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(where, "holds NaN or Inf values")
    if flip_ud:
        x = x.flip(-2)
    h, w = x.shape[-2:]
    if fov is not None:
        if not 0.0 < fov <= 1.0:
            raise ParameterError("fov", f"must be in (0, 1], got {fov!r}")
        ch, cw = int(round(h * fov)), int(round(w * fov))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[:, top : top + ch, left : left + cw]
        if (ch, cw) != (size, size):
            x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=min(ch, cw) > size)[:, 0]
    elif min(h, w) >= size:
        top, left = (h - size) // 2, (w - size) // 2
        x = x[:, top : top + size, left : left + size]
    else:
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    x = (x - MEAN) / STD
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def to_source(maps: torch.Tensor | np.ndarray, source_shape: tuple[int, int], flip_ud: bool = False) -> np.ndarray:
    """Map per-slice maps over the classifier's input back onto the source slices.

    Args:
        maps: ``(S, size, size)``, the input size :func:`prepare_exam` used.
        source_shape: ``(H, W)`` of the slices :func:`prepare_exam` was given.
        flip_ud: the same flag given to :func:`prepare_exam`.

    Returns:
        float32 array ``(S, H, W)``; pixels the crop cut away are 0.
    """
    m = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    size = m.shape[-1]
    h, w = source_shape
    if min(h, w) >= size:
        out = torch.zeros((m.shape[0], h, w))
        top, left = (h - size) // 2, (w - size) // 2
        out[:, top : top + size, left : left + size] = m
    else:
        out = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    if flip_ud:
        out = out.flip(-2)
    return out.numpy()


# --------------------------------------------------------------------------- training


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Split case indices into train/val/test, keeping each label's share in every split.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, each sorted; every split gets at
        least one case of each label that has three or more cases.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(len(idx) * test_fraction)) if test_fraction > 0 and len(idx) >= 3 else 0
        n_val = max(1, round(len(idx) * val_fraction)) if val_fraction > 0 and len(idx) >= 3 else 0
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    return {k: np.array(sorted(v), dtype=int) for k, v in out.items()}


def exam_logits(model: torch.nn.Module, exams: list[torch.Tensor], idx: np.ndarray, device: torch.device) -> np.ndarray:
    """MRNet's logit for each exam ``exams[i]`` (``(S, 3, s, s)``), ``i`` in ``idx``."""
    model.eval()
    with torch.no_grad():
        return np.array([model(exams[i].to(device)).item() for i in idx], dtype=np.float64)


def train_mrnet(
    model: torch.nn.Module,
    exams: list[torch.Tensor],
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    out_dir: str,
    epochs: int = 10,
    lr: float = 1e-5,
    weight_decay: float = 0.01,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    precision: str = "auto",
) -> list[dict[str, float]]:
    """Train MRNet with Bien et al.'s recipe, one exam per step.

    Adam (``lr``, ``weight_decay``), binary cross-entropy with the positive class
    weighted by the negative/positive ratio of the training split, ``ReduceLROnPlateau``
    on the validation loss (patience 5, factor 0.3, as published); ``best.pt`` is the
    epoch with the lowest validation loss. Exams are visited in an order drawn from
    ``(seed, epoch)``, so a resumed run repeats an uninterrupted one.

    Args:
        exams: prepared exams ``(S, 3, s, s)`` (:func:`prepare_exam`), on the CPU.
        labels: ``(n_exams,)`` 0/1.
        splits: ``{"train": idx, "val": idx, ...}`` from :func:`stratified_split`.
    """
    device = next(model.parameters()).device
    labels = np.asarray(labels).astype(np.float32)
    train_idx, val_idx = splits["train"], splits["val"]
    n_pos = float(labels[train_idx].sum())
    pos_weight = torch.tensor([(len(train_idx) - n_pos) / max(n_pos, 1.0)], device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(train_idx)
        return (int(i) for i in order)

    def step(m: torch.nn.Module, i: int) -> torch.Tensor:
        logit = m(exams[i].to(device))
        return loss_fn(logit, torch.tensor([labels[i]], device=device))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        logits = exam_logits(m, exams, val_idx, device)
        y = labels[val_idx]
        loss = loss_fn(torch.tensor(logits, dtype=torch.float32, device=device), torch.tensor(y, device=device))
        auc = roc_auc(y, logits) if 0 < y.sum() < len(y) else float("nan")
        return {"val_loss": loss.item(), "val_auc": auc}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=5, factor=0.3, threshold=1e-4)
    # the epoch count is not part of it: a finished run may be resumed for more epochs
    config = {"lr": lr, "weight_decay": weight_decay, "seed": seed, "precision": precision,
              "n_train": len(train_idx), "n_val": len(val_idx)}
    return fit(model, batches, step, validate, optimizer, epochs, out_dir, scheduler=scheduler,
               monitor="val_loss", mode="min", resume=resume, config=config, progress=progress, desc="MRNet",
               precision=precision)


def evaluate_mrnet(
    model: torch.nn.Module, exams: list[torch.Tensor], labels: np.ndarray, idx: np.ndarray,
    threshold: float = 0.5, seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """Test-split metrics: AUC with a 95 % score interval (:func:`mrlib.metrics.score_auc_ci`,
    non-degenerate at perfect separation), and accuracy at ``threshold``.

    Returns:
        ``(metrics, probabilities)``; metrics hold ``auc``, ``auc_ci`` ([low, high]),
        ``auc_ci_method``,
        ``n_test``, ``n_positive``, ``accuracy``, ``sensitivity``, ``specificity``, ``threshold``.
    """
    device = next(model.parameters()).device
    y = np.asarray(labels)[idx].astype(int)
    prob = 1 / (1 + np.exp(-exam_logits(model, exams, idx, device)))
    pred = (prob >= threshold).astype(int)
    metrics = {
        "auc": roc_auc(y, prob),
        "auc_ci": list(score_auc_ci(y, prob)),
        "auc_ci_method": AUC_CI_METHOD,
        "n_test": int(len(y)),
        "n_positive": int(y.sum()),
        "accuracy": float((pred == y).mean()),
        "sensitivity": float(pred[y == 1].mean()) if y.sum() else float("nan"),
        "specificity": float(1 - pred[y == 0].mean()) if (y == 0).any() else float("nan"),
        "threshold": float(threshold),
    }
    return metrics, prob


# --------------------------------------------------------------------------- per-slice sources


def slice_logits(model: torch.nn.Module, exams: list[torch.Tensor], idx, device: torch.device,
                 batch_size: int = 32) -> list[np.ndarray]:
    """Each slice's own logit (``model.slice_logits``) of exams ``idx``: one ``(S,)`` array per exam."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in idx:
            x = exams[i]
            out.append(np.concatenate([model.slice_logits(x[s:s + batch_size].to(device))[:, 0].float().cpu().numpy()
                                       for s in range(0, x.shape[0], batch_size)]).astype(np.float64))
    return out


def position_weights(slice_labels: list[np.ndarray], idx, n_bins: int = 5) -> np.ndarray:
    """Per-slice loss weights that make a slice's position in its volume carry no label
    information: within each of ``n_bins`` bins of relative position, positives and
    negatives get equal total weight; bins holding one class only get weight 0 (if no bin
    holds both, the two classes get equal total weight). Mean 1.

    Lesions cluster at the joint, in the central coronal slices: unweighted, a classifier
    can reach a slice AUC near 0.8 from the position alone and never look at a lesion.

    Returns:
        ``(n,)`` float32, one weight per slice of exams ``idx`` in order.
    """
    y = np.concatenate([slice_labels[i] for i in idx]).astype(bool)
    bins = np.concatenate([np.arange(len(slice_labels[i])) * n_bins // len(slice_labels[i]) for i in idx])
    w = np.zeros(len(y), dtype=np.float64)
    for b in np.unique(bins):
        pos, neg = (bins == b) & y, (bins == b) & ~y
        if pos.any() and neg.any():
            w[pos], w[neg] = 0.5 / pos.sum(), 0.5 / neg.sum()
    if w.sum() == 0:  # no position holds both classes (a tiny cohort): balance the classes only
        w = np.where(y, 0.5 / max(y.sum(), 1), 0.5 / max((~y).sum(), 1))
    return (w * len(w) / w.sum()).astype(np.float32)


def slice_position_auc(slice_labels: list[np.ndarray], idx) -> float:
    """The slice AUC of position alone (closeness to the volume's middle slice): what a
    per-slice classifier must beat to have looked at anything but where the slice is."""
    y = np.concatenate([slice_labels[i] for i in idx])
    score = np.concatenate([-np.abs(np.arange(len(slice_labels[i])) - (len(slice_labels[i]) - 1) / 2) for i in idx])
    return roc_auc(y, score)


def _augment(x: torch.Tensor, rng: np.random.Generator, shift: int) -> torch.Tensor:
    """Random left-right flips and shifts of up to ``shift`` pixels, per slice: ``(B, 3, H, W)``."""
    out = []
    for k in range(x.shape[0]):
        xi = x[k].flip(-1) if rng.random() < 0.5 else x[k]
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
        out.append(torch.roll(xi, (dy, dx), dims=(-2, -1)))
    return torch.stack(out)


def matched_negatives(slice_labels: list[np.ndarray], idx, rng: np.random.Generator, n_bins: int = 5,
                      with_matched: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One epoch's slices: every positive slice of exams ``idx`` and, for each, a negative
    drawn from the same bin of relative position (from any negative if its bin has none);
    then, from each bin that holds no positive, as many negatives as an occupied bin gets
    on average; in a random order.

    Where lesions occur, both classes then have the same position histogram, so where a
    slice lies says nothing of its label there. The bins without a lesion (the outermost
    slices of the synthetic knees) are still seen, as negatives: matched sampling alone
    never showed them, and a classifier that had never seen a posterior slice fired on it,
    which put lesion-free exams above lesion exams.

    Returns:
        ``(2 * n_positive + n_unmatched,)`` int64 indices into the slices of ``idx`` taken in
        order; with ``with_matched``, also a boolean mask of the same length that marks the
        position-matched negatives.
    """
    y = np.concatenate([slice_labels[i] for i in idx]).astype(bool)
    bins = np.concatenate([np.arange(len(slice_labels[i])) * n_bins // len(slice_labels[i]) for i in idx])
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        raise ParameterError("slice labels", f"training needs positive and negative slices, got {len(pos)} positive "
                                             f"of {len(y)}")
    pool = {b: neg[bins[neg] == b] for b in np.unique(bins)}
    drawn = np.array([rng.choice(pool[bins[p]] if len(pool[bins[p]]) else neg) for p in pos], dtype=np.int64)
    occupied = np.unique(bins[pos])
    per_bin = int(round(len(pos) / len(occupied)))
    unmatched = [rng.choice(pool[b], per_bin) for b in sorted(pool) if b not in occupied and len(pool[b])]
    rows = np.concatenate([pos, drawn, *unmatched]).astype(np.int64)
    matched = np.zeros(len(rows), dtype=bool)
    matched[len(pos):2 * len(pos)] = True
    order = rng.permutation(len(rows))
    return (rows[order], matched[order]) if with_matched else rows[order]


def slice_epoch(slice_labels: list[np.ndarray], idx, rng: np.random.Generator, twins=(),
                twin_share: float = 0.0) -> np.ndarray:
    """One epoch's slices as rows ``(exam, slice, from_twin)``: :func:`matched_negatives`,
    then each position-matched negative, with probability ``twin_share``, replaced by a positive slice's
    own lesion-free twin slice (same exam and slice, ``from_twin`` 1), for exams in
    ``twins``. A twin differs from its exam only by the lesion, so such a pair teaches
    the lesion and nothing else; position-matched negatives keep the logit comparable
    across slices. ``twin_share = 0`` or no twins draws nothing more from ``rng``.

    Returns:
        int64 ``(len(matched_negatives(...)), 3)``.
    """
    flat = np.array([(i, s) for i in idx for s in range(len(slice_labels[i]))], dtype=np.int64)
    order, matched = matched_negatives(slice_labels, idx, rng, with_matched=True)
    rows = np.zeros((len(order), 3), dtype=np.int64)
    rows[:, :2] = flat[order]
    if twin_share <= 0 or not len(twins):
        return rows
    positive = np.array([slice_labels[i][k] for i, k in rows[:, :2]], dtype=bool)
    pos, neg = rows[positive], np.flatnonzero(matched)  # the negatives of lesion-free positions stay
    swap = (rng.random(len(pos)) < twin_share) & np.isin(pos[:, 0], list(twins))
    rows[neg[swap], :2] = pos[swap, :2]
    rows[neg[swap], 2] = 1
    return rows


def train_slice_classifier(
    model: torch.nn.Module,
    data: ExamSet,
    out_dir: str,
    epochs: int = 10,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    resume: bool = True,
    progress: bool = True,
    shift: int = 8,
    precision: str = "auto",
    twin_share: float = 0.0,
) -> list[dict[str, float]]:
    """Train a per-slice classifier (:class:`~mrlib.models.SliceNet`, or MRNet's backbone
    and linear unit) on slices: each slice's own logit (``model.slice_logits``) against its
    label, binary cross-entropy, Adam at a constant learning rate (a cut on a stalled
    selection loss, as :func:`train_mrnet` makes, came too early on its noise and cost
    localisation), channels-last memory, ``best.pt`` the epoch with the lowest selection loss.

    An epoch visits every positive training slice and as many negatives
    (:func:`slice_epoch`: position-matched slices, a ``twin_share`` of them the positive's
    own lesion-free twin where ``data.twins`` has one), plus negatives from the positions
    that hold no lesion (:func:`matched_negatives`), drawn from ``(seed, epoch)``; each
    slice is flipped left-right at random and shifted by up to ``shift`` pixels. The
    selection loss weights the selection split's slices by :func:`position_weights`, the
    same position balance (twins never enter selection or evaluation).

    Args:
        data: a per-slice :class:`ExamSet` (``slice_labels`` set; ``twins`` optional).
        precision: the training steps' arithmetic (:func:`mrlib.train.fit`).
    """
    if data.slice_labels is None:
        raise ParameterError("data", "train_slice_classifier needs slice labels (a per-slice source such as fastmri)")
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)  # 1.7x faster SliceNet steps under bf16 on a 2-core CPU
    train_idx, val_idx = data.splits["train"], data.splits["val"]
    twins = data.twins or {}
    n_items = sum(len(data.slice_labels[i]) for i in train_idx)
    y_val = torch.from_numpy(np.concatenate([data.slice_labels[i] for i in val_idx]).astype(np.float32))
    w_val = torch.from_numpy(position_weights(data.slice_labels, val_idx))

    def batches(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        rows = slice_epoch(data.slice_labels, train_idx, rng, twins, twin_share)
        return ((rows[k:k + batch_size], (seed, epoch, k)) for k in range(0, len(rows), batch_size))

    def step(m: torch.nn.Module, batch) -> torch.Tensor:
        rows, key = batch
        x = torch.stack([(twins[i] if t else data.exams[i])[s] for i, s, t in rows])
        y = torch.tensor([0.0 if t else float(data.slice_labels[i][s]) for i, s, t in rows])
        x = _augment(x, np.random.default_rng(list(key)), shift).to(device, memory_format=torch.channels_last)
        return F.binary_cross_entropy_with_logits(m.slice_logits(x)[:, 0], y.to(device))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        logits = torch.tensor(np.concatenate(slice_logits(m, data.exams, val_idx, device)), dtype=torch.float32)
        loss = F.binary_cross_entropy_with_logits(logits, y_val, weight=w_val)
        return {"val_loss": loss.item(), "val_auc": roc_auc(y_val.numpy(), logits.numpy())}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    config = {"lr": lr, "weight_decay": weight_decay, "seed": seed, "batch_size": batch_size, "shift": shift,
              "schedule": "constant", "memory_format": "channels_last", "sampling": "position-matched negatives, and negatives from lesion-free positions",
              "twin_share": twin_share if twins else 0.0, "n_twins": len(twins), "precision": precision, "n_train_slices": n_items, "n_val_slices": len(y_val)}
    return fit(model, batches, step, validate, optimizer, epochs, out_dir,
               monitor="val_loss", mode="min", resume=resume, config=config, progress=progress, desc="slice classifier",
               precision=precision)


def evaluate_slices(model: torch.nn.Module, data: ExamSet) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of a per-slice classifier on its test (evaluation) exams.

    The threshold ``tau`` on a slice's probability is Youden-optimal on the ``val``
    (selection) slices, never on test data. The exam score is the maximum of its slices'.

    Returns:
        ``(metrics, exam probabilities)``, as :func:`evaluate_mrnet`: ``slice_auc`` with its
        95 % score interval over the test slices (slices of one volume are not independent,
        so the interval is optimistic), exam ``auc`` and interval, ``tau``, the slices'
        sensitivity and specificity at it, the position baseline, counts; and each test
        exam's probability (its slices' maximum).
    """
    device = next(model.parameters()).device
    val, test = data.splits["val"], data.splits["test"]
    prob = lambda logits: 1 / (1 + np.exp(-np.concatenate(logits)))  # noqa: E731
    tau = youden_threshold(np.concatenate([data.slice_labels[i] for i in val]),
                           prob(slice_logits(model, data.exams, val, device)))
    logits = slice_logits(model, data.exams, test, device)
    y_slice = np.concatenate([data.slice_labels[i] for i in test])
    p_slice = prob(logits)
    y_exam = data.labels[test].astype(int)
    p_exam = np.array([1 / (1 + np.exp(-lg.max())) for lg in logits])
    call = p_slice >= tau
    metrics = {
        "slice_auc": roc_auc(y_slice, p_slice), "slice_auc_ci": list(score_auc_ci(y_slice, p_slice)),
        "auc": roc_auc(y_exam, p_exam) if 0 < y_exam.sum() < len(y_exam) else float("nan"),
        "auc_ci": list(score_auc_ci(y_exam, p_exam)) if 0 < y_exam.sum() < len(y_exam) else [float("nan")] * 2,
        "auc_ci_method": AUC_CI_METHOD, "tau": tau,
        "slice_sensitivity": float(call[y_slice == 1].mean()), "slice_specificity": float(1 - call[y_slice == 0].mean()),
        "n_test": int(len(test)), "n_positive": int(y_exam.sum()),
        "n_slices": int(len(y_slice)), "n_positive_slices": int(y_slice.sum()),
        "slice_position_auc": slice_position_auc(data.slice_labels, test),
    }
    return metrics, p_exam


# --------------------------------------------------------------------------- one-feature baselines


def box_feature(image: np.ndarray, box) -> float:
    """The mean intensity inside ``box`` ``(x, y, w, h)`` of a ``(H, W)`` slice, divided by
    the median of the slice's foreground (:func:`mrlib.data.boxes.foreground`): one number
    a skeptic computes without training anything."""
    image = np.asarray(image, dtype=np.float64)
    x, y, w, h = (int(v) for v in box[:4])
    inside = image[max(y, 0):y + h, max(x, 0):x + w]
    fg = image[foreground(image)]
    return float(inside.mean() / max(float(np.median(fg)), 1e-12)) if inside.size and fg.size else float("nan")


def feature_auc(labels, scores) -> dict[str, Any]:
    """``baseline_auc``, ``baseline_auc_ci`` (score interval), ``baseline_n``, ``baseline_n_positive``."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, np.float64)
    return {"baseline_auc": roc_auc(labels, scores), "baseline_auc_ci": list(score_auc_ci(labels, scores)),
            "baseline_n": int(len(labels)), "baseline_n_positive": int(labels.sum())}


def feature_auc_by_group(labels, scores, groups) -> dict[str, dict[str, Any]]:
    """:func:`feature_auc` within each group (positives ranked only against negatives of
    their own group): ``{group: {auc, auc_ci, n}}``, n the group's positives; a group
    without both classes gets NaN."""
    labels, scores, groups = np.asarray(labels, int), np.asarray(scores, np.float64), np.asarray(groups)
    out = {}
    for group in sorted(set(groups.tolist())):
        y, x = labels[groups == group], scores[groups == group]
        one = feature_auc(y, x) if 0 < y.sum() < len(y) else {"baseline_auc": float("nan"),
                                                              "baseline_auc_ci": [float("nan")] * 2}
        out[str(group)] = {"auc": one["baseline_auc"], "auc_ci": one["baseline_auc_ci"], "n": int(y.sum())}
    return out


def kneemri_baseline(manifest: dict, task: str = "acl") -> dict[str, Any]:
    """The kneeMRI one-feature baseline over every exam of the cohort: :func:`box_feature`
    of the metadata's ACL box, averaged over the slices it spans, against the task's label."""
    meta = kneemri.read_metadata(manifest["kneemri"])
    label = kneemri.TASKS[task]
    scores, labels = [], []
    for row in meta.itertuples():
        vol = kneemri.load_pck(row.volumePath)
        box = (row.roiX, row.roiY, row.roiWidth, row.roiHeight)
        scores.append(np.mean([box_feature(vol[z], box) for z in range(row.roiZ, min(row.roiZ + row.roiDepth, len(vol)))]))
        labels.append(label(row))
    return {**feature_auc(labels, scores), "baseline": "mean intensity in the metadata ACL box / median foreground"}


#: (fastMRI+ label, acquisition) of lesions that darken their box: marrow edema replaces
#: bright fatty marrow on PD without fat suppression (and is bright on PDFS)
DARKENING = {("Bone- Subchondral edema", "CORPD_FBK")}


def twin_baseline(manifest: dict, twin_paths: dict, boxes) -> dict[str, Any]:
    """The in-domain one-feature baseline: for every lesion box of a volume with a
    lesion-free twin, :func:`box_feature` in the box on the lesion image (a positive) and
    in the same box on the twin (a negative). The feature is negated for a lesion kind that
    darkens its box in the volume's acquisition (:data:`DARKENING`), as a reader expects
    it to. ``{}`` without twins (real data).

    Beside the AUC over all boxes, ``baseline_by_acquisition`` holds the same AUC within
    each acquisition (``{acquisition: {auc, auc_ci, n}}``, n boxes): the feature's scale
    differs between PD and PDFS (fat suppression lowers the median foreground it is divided
    by), so pooled boxes compare a PD lesion with a PDFS twin, and within one acquisition
    the lesions can be more conspicuous than the pooled AUC says."""
    if not twin_paths:
        return {}
    paths, acquisition = file_index(manifest), acquisitions(manifest)
    scores, labels, groups = [], [], []
    for stem, twin_path in sorted(twin_paths.items()):
        _, target, _ = fastmri_h5.read_volume(paths[stem])
        twin = twins.read_twin(twin_path).twin
        for row in boxes[boxes["file"].astype(str) == stem].itertuples():
            box = (row.x, row.y, row.width, row.height)
            sign = -1.0 if (row.label, acquisition.get(stem)) in DARKENING else 1.0
            scores += [sign * box_feature(target[row.slice], box), sign * box_feature(twin[row.slice], box)]
            labels += [1, 0]
            groups += [str(acquisition.get(stem, ""))] * 2
    return {**feature_auc(labels, scores), "baseline_by_acquisition": feature_auc_by_group(labels, scores, groups),
            "baseline": "mean intensity in a lesion box / median foreground (negated where the lesion kind darkens "
                        "the box), lesion image against its lesion-free twin"}


# --------------------------------------------------------------------------- exam sources

class ExamSet(NamedTuple):
    """A classifier's data: ``exams`` ``(S, 3, size, size)`` each (:func:`prepare_exam`),
    exam ``labels`` ``(n,)``, exam ``names``, ``splits`` (``train``/``val``/``test`` exam
    indices) and, for a per-slice source, each exam's ``slice_labels`` ``(S,)`` and, on
    synthetic data, ``twins``: ``{training exam index: its lesion-free twin, prepared alike}``."""

    exams: list[torch.Tensor]
    labels: np.ndarray
    names: list[str]
    splits: dict[str, np.ndarray]
    slice_labels: list[np.ndarray] | None = None
    twins: dict[int, torch.Tensor] | None = None

#: name -> exam source class: the data a classifier (and so an ROI source) is trained on.
SOURCES: dict[str, type["ExamSource"]] = {}


class ExamSource:
    """The exams a classifier learns from; its Grad-CAM maps are an ROI source.

    A subclass with a ``name`` registers itself and overrides :meth:`load`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    #: trained and scored per slice (a slice label each), exam score the maximum over slices
    per_slice: ClassVar[bool] = False
    #: the plane of its exams; empty: chosen by the ``plane`` parameter (MRNet-v1.0 has three)
    plane: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SOURCES[cls.name] = cls

    def check_task(self, task: str) -> str:
        """``task``, or the source's first task when empty; an unknown task is refused."""
        task = task or self.tasks[0]
        if task not in self.tasks:
            raise ParameterError("task", f"{self.name} has the tasks {', '.join(self.tasks)}, not {task!r}")
        return task

    def exam_plane(self, plane: str) -> str:
        """The plane of the exams :meth:`load` reads when given ``plane``: the source's own,
        else ``plane``."""
        return self.plane or plane

    def load(self, manifest: dict, task: str, plane: str, size: int, seed: int, progress: bool) -> ExamSet:
        """The source's :class:`ExamSet`."""
        raise NotImplementedError

    def baseline(self, manifest: dict, task: str) -> dict[str, Any]:
        """The source's one-feature baseline (:func:`feature_auc`'s keys), ``{}`` if it has none."""
        return {}


class KneeMRISource(ExamSource):
    name = "kneemri"
    description = "kneeMRI (Stajduhar et al. 2017): sagittal exams with ACL diagnoses, split 60/20/20 by label"
    tasks = ("acl", "acl_complete")
    plane = "sagittal"

    def baseline(self, manifest, task):
        return kneemri_baseline(manifest, task)

    def load(self, manifest, task, plane, size, seed, progress):
        if not manifest.get("kneemri"):
            raise DataError(manifest["data_dir"], "holds no kneemri/metadata.csv for the classifier")
        task = self.check_task(task)
        ds = kneemri.KneeMRIDataset(manifest["kneemri"], task=task)
        names = list(ds.df.volumeFilename)
        exams = [prepare_exam(ds[i][0], where=names[i], size=size)
                 for i in progress_bar(range(len(ds)), desc="kneeMRI exams", progress=progress)]
        labels = np.array(ds.labels)
        return ExamSet(exams, labels, names, stratified_split(labels, seed=seed))


class MRNetSource(ExamSource):
    name = "mrnet"
    description = ("MRNet-v1.0 (Bien et al. 2018): its train split divided into train/val, "
                   "its valid split the test set")
    tasks = ("abnormal", "acl", "meniscus")

    def load(self, manifest, task, plane, size, seed, progress):
        task = self.check_task(task)
        root = mrnet.find_root(manifest["data_dir"])
        if root is None:
            raise DataError(manifest["data_dir"], "holds no MRNet-v1.0 directory")
        exams, labels, names, split_of = [], [], [], []
        for split in mrnet.SPLITS:
            series = mrnet.read_labels(root, split, task)
            for exam_id, label in progress_bar(series.items(), desc=f"MRNet {split}", progress=progress):
                exams.append(prepare_exam(mrnet.load_exam(root, split, plane, exam_id), size=size, fov=MRNET_FOV,
                                          where=str(mrnet.exam_path(root, split, plane, exam_id))))
                labels.append(int(label))
                names.append(f"{split}/{plane}/{exam_id}")
                split_of.append(split)
        labels, split_of = np.array(labels), np.array(split_of)
        train_all = np.flatnonzero(split_of == "train")
        inner = stratified_split(labels[train_all], val_fraction=0.2, test_fraction=0.0, seed=seed)
        splits = {"train": train_all[inner["train"]], "val": train_all[inner["val"]],
                  "test": np.flatnonzero(split_of == "valid")}
        return ExamSet(exams, labels, names, splits)


def labelled_files(manifest: dict, boxes) -> set[str] | None:
    """The file stems whose slices carry labels: the reviewed files of fastMRI+'s
    ``knee_file_list.csv`` and every file with a box; ``None`` (every file) without a list,
    as in the synthetic layout, where every file was "reviewed" by construction."""
    listed = manifest.get("annotation_file_list")
    if not listed:
        return None
    return set(read_file_list(listed)) | set(boxes["file"].astype(str))


def slice_labels(boxes, stem: str, n_slices: int) -> np.ndarray:
    """``(S,)`` 0/1: 1 where slice ``s`` of ``stem`` holds a lesion box."""
    y = np.zeros(int(n_slices), dtype=np.int64)
    held = boxes.loc[boxes["file"].astype(str) == str(stem), "slice"].astype(int)
    y[held[(held >= 0) & (held < n_slices)].to_numpy()] = 1
    return y


class FastMRISource(ExamSource):
    name = "fastmri"
    description = ("in-domain: the reconstruction data's fully sampled coronal targets, one label per slice "
                   "(a lesion box or none); trained on the train role, checkpoint and threshold chosen on the "
                   "selection role, scored on the evaluation role")
    tasks = ("lesion",)
    per_slice = True
    plane = "coronal"

    def load(self, manifest, task, plane, size, seed, progress):
        """The input size is the targets' own (no resize blurs a small lesion); ``size`` is ignored.
        The training volumes' lesion-free twins (synthetic data) come as ``twins``."""
        boxes = manifest_boxes(manifest)
        if boxes is None:
            raise DataError(manifest["data_dir"], "holds no annotations/knee.csv: the fastmri ROI source learns "
                                                  "from the lesion boxes")
        reviewed = labelled_files(manifest, boxes)
        twin_paths = twin_files(manifest)
        exams, labels, names, per_slice, split_of, twin_of = [], [], [], [], [], {}
        for split, role in (("train", "train"), ("val", "selection"), ("test", "evaluation")):
            paths = [p for p in role_files(manifest, role) if reviewed is None or p.stem in reviewed]
            for path in progress_bar(paths, desc=f"fastMRI {role} targets", progress=progress):
                _, target, _ = fastmri_h5.read_volume(path)
                if target is None:
                    raise DataError(path, f"has no target; the {role} role needs one")
                y = slice_labels(boxes, path.stem, target.shape[0])
                size = min(target.shape[-2:])
                if split == "train" and path.stem in twin_paths:  # synthetic data: the lesion-free twin
                    twin_of[len(exams)] = prepare_exam(twins.read_twin(twin_paths[path.stem]).twin,
                                                       where=str(twin_paths[path.stem]), size=size)
                exams.append(prepare_exam(target, where=str(path), size=size))
                per_slice.append(y)
                labels.append(int(y.any()))
                names.append(path.stem)
                split_of.append(split)
        split_of = np.array(split_of)
        splits = {s: np.flatnonzero(split_of == s) for s in ("train", "val", "test")}
        for s, idx in splits.items():
            ys = np.concatenate([per_slice[i] for i in idx]) if len(idx) else np.zeros(0)
            if len(ys) == 0 or ys.min() == ys.max():
                raise DataError(manifest["data_dir"], f"the {s} split of the fastmri ROI source needs slices with and "
                                                      f"without a lesion box; it has {int(ys.sum())} of {len(ys)} with one")
        return ExamSet(exams, np.array(labels), names, splits, per_slice, twin_of)

    def baseline(self, manifest, task):
        boxes = manifest_boxes(manifest)
        return twin_baseline(manifest, twin_files(manifest), boxes) if boxes is not None else {}


def load_exams(
    manifest: dict, source: str = "kneemri", task: str = "acl", plane: str = "sagittal",
    size: int = INPUT_SIZE, seed: int = 0, progress: bool = True,
) -> ExamSet:
    """Load and prepare the classifier's exams, with labels and train/val/test splits.

    Args:
        manifest: the run manifest (notebook 01).
        source: a name of :data:`SOURCES` (``kneemri``, ``mrnet``, ``fastmri``).
        task: the source's label (see each source's ``tasks``).
        plane: MRNet-v1.0's plane (kneeMRI is sagittal only).

    Returns:
        an :class:`ExamSet`.
    """
    if source not in SOURCES:
        raise ParameterError("source", f"unknown classifier data {source!r}; use one of {', '.join(SOURCES)}")
    return SOURCES[source]().load(manifest, task, plane, size, seed, progress)


def train_source(run, manifest: dict, cfg, seeds, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train, select and score one ROI source's classifier for each seed in ``seeds``, and
    write ``RUN/mrnet/<source>/metrics.json``, ``splits.json`` and ``predictions.csv``.

    Args:
        run: the :class:`~mrlib.rundir.RunDir`; cfg: a :class:`~mrlib.config.ClassifierConfig`
            (its ``roi_source``; its ``seed`` fixes the exam splits).

    Returns:
        the metrics: ``auc``, ``auc_ci``, ``auc_ci_method``, ``n``, ``n_positive`` of the first
        seed, the ``task`` and the ``plane`` of the exams it learnt from (chapter 4 maps
        fastMRI's coronal slices with it), the source's ``baseline_auc`` and
        ``baseline_auc_ci`` (one feature, no training),
        ``seeds`` (every seed's own metrics and ``history``), and for a per-slice source
        ``slice_auc`` (evaluation split) and ``tau``.
    """
    source = SOURCES[cfg.roi_source]()
    task = source.check_task(cfg.task)
    data = load_exams(manifest, cfg.roi_source, task, cfg.plane, cfg.mrnet_input_size, cfg.seed, progress)
    input_size = int(data.exams[0].shape[-1])
    arch = cfg.slice_arch if source.per_slice else "mrnet"
    per_seed, predictions = [], []
    for seed in seeds:
        seed_everything(seed)
        model = build_classifier(arch, pretrained=cfg.pretrained).to(device)
        ckpt = run.classifier(cfg.roi_source, seed)
        kw = dict(epochs=cfg.slice_epochs if source.per_slice else cfg.mrnet_epochs,
                  lr=cfg.slice_lr if source.per_slice else cfg.mrnet_lr,
                  weight_decay=cfg.mrnet_weight_decay, seed=seed, progress=progress, precision=cfg.precision)
        if source.per_slice:
            history = train_slice_classifier(model, data, ckpt, twin_share=cfg.twin_negatives, **kw)
            load_weights(model, ckpt.best)
            metrics, exam_prob = evaluate_slices(model, data)
        else:
            history = train_mrnet(model, data.exams, data.labels, data.splits, ckpt, **kw)
            load_weights(model, ckpt.best)
            metrics, exam_prob = evaluate_mrnet(model, data.exams, data.labels, data.splits["test"],
                                                threshold=cfg.decision_threshold, seed=seed)
        metrics.update(seed=int(seed), best_epoch=int(np.argmin([h["val_loss"] for h in history]) + 1), history=history)
        per_seed.append(metrics)
        predictions += [dict(seed=int(seed), exam=data.names[i], label=int(data.labels[i]), probability=float(p))
                        for i, p in zip(data.splits["test"], exam_prob)]
    first = per_seed[0]
    out = {k: first[k] for k in ("auc", "auc_ci", "auc_ci_method") if k in first}
    out.update(n=first["n_test"], n_positive=first["n_positive"], source=cfg.roi_source, task=task,
               plane=source.exam_plane(cfg.plane),
               input_size=input_size, per_slice=source.per_slice, description=source.description, arch=arch,
               n_twins=len(data.twins or {}), twin_negatives=cfg.twin_negatives if data.twins else 0.0,
               seeds=per_seed, baseline_auc=float("nan"), baseline_auc_ci=[float("nan"), float("nan")])
    if source.per_slice:
        out.update(slice_auc=first["slice_auc"], slice_auc_ci=first["slice_auc_ci"], tau=first["tau"])
    out.update(source.baseline(manifest, task))
    run.write_classifier_results(cfg.roi_source, out, {k: [data.names[i] for i in v] for k, v in data.splits.items()},
                                 pd.DataFrame(predictions).to_csv(index=False))
    return out


def load_classifier(run, source: str, seed: int, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Chapter 3's selected classifier of ``source`` and ``seed`` (its ``best.pt``), built
    as its ``metrics.json`` records (``arch``; runs before it was recorded are MRNet), in
    eval mode on ``device``."""
    arch = run.read_classifier_metrics(source).get("arch", "mrnet")
    model = build_classifier(arch)
    load_weights(model, run.classifier(source, seed).best)
    return model.to(device).eval()
