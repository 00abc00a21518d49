"""Lesion-free twins of the synthetic fastMRI volumes: the ground truth of what a lesion is.

For every synthetic volume with a lesion, the generator also renders the same subject
without its lesions, with the same bias field, phase, coils and noise, so that
``target - twin`` is the lesions and nothing else. Real data has no twins; every use of
them (lesion contrast, the twin-shift localisation baseline, the in-domain one-feature
baseline) is skipped when the data directory holds none.

Layout, beside the fastMRI splits (never inside them, so the data directory still reads
as a real download)::

    DATA/synth_twins/{challenge}_{split}/{file}.h5
        twin          float32 (S, N, N)  the target without lesions (stored orientation)
        lesion_masks  uint8 (L, S, N, N)  each lesion's mask (the boxes' source)
        kspace        complex64, shaped as the volume's kspace  (val and test only) the twin's
                      k-space, same noise and coils: reconstructed with the volume's own
                      masks, it is what a lesion-free scan of the subject would give
        attrs: labels (JSON, L fastMRI+ labels), contrasts (JSON, L fractions),
               noise_sigma (the image noise's standard deviation, target units)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import h5py
import numpy as np

from ..artifacts import atomic_path
from ..errors import DataError

ROOT = "synth_twins"


class Twin(NamedTuple):
    """One volume's twin: ``twin (S, N, N)``, ``masks (L, S, N, N)`` bool, ``labels`` and
    ``contrasts`` (L each), ``noise_sigma``, and ``kspace`` (as the volume's, or ``None``)."""

    twin: np.ndarray
    masks: np.ndarray
    labels: list[str]
    contrasts: list[float]
    noise_sigma: float
    kspace: np.ndarray | None = None


def twin_dir(data_dir: str | Path, split_dir_name: str) -> Path:
    """``DATA/synth_twins/<split folder name>`` (e.g. ``singlecoil_val``)."""
    return Path(data_dir) / ROOT / split_dir_name


def write_twin(path: str | Path, twin: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str],
               contrasts: Sequence[float], noise_sigma: float, kspace: np.ndarray | None = None) -> Path:
    """Write one twin file atomically (layout in the module docstring; ``kspace`` optional)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            # a noisy image hardly compresses (gzip saved 13 % of a 320 x 320 twin, at 0.36 s each);
            # the masks are nearly all zeros
            f.create_dataset("twin", data=np.asarray(twin, np.float32))
            f.create_dataset("lesion_masks", data=np.asarray(masks, np.uint8), compression="gzip", compression_opts=4)
            if kspace is not None:  # noise does not compress
                f.create_dataset("kspace", data=np.asarray(kspace, np.complex64))
            f.attrs["labels"] = json.dumps(list(labels))
            f.attrs["contrasts"] = json.dumps([float(c) for c in contrasts])
            f.attrs["noise_sigma"] = float(noise_sigma)
    return path


def read_twin(path: str | Path) -> Twin:
    """Read a twin file; a missing or malformed one is a :class:`DataError` naming it."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            twin = np.asarray(f["twin"][()], np.float32)
            masks = np.asarray(f["lesion_masks"][()]).astype(bool)
            labels, contrasts = json.loads(f.attrs["labels"]), json.loads(f.attrs["contrasts"])
            sigma = float(f.attrs["noise_sigma"])
            kspace = np.asarray(f["kspace"][()], np.complex64) if "kspace" in f else None
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(path, f"not a readable twin file ({type(exc).__name__}: {exc})") from None
    if masks.ndim != 4 or masks.shape[1:] != twin.shape or len(labels) != masks.shape[0] != len(contrasts):
        raise DataError(path, f"lesion_masks {masks.shape} do not match twin {twin.shape} and {len(labels)} labels")
    if kspace is not None and kspace.shape[0] != twin.shape[0]:
        raise DataError(path, f"kspace has {kspace.shape[0]} slices, the twin {twin.shape[0]}")
    return Twin(twin, masks, labels, contrasts, sigma, kspace)


def find_twins(data_dir: str | Path, split_dir: str | Path) -> dict[str, Path]:
    """``{file stem: twin path}`` of one fastMRI split folder (empty for real data)."""
    folder = twin_dir(data_dir, Path(split_dir).name)
    return {p.stem: p for p in sorted(folder.glob("*.h5"))} if folder.is_dir() else {}


def lesion_contrast(target: np.ndarray, twin: Twin) -> list[dict]:
    """Each lesion's contrast against its own twin, in units of the subject's noise.

    ``CNR = mean over the lesion's mask of (target - twin) / noise_sigma`` (signed: bone
    marrow edema is darker than fatty marrow on PD), and the Rose index ``|CNR| *
    sqrt(n)`` with ``n`` the lesion's pixels on its largest slice: Rose (1948) put the
    threshold of detection near 5.

    Args:
        target: the volume's target ``(S, N, N)``; twin: its :func:`read_twin`.
    """
    rows = []
    for mask, label, contrast in zip(twin.masks, twin.labels, twin.contrasts):
        diff = (np.asarray(target, np.float64) - twin.twin)[mask]
        cnr = float(diff.mean() / twin.noise_sigma) if diff.size and twin.noise_sigma > 0 else float("nan")
        pixels = int(mask.reshape(mask.shape[0], -1).sum(axis=1).max())
        rows.append(dict(label=label, contrast=float(contrast), cnr=cnr, rose=abs(cnr) * float(np.sqrt(pixels)),
                         pixels=pixels))
    return rows
