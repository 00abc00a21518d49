"""Reconstructions in fastMRI's submission layout, and fastMRI's own scoring of them.

fastMRI writes one HDF5 file per volume, named as the input file, holding a dataset
``reconstruction`` (float32, ``(slices, H, W)``). :func:`write_folder` writes such a folder
atomically (a hidden temporary folder, then one rename), gzip-compressed, so a killed run
leaves either the whole folder or none.

``fastmri.evaluate`` walks a *target* folder and opens the same-named prediction; its
``--acceleration`` filter reads a target attribute that only test files carry. So
:func:`score_folder` scores one acceleration's folder at a time, against a temporary
target folder of links to exactly the scored volumes, with fastMRI's own ``evaluate``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
from fastmri import evaluate as fastmri_evaluate

from .data.fastmri_h5 import TARGET_KEYS
from .errors import DataError

RECONSTRUCTION_KEY = "reconstruction"


def write_folder(folder: str | Path, recons: Mapping[str, np.ndarray]) -> Path:
    """Write ``{file stem: (slices, H, W) reconstruction}`` as ``folder/<stem>.h5``, atomically.

    An existing folder is replaced as a whole.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for stem, recon in recons.items():
            recon = np.asarray(recon, dtype=np.float32)
            if recon.ndim != 3:
                raise DataError(folder / f"{stem}.h5", f"a reconstruction is (slices, H, W), got shape {recon.shape}")
            with h5py.File(tmp / f"{stem}.h5", "w") as hf:
                hf.create_dataset(RECONSTRUCTION_KEY, data=recon, compression="gzip", compression_opts=4,
                                  chunks=(1, *recon.shape[1:]))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def score_folder(predictions: str | Path, targets: Sequence[str | Path],
                 challenge: str = "singlecoil") -> dict[str, float]:
    """fastMRI's own evaluation of one folder of reconstructions.

    Args:
        predictions: a folder written by :func:`write_folder`, one acceleration.
        targets: the fully sampled files the folder reconstructs (one per volume).
        challenge: picks the target key (``reconstruction_esc`` or ``_rss``).

    Returns:
        ``fastmri.evaluate``'s means: ``{"MSE", "NMSE", "PSNR", "SSIM"}`` over the volumes.

    Raises:
        DataError: the folder is missing, or lacks a volume of ``targets``.
    """
    predictions = Path(predictions)
    targets = [Path(t) for t in targets]
    if not predictions.is_dir():
        raise DataError(predictions, "reconstruction folder does not exist")
    missing = [t.name for t in targets if not (predictions / t.name).is_file()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError(predictions, f"lacks {len(missing)} of the {len(targets)} scored volume(s): "
                                     f"{', '.join(missing[:5])}{more}")
    with tempfile.TemporaryDirectory(prefix="fastmri-targets-") as tmp:
        for t in targets:
            os.symlink(t.resolve(), Path(tmp) / t.name)
        args = argparse.Namespace(target_path=Path(tmp), predictions_path=predictions, challenge=challenge,
                                  acceleration=None, acquisition=None)
        metrics = fastmri_evaluate.evaluate(args, TARGET_KEYS[challenge])
    # fastMRI's SSIM mean is a one-element array
    return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in metrics.means().items()}
