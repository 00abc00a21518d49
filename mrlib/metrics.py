"""Reconstruction metrics, as fastMRI defines them (``fastmri.evaluate``), per volume.

fastMRI reports NMSE, PSNR and SSIM per volume (PSNR and SSIM with the volume's maximum
as the data range), then averages over volumes. These wrap its functions rather than
re-deriving them. The ROI metrics restrict the same functions to the lesion boxes; the
localisation scores measure how well a heatmap finds those boxes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from fastmri import evaluate
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from .data.boxes import boxes_mask
from .errors import DataError, ParameterError

#: The reconstruction metrics per volume: fastMRI's, then the same inside the lesion boxes.
METRICS = ("nmse", "psnr", "ssim", "roi_nmse", "roi_psnr", "roi_ssim", "lesion_fidelity", "diagnostic_auc")
ROI_METRICS = ("roi_nmse", "roi_psnr", "roi_ssim")
#: which direction is better, for the sentences that read the comparisons
HIGHER_IS_BETTER = {"nmse": False, "psnr": True, "ssim": True,
                    "roi_nmse": False, "roi_psnr": True, "roi_ssim": True, "lesion_fidelity": True,
                    "diagnostic_auc": True}
#: The name of the zero-filled baseline in tables (it has no training seed: seed -1).
ZERO_FILLED = "zero-filled"
ZERO_FILLED_SEED = -1
SSIM_WINDOW = 7  # skimage.metrics.structural_similarity's default win_size


def volume_metrics(gt: np.ndarray, pred: np.ndarray, where: str = "reconstruction") -> dict[str, float]:
    """NMSE, PSNR and SSIM of one volume.

    Args:
        gt: fully sampled target, ``(slices, h, w)``.
        pred: reconstruction of the same shape.
        where: what to name in the error if the shapes differ.

    Returns:
        ``{"nmse": ..., "psnr": ..., "ssim": ...}`` as Python floats.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise DataError(where, f"expected two (slices, h, w) volumes of one shape, got {gt.shape} and {pred.shape}")
    # fastmri.evaluate.ssim returns a one-element array; .item() takes its value
    return {
        "nmse": np.asarray(evaluate.nmse(gt, pred)).item(),
        "psnr": np.asarray(evaluate.psnr(gt, pred)).item(),
        "ssim": np.asarray(evaluate.ssim(gt, pred)).item(),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); needs both classes among ``labels``."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise DataError("labels", f"AUC needs both classes; all {len(labels)} labels are {labels[0] if len(labels) else 'missing'}")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling cases with replacement.

    Resamples that hold only one class are skipped (they have no AUC).
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            aucs.append(roc_auc(labels[idx], scores[idx]))
    if not aucs:
        raise DataError("labels", "no bootstrap resample held both classes")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


#: The name stored beside :func:`score_auc_ci`'s interval (``auc_ci_method``).
AUC_CI_METHOD = "score interval, Hanley-McNeil variance at the candidate AUC (Newcombe 2006)"


def hanley_mcneil_variance(theta: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's (1982) variance of an AUC estimate whose true value is ``theta``."""
    q1, q2 = theta / (2.0 - theta), 2.0 * theta**2 / (1.0 + theta)
    return (theta * (1 - theta) + (n_pos - 1) * (q1 - theta**2) + (n_neg - 1) * (q2 - theta**2)) / (n_pos * n_neg)


def score_auc_ci(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """A score-type interval of the AUC: every ``theta`` in [0, 1] with
    ``|AUC - theta| <= z * sqrt(V(theta))``, ``V`` the Hanley-McNeil variance taken at
    ``theta`` itself (Newcombe 2006). Unlike Wald-type (DeLong, Hanley-McNeil at the
    estimate) or bootstrap intervals, it stays wider than a point at AUC = 0 or 1.
    """
    from scipy.optimize import brentq  # lazy: scipy's root finder is needed only here
    from scipy.stats import norm  # lazy: as above

    labels = np.asarray(labels).astype(int)
    auc = roc_auc(labels, scores)
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    z = float(norm.ppf(0.5 + level / 2))

    def excess(theta):  # > 0 outside the interval
        return abs(auc - theta) - z * np.sqrt(max(hanley_mcneil_variance(theta, n_pos, n_neg), 0.0))

    eps, inside = 1e-12, 1e-9  # the estimate itself is inside; at 0 or 1 its variance is 0, so step off it
    lo_in, hi_in = max(auc - inside, eps), min(auc + inside, 1 - eps)
    low = 0.0 if excess(eps) <= 0 else brentq(excess, eps, lo_in)
    high = 1.0 if excess(1 - eps) <= 0 else brentq(excess, hi_in, 1 - eps)
    return float(low), float(high)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold ``t`` that maximises Youden's J = sensitivity + specificity - 1
    for the rule ``score >= t`` (the lowest such score when several tie)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    roc_auc(labels, scores)  # both classes, or a clear error
    candidates = np.unique(scores)
    j = [(scores[labels == 1] >= t).mean() - (scores[labels == 0] >= t).mean() for t in candidates]
    return float(candidates[int(np.argmax(j))])


# --------------------------------------------------------------------------- ROI metrics

def roi_mask(shape: tuple[int, ...], boxes_by_slice: Mapping[int, Sequence]) -> np.ndarray:
    """Boolean ``(S, H, W)`` mask of the union of the boxes of every annotated slice."""
    mask = np.zeros(shape, dtype=bool)
    for s, boxes in boxes_by_slice.items():
        s = int(s)
        if not 0 <= s < shape[0]:
            raise DataError("boxes", f"annotated slice {s} is beyond the volume's {shape[0]} slices")
        mask[s] |= boxes_mask(shape[1:], boxes)
    return mask


def roi_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    boxes_by_slice: Mapping[int, Sequence],
    maxval: float | None = None,
) -> dict[str, float]:
    """NMSE, PSNR and SSIM inside the ground-truth lesion boxes of one volume.

    Args:
        gt: fully sampled target ``(S, H, W)``.
        pred: reconstruction, same shape.
        boxes_by_slice: ``{slice index: [Box or (x, y, width, height, ...), ...]}`` in
            image coordinates; boxes are clipped to the image.
        maxval: the data range for PSNR and SSIM; ``None`` takes ``gt.max()``, the whole
            volume's maximum, as ``fastmri.evaluate`` does (not the maximum inside the
            boxes, so ROI and volume PSNR are on one scale).

    Returns:
        ``{"roi_nmse", "roi_psnr", "roi_ssim"}``:

        * ``roi_nmse`` and ``roi_psnr``: ``fastmri.evaluate.nmse`` / ``psnr`` of the pixels
          inside the union of all boxes of all annotated slices, pooled over the volume;
        * ``roi_ssim``: fastMRI's SSIM map of each annotated slice, whole (skimage's
          ``structural_similarity``, 7 x 7 window, ``data_range=maxval``), averaged over
          the box pixels of the volume. A pixel's SSIM reads only the 7 x 7 window around
          it, so the score depends on the box and a 3-pixel margin; computed on a small
          box's crop instead, an 8 x 5 box would give only two windows.

        All three are NaN when the volume has no box with a pixel in the image.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise DataError("roi_metrics", f"expected two (slices, h, w) volumes of one shape, got {gt.shape} and {pred.shape}")
    nan = {k: float("nan") for k in ROI_METRICS}
    mask = roi_mask(gt.shape, boxes_by_slice or {})
    if not mask.any():
        return nan
    maxval = float(gt.max()) if maxval is None else float(maxval)
    g, p = gt[mask], pred[mask]
    out = {
        "roi_nmse": float(np.asarray(evaluate.nmse(g, p))) if np.any(g) else float("nan"),
        "roi_psnr": float(np.asarray(evaluate.psnr(g, p, maxval=maxval))),
    }
    if min(gt.shape[1:]) < SSIM_WINDOW:
        raise DataError("roi_metrics", f"the image ({gt.shape[1]}x{gt.shape[2]}) is smaller than SSIM's "
                                       f"{SSIM_WINDOW}x{SSIM_WINDOW} window")
    total = 0.0
    for s in np.flatnonzero(mask.any(axis=(1, 2))):
        _, smap = structural_similarity(gt[s], pred[s], data_range=maxval, win_size=SSIM_WINDOW, full=True)
        total += float(smap[mask[s]].sum())
    out["roi_ssim"] = total / int(mask.sum())
    return out


def lesion_fidelity(gt: np.ndarray, pred: np.ndarray, twin: np.ndarray, mask: np.ndarray) -> float:
    """The share of the lesion signal that survives reconstruction, from a lesion-free twin.

    With the lesion signal ``l = gt - twin`` and what the reconstruction shows of it,
    ``pred - twin``, over the lesion mask: ``sum((pred - twin) * l) / sum(l * l)``, the
    projection of the reconstructed lesion on the true one. 1: the lesion is reproduced;
    0: it is gone (or blurred into its surround); NaN without lesion signal.

    Args:
        gt, pred, twin: ``(S, H, W)`` target, reconstruction and the twin's target;
        mask: boolean ``(S, H, W)``, the union of the lesion masks.
    """
    gt, pred, twin = (np.asarray(a, dtype=np.float64) for a in (gt, pred, twin))
    mask = np.asarray(mask, dtype=bool)
    if not (gt.shape == pred.shape == twin.shape == mask.shape):
        raise DataError("lesion_fidelity", f"shapes differ: target {gt.shape}, reconstruction {pred.shape}, "
                                           f"twin {twin.shape}, mask {mask.shape}")
    lesion = (gt - twin)[mask]
    energy = float(np.sum(lesion * lesion))
    if energy <= 0:
        return float("nan")
    return float(np.sum((pred - twin)[mask] * lesion) / energy)


def diagnostic_auc(lesion_scores: np.ndarray, twin_scores: np.ndarray) -> float:
    """Does a reconstruction keep the diagnosis? Within one volume, the AUC of a lesion
    classifier's scores on the reconstructed lesion slices (positives) against its scores on
    the same slices of the reconstructed lesion-free twin (negatives): the probability that a
    lesion slice outscores a twin slice, ties counting half. 1: every lesion slice is told
    from the twin; 0.5: the reconstruction has lost what the classifier sees. NaN without
    lesion slices.

    Args:
        lesion_scores, twin_scores: ``(L,)`` scores (logits) of the L lesion slices and of the
            same slices of the twin.
    """
    pos, neg = np.asarray(lesion_scores, np.float64).ravel(), np.asarray(twin_scores, np.float64).ravel()
    if pos.size != neg.size:
        raise DataError("diagnostic_auc", f"{pos.size} lesion slices but {neg.size} twin slices")
    if not pos.size:
        return float("nan")
    return roc_auc(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])


# --------------------------------------------------------------------------- localisation
# How well a classifier's heatmap (mrlib.cam) finds the ground-truth lesion boxes
# (fastMRI+ format, image coordinates from mrlib.data.annotations.read_boxes).

LOCALIZATION_COLUMNS = ("method", "n_slices", "pointing_game", "energy_in_box", "iou")


def _box_union(shape: tuple[int, int], boxes) -> np.ndarray:
    return boxes_mask(shape, boxes)


def _as_map(heatmap) -> np.ndarray:
    m = np.asarray(heatmap, dtype=np.float64)
    if m.ndim != 2:
        raise DataError("heatmap", f"expected one (H, W) map, got shape {m.shape}")
    return m


def pointing_game(heatmap: np.ndarray, boxes) -> bool:
    """Does the map's peak lie inside any box? (Zhang et al. 2018's pointing game.)

    Args:
        heatmap: ``(H, W)``.
        boxes: ``(x, y, width, height, ...)`` in image coordinates.

    The peak is the first maximal pixel in row-major order. A flat map (max == min,
    e.g. all zeros) points nowhere and scores ``False``.
    """
    m = _as_map(heatmap)
    if not np.isfinite(m).all() or m.max() <= m.min():
        return False
    row, col = np.unravel_index(int(np.argmax(m)), m.shape)
    return bool(_box_union(m.shape, boxes)[row, col])


def energy_in_boxes(heatmap: np.ndarray, boxes) -> float:
    """Share of the map's sum that lies inside the union of the boxes, in [0, 1].

    Negative values are clipped to 0 first (CAM maps are non-negative anyway); a map that
    sums to 0 puts no energy in any box and scores 0.
    """
    m = np.clip(_as_map(heatmap), 0, None)
    total = m.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    return float(m[_box_union(m.shape, boxes)].sum() / total)


def box_iou(heatmap: np.ndarray, boxes, threshold: float = 0.5) -> float:
    """IoU of the region ``map >= threshold * max(map)`` with the union of the boxes.

    A map whose maximum is not positive has no region and scores 0.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(threshold) <= 1.0):
        raise ParameterError("threshold", f"must be a number in [0, 1], got {threshold!r}")
    m = _as_map(heatmap)
    peak = m.max()
    if not np.isfinite(peak) or peak <= 0:
        return 0.0
    region = m >= float(threshold) * peak
    gt = _box_union(m.shape, boxes)
    union = np.logical_or(region, gt).sum()
    return float(np.logical_and(region, gt).sum() / union) if union else 0.0


def localization_row(method: str, pairs, iou_threshold: float = 0.5) -> dict:
    """One row of the localisation table from ``(map (H, W), boxes)`` pairs, one per annotated slice."""
    hits, energy, iou = [], [], []
    for m, boxes in pairs:
        hits.append(pointing_game(m, boxes))
        energy.append(energy_in_boxes(m, boxes))
        iou.append(box_iou(m, boxes, iou_threshold))
    return dict(method=str(method).strip().lower(), n_slices=len(hits), pointing_game=float(np.mean(hits)),
                energy_in_box=float(np.mean(energy)), iou=float(np.mean(iou)))
