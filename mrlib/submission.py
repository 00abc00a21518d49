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


class FolderWriter:
    """Write one folder of reconstructions a volume at a time, published at :meth:`commit`.

    Volumes go into a hidden temporary folder beside ``folder`` (readable like any other
    folder); :meth:`commit` moves an existing ``folder`` aside, renames the temporary one
    into place and deletes the old one, so a reader sees the old folder or the new one,
    never half of one. Hidden leftovers of a killed writer are removed when a new writer
    for the same folder starts. Use as a context manager: an exception discards the
    temporary folder and leaves ``folder`` as it was.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.parent.glob(f".{self.folder.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        os.chmod(self.tmp, 0o755)
        self.written: list[str] = []

    def add(self, stem: str, recon: np.ndarray) -> None:
        """Write ``<stem>.h5`` with the ``(slices, H, W)`` reconstruction (float32, gzip)."""
        recon = np.asarray(recon, dtype=np.float32)
        if recon.ndim != 3:
            raise DataError(self.folder / f"{stem}.h5", f"a reconstruction is (slices, H, W), got shape {recon.shape}")
        with h5py.File(self.tmp / f"{stem}.h5", "w") as hf:
            hf.create_dataset(RECONSTRUCTION_KEY, data=recon, compression="gzip", compression_opts=4,
                              chunks=(1, *recon.shape[1:]))
        self.written.append(stem)

    def commit(self) -> Path:
        if self.folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.old.", dir=self.folder.parent))
            self.folder.rename(old / "folder")
            self.tmp.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.folder)
        return self.folder

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "FolderWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_folder(folder: str | Path, recons: Mapping[str, np.ndarray]) -> Path:
    """Write ``{file stem: (slices, H, W) reconstruction}`` as ``folder/<stem>.h5``, atomically
    (:class:`FolderWriter`); an existing folder is replaced as a whole."""
    with FolderWriter(folder) as writer:
        for stem, recon in recons.items():
            writer.add(stem, recon)
    return writer.folder


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
