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
for the ablation that asks how much of the effect the classifier's maps carry. The loss
variants themselves, which combine these pieces, are classes in :mod:`mrlib.variants`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .data.boxes import boxes_mask
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
