"""Reconstruction metrics, as fastMRI defines them (``fastmri.evaluate``), per volume.

fastMRI reports NMSE, PSNR and SSIM per volume (PSNR and SSIM with the volume's maximum
as the data range), then averages over volumes. These wrap its functions rather than
re-deriving them.
"""

from __future__ import annotations

import numpy as np
from fastmri import evaluate

from .errors import DataError


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
    from sklearn.metrics import roc_auc_score

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


# --------------------------------------------------------------------------- localisation
# How well a classifier's heatmap (mrlib.cam) finds the ground-truth lesion boxes
# (fastMRI+ format, image coordinates from mrlib.data.annotations.read_boxes).

LOCALIZATION_COLUMNS = ("method", "n_slices", "pointing_game", "energy_in_box", "iou")


def _box_union(shape: tuple[int, int], boxes) -> np.ndarray:
    from .losses import boxes_mask

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
        from .errors import ParameterError

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


def localization_table(heatmaps_path, boxes_df, methods, iou_threshold: float = 0.5):
    """Localisation scores of each CAM method against the ground-truth boxes.

    Args:
        heatmaps_path: a file written by :func:`mrlib.cam.compute_heatmaps`.
        boxes_df: boxes in image coordinates (:func:`mrlib.data.annotations.read_boxes`).
            Only slices with at least one box are scored; the boxes of one slice count
            as their union. Boxes of files that the heatmap file does not hold (e.g.
            another split) are skipped.
        methods: CAM method names held in the file.
        iou_threshold: the map region for :func:`box_iou` is ``map >= t * max``.

    Returns:
        ``pandas.DataFrame`` with columns ``method, n_slices, pointing_game,
        energy_in_box, iou``: per method, the number of annotated slices scored and the
        means over them (pointing game as a hit rate).

    Raises:
        DataError: no annotated slice belongs to a volume in the heatmap file (they do
            not match), or a box's slice index is beyond its volume.
    """
    import pandas as pd

    from .cam import heatmap_info, read_heatmaps

    if isinstance(methods, str):
        methods = [methods]
    info = heatmap_info(heatmaps_path)
    held = set(info["files"])
    df = boxes_df[boxes_df["file"].astype(str).isin(held)]
    if df.empty:
        raise DataError(
            heatmaps_path, f"none of the {boxes_df['file'].nunique()} annotated file(s) has heatmaps here "
            "(do the heatmaps and the annotations come from the same dataset?)",
        )

    def pairs(method):
        for stem, per_file in df.groupby("file", sort=True):
            maps, _ = read_heatmaps(heatmaps_path, method, stem)
            for slice_num, per_slice in per_file.groupby("slice", sort=True):
                if not 0 <= int(slice_num) < maps.shape[0]:
                    raise DataError(
                        heatmaps_path, f"annotated slice {int(slice_num)} of {stem} is beyond its {maps.shape[0]} slices"
                    )
                yield maps[int(slice_num)], list(per_slice[["x", "y", "width", "height"]].itertuples(index=False, name=None))

    rows = [localization_row(method, pairs(method), iou_threshold) for method in methods]
    return pd.DataFrame(rows, columns=list(LOCALIZATION_COLUMNS))


def chance_localization(boxes_df, image_shape: tuple[int, int]) -> dict:
    """What a map with no information scores: a uniform map, or a peak at a random pixel.

    Both the pointing game of a random peak and the energy of a uniform map inside the
    boxes equal the boxes' share of the image; the thresholded uniform map is the whole
    image, so its IoU is that share too. Returned as a row of :func:`localization_table`.
    """
    shares = [
        _box_union(image_shape, list(g[["x", "y", "width", "height"]].itertuples(index=False, name=None))).mean()
        for _, g in boxes_df.groupby(["file", "slice"])
    ]
    share = float(np.mean(shares)) if shares else float("nan")
    return dict(method="chance (uniform map)", n_slices=len(shares), pointing_game=share,
                energy_in_box=share, iou=share)
