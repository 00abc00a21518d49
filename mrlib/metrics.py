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
