"""MRNet-v1.0 (Bien et al. 2018): ``.npy`` exams and headerless label CSVs.

Layout::

    ROOT/{train,valid}/{axial,coronal,sagittal}/NNNN.npy   uint8 (slices, 256, 256)
    ROOT/{train,valid}-{abnormal,acl,meniscus}.csv          lines "0000,0"

Exams are loaded with ``np.load(allow_pickle=False)``, so a ``.npy`` holding objects is
refused rather than unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, ParameterError
from .tables import read_csv

SPLITS = ("train", "valid")
PLANES = ("axial", "coronal", "sagittal")
TASKS = ("abnormal", "acl", "meniscus")
ROOT_NAMES = ("MRNet-v1.0", "mrnet", "MRNet")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(name, f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


def exam_name(exam_id: int | str) -> str:
    """``7`` or ``"7"`` or ``"0007"`` -> ``"0007"``."""
    s = str(exam_id).strip()
    if not s.isdigit():
        raise ParameterError("exam_id", f"{exam_id!r} is not a numeric exam id")
    return s.zfill(4)


def find_root(data_dir: str | Path) -> Path | None:
    """The MRNet root inside ``data_dir`` (``MRNet-v1.0``, ``mrnet`` or itself), or None."""
    data_dir = Path(data_dir)
    for cand in [data_dir / n for n in ROOT_NAMES] + [data_dir]:
        if cand.is_dir() and any((cand / f"{s}-{t}.csv").is_file() for s in SPLITS for t in TASKS):
            return cand
        if cand.is_dir() and cand != data_dir and any((cand / s).is_dir() for s in SPLITS):
            return cand
    return None


def read_labels(root: str | Path, split: str, task: str) -> pd.Series:
    """Labels of one split and task.

    Returns:
        A Series indexed by exam id (``"0000"`` strings) with int values 0/1.

    Raises:
        ParameterError: unknown split or task. DataError: missing or malformed CSV.
    """
    _check("split", split, SPLITS)
    _check("task", task, TASKS)
    path = Path(root) / f"{split}-{task}.csv"
    df = read_csv(path, "label file", header=None)
    if df.shape[1] != 2:
        raise DataError(path, f"expected 2 columns (exam id, label) but found {df.shape[1]}")
    ids, labels = (df[c].fillna("").astype(str).str.strip() for c in (0, 1))
    for i, (e, lab) in enumerate(zip(ids, labels), start=1):
        if not e.isdigit():
            raise DataError(path, f"line {i}: exam id {e!r} is not a number")
        if lab not in ("0", "1"):
            raise DataError(path, f"line {i}: label {lab!r} is not 0 or 1")
    index = ids.str.zfill(4)
    if index.duplicated().any():
        raise DataError(path, f"exam id {index[index.duplicated()].iloc[0]} appears twice")
    return pd.Series(labels.astype(int).to_numpy(), index=pd.Index(index.to_numpy(), name="exam"), name=task)


def exam_path(root: str | Path, split: str, plane: str, exam_id: int | str) -> Path:
    _check("split", split, SPLITS)
    _check("plane", plane, PLANES)
    return Path(root) / split / plane / f"{exam_name(exam_id)}.npy"


def _check_array_meta(path: Path, shape: tuple, dtype: np.dtype) -> None:
    if len(shape) != 3:
        raise DataError(path, f"exam has rank {len(shape)} (shape {shape}); expected (slices, 256, 256)")
    if dtype != np.uint8:
        raise DataError(path, f"exam has dtype {dtype}; expected uint8")
    if 0 in shape:
        raise DataError(path, f"exam is empty (shape {shape})")


def npy_header(path: str | Path) -> tuple[tuple, np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only (no data)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "exam file does not exist")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as exc:
        raise DataError(path, f"not a valid .npy file ({type(exc).__name__}: {exc})") from None
    return tuple(shape), dtype


def check_exam_file(path: str | Path) -> tuple:
    """Check a ``.npy`` exam's header (rank, dtype) without loading it; return its shape."""
    path = Path(path)
    shape, dtype = npy_header(path)
    _check_array_meta(path, shape, dtype)
    return shape


def load_exam(root: str | Path, split: str, plane: str, exam_id: int | str) -> np.ndarray:
    """One exam in one plane: uint8 ``(slices, 256, 256)``.

    Raises:
        ParameterError: unknown split/plane. DataError: missing, unreadable, object
            (pickled) array, wrong rank or dtype.
    """
    path = exam_path(root, split, plane, exam_id)
    if not path.is_file():
        raise DataError(path, "exam file does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(path, f"refused: {exc}") from None
    except Exception as exc:
        raise DataError(path, f"not a valid .npy file ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(path, "not a single .npy array")
    _check_array_meta(path, arr.shape, arr.dtype)
    return arr


def list_exams(root: str | Path, split: str, plane: str) -> list[str]:
    """Sorted exam ids that have a ``.npy`` file in one split and plane."""
    _check("split", split, SPLITS)
    _check("plane", plane, PLANES)
    d = Path(root) / split / plane
    if not d.is_dir():
        raise DataError(d, "directory does not exist")
    return sorted(p.stem for p in d.glob("*.npy") if p.stem.isdigit())
