"""From a Grad-CAM heatmap to a pixel weight map, and the ROI-weighted MSE.

The report (section 2.1) up-weights the U-Net's MSE "in the ROIs" that Grad-CAM finds,
but it does not publish how a heatmap becomes a weight. The rules here are this
project's stated choice, not the report's:

* ``"linear"`` (default): ``w = 1 + alpha * h``. Smooth; a pixel's weight grows with the
  classifier's attention, from 1 (no attention) to ``1 + alpha`` (the map's peak).
* ``"threshold"``: ``w = 1 + alpha * [h >= threshold]``. A hard ROI: pixels whose map
  value reaches ``threshold`` weigh ``1 + alpha``, the rest 1.
* ``"none"``: ``w = 1`` everywhere, the unweighted baseline.

Every weight is at least 1, so no pixel's error is ever ignored. :func:`weighted_mse`
normalises by the sum of the weights, so the loss stays on the scale of a plain MSE and
equals it exactly when the weights are uniform; ``alpha`` changes the balance between
regions, not the learning rate.

:func:`box_weight_map` gives the oracle weights (``1 + alpha`` inside ground-truth boxes)
for the ablation that asks how much of the effect the classifier's maps carry.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .errors import ParameterError

RULES = ("linear", "threshold", "none")


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ParameterError("alpha", f"must be a number >= 0, got {alpha!r}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ParameterError("alpha", f"must be a finite number >= 0, got {alpha!r}")
    return alpha


def weight_map(h, rule: str = "linear", alpha: float = 4.0, threshold: float = 0.5):
    """Turn a heatmap ``h`` in [0, 1] into loss weights >= 1.

    Args:
        h: numpy array or torch tensor of any shape, values in [0, 1] (e.g. the maps of
            :func:`mrlib.cam.read_heatmaps`).
        rule: ``"linear"`` (``1 + alpha*h``), ``"threshold"`` (``1 + alpha*(h >= threshold)``)
            or ``"none"`` (ones). See the module docstring: the report did not publish its
            rule; these are our stated choice.
        alpha: extra weight at the map's peak (linear) or inside the ROI (threshold), >= 0.
        threshold: ROI cut for ``"threshold"``, in [0, 1].

    Returns:
        The weights, the same type, shape and device as ``h`` (float32 for numpy input
        of integer or bool dtype; the input's float dtype otherwise).
    """
    rule_key = str(rule).strip().lower()
    if rule_key not in RULES:
        raise ParameterError("rule", f"unknown weight rule {rule!r}; use one of {', '.join(RULES)}")
    alpha = _check_alpha(alpha)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(threshold) <= 1.0):
        raise ParameterError("threshold", f"must be a number in [0, 1], got {threshold!r}")
    threshold = float(threshold)
    if torch.is_tensor(h):
        hf = h if h.is_floating_point() else h.float()
        if rule_key == "linear":
            return 1.0 + alpha * hf
        if rule_key == "threshold":
            return 1.0 + alpha * (hf >= threshold).to(hf.dtype)
        return torch.ones_like(hf)
    arr = np.asarray(h)
    hf = arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float32)
    if rule_key == "linear":
        return (1.0 + alpha * hf).astype(hf.dtype, copy=False)
    if rule_key == "threshold":
        return (1.0 + alpha * (hf >= threshold)).astype(hf.dtype, copy=False)
    return np.ones_like(hf)


def box_weight_map(shape: tuple[int, int], boxes: Sequence[Sequence], alpha: float = 4.0) -> np.ndarray:
    """Oracle weights: ``1 + alpha`` inside the union of ``boxes``, 1 elsewhere.

    Args:
        shape: ``(H, W)`` of the image.
        boxes: ``(x, y, width, height, ...)`` in image coordinates (the rows of
            :func:`mrlib.data.annotations.boxes_for`; extra fields such as the label are
            ignored). Parts of a box outside the image are clipped.
        alpha: extra weight inside the boxes, >= 0.

    Returns:
        float32 ``(H, W)``.
    """
    alpha = _check_alpha(alpha)
    h, w = (int(s) for s in shape)
    return (1.0 + alpha * boxes_mask((h, w), boxes)).astype(np.float32)


def boxes_mask(shape: tuple[int, int], boxes: Sequence[Sequence]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the union of ``(x, y, width, height, ...)`` boxes (clipped)."""
    h, w = (int(s) for s in shape)
    mask = np.zeros((h, w), dtype=bool)
    for box in boxes:
        if len(box) < 4:
            raise ParameterError("boxes", f"a box is (x, y, width, height, ...), got {tuple(box)!r}")
        x, y, bw, bh = (int(v) for v in box[:4])
        if bw < 0 or bh < 0:
            raise ParameterError("boxes", f"box {tuple(box)!r} has a negative width or height")
        mask[max(y, 0) : max(y + bh, 0), max(x, 0) : max(x + bw, 0)] = True
    return mask


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """ROI-weighted MSE: per image ``sum(w * (pred - target)^2) / sum(w)``, then the batch mean.

    Args:
        pred, target: ``(B, 1, H, W)`` or ``(B, H, W)``, the same shape.
        weight: broadcastable to ``pred`` (e.g. ``(B, 1, H, W)``, ``(B, H, W)`` or
            ``(H, W)``), non-negative with a positive sum per image; ``None`` means
            uniform, i.e. plain MSE.

    Returns:
        Scalar tensor. With uniform weights it equals ``F.mse_loss(pred, target)``
        (every image has the same number of pixels).
    """
    if pred.shape != target.shape:
        raise ParameterError("weighted_mse", f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim not in (3, 4) or (pred.ndim == 4 and pred.shape[1] != 1):
        raise ParameterError("weighted_mse", f"expected (B, 1, H, W) or (B, H, W), got {tuple(pred.shape)}")
    sq = (pred - target) ** 2
    if weight is None:
        return sq.flatten(1).mean(dim=1).mean()
    weight = torch.as_tensor(weight, dtype=sq.dtype, device=sq.device)
    if weight.ndim == 3 and sq.ndim == 4 and weight.shape[0] == sq.shape[0] and sq.shape[0] != 1:
        weight = weight[:, None]  # (B, H, W) weights for (B, 1, H, W) images
    try:
        weight = torch.broadcast_to(weight, sq.shape)
    except RuntimeError:
        raise ParameterError(
            "weighted_mse", f"weight {tuple(weight.shape)} does not broadcast to pred {tuple(pred.shape)}"
        ) from None
    num = (weight * sq).flatten(1).sum(dim=1)
    den = weight.flatten(1).sum(dim=1)
    return (num / den).mean()


# --------------------------------------------------------------------------- ablation variants

#: The loss variants of the ablation. ``gradcam`` is the report's method; ``oracle`` uses
#: the ground-truth boxes instead of the classifier's maps (an upper bound on what better
#: maps could give); ``random`` puts boxes of the same sizes at random places (does any
#: re-weighting help, or the right one?); ``l1`` is fastMRI's own U-Net loss.
VARIANTS = ("unweighted", "gradcam", "oracle", "random", "l1")


def check_variant(variant: str) -> str:
    """Return ``variant`` or raise :class:`ParameterError` listing the known ones."""
    if variant not in VARIANTS:
        raise ParameterError("variants", f"unknown variant {variant!r}; use some of {', '.join(VARIANTS)}")
    return variant


def random_boxes(
    boxes: Sequence[Sequence], shape: tuple[int, int], rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Boxes of the same sizes as ``boxes`` at uniformly random places inside ``shape``."""
    h, w = shape
    out = []
    for _, _, bw, bh, *_ in boxes:
        bw, bh = min(int(bw), w), min(int(bh), h)
        out.append((int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1)), bw, bh))
    return out


def variant_weights(
    variant: str,
    files: Sequence[str],
    slice_nums: Sequence[int],
    shape: tuple[int, int],
    boxes_df=None,
    heatmaps_path=None,
    cam_method: str = "gradcam",
    rule: str = "linear",
    alpha: float = 4.0,
    threshold: float = 0.5,
    seed: int = 0,
) -> torch.Tensor | None:
    """Per-slice loss weights ``(N, H, W)`` of one variant for slices ``(files[i], slice_nums[i])``.

    ``None`` for the unweighted variants (``unweighted``, ``l1``). ``gradcam`` reads the
    maps of ``heatmaps_path`` (every slice must be there: a missing one is a
    :class:`~mrlib.errors.DataError`) and applies :func:`weight_map`; ``oracle`` and
    ``random`` need ``boxes_df`` (image coordinates), and slices without a box weigh 1.
    """
    from .data.annotations import boxes_for
    from .errors import DataError

    check_variant(variant)
    if variant in ("unweighted", "l1"):
        return None
    n = len(files)
    weights = np.ones((n, *shape), dtype=np.float32)
    if variant == "gradcam":
        from .cam import read_heatmaps

        if heatmaps_path is None:
            raise DataError("heatmaps", "the gradcam variant needs RUN/gradcam/heatmaps.h5 (notebook 04)")
        cache: dict[str, np.ndarray] = {}
        for i, (stem, s) in enumerate(zip(files, slice_nums)):
            if stem not in cache:
                cache[stem] = read_heatmaps(heatmaps_path, cam_method, stem, shape=shape)[0]
            if s >= cache[stem].shape[0]:
                raise DataError(heatmaps_path, f"has {cache[stem].shape[0]} slices of {stem}; slice {s} is needed")
            weights[i] = weight_map(cache[stem][s], rule=rule, alpha=alpha, threshold=threshold)
        return torch.from_numpy(weights)
    if boxes_df is None:
        raise DataError("annotations", f"the {variant} variant needs the lesion boxes (annotations/knee.csv)")
    rng = np.random.default_rng(seed)
    for i, (stem, s) in enumerate(zip(files, slice_nums)):
        boxes = boxes_for(boxes_df, stem, int(s))
        if boxes:
            placed = boxes if variant == "oracle" else random_boxes(boxes, shape, rng)
            weights[i] = box_weight_map(shape, placed, alpha)
    return torch.from_numpy(weights)


def variant_loss(variant: str, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The training loss of a variant: L1 for ``l1``, (weighted) MSE otherwise."""
    if variant == "l1":
        return torch.nn.functional.l1_loss(pred, target)
    return weighted_mse(pred, target, weight)
