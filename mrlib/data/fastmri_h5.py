"""Validating reader of fastMRI HDF5 volumes and a safe ``fastmri.data.SliceDataset``.

A fastMRI volume is one HDF5 file with

- ``kspace``: complex64, ``(slices, rows, cols)`` for single-coil or
  ``(slices, coils, rows, cols)`` for multi-coil data;
- the target ``reconstruction_esc`` (single-coil) or ``reconstruction_rss``
  (multi-coil), float32 ``(slices, H, W)``; a test-split file may lack it;
- ``ismrmrd_header``: ISMRMRD XML that ``SliceDataset`` reads the encoded and recon
  matrix sizes and the phase-encoding limits from;
- attributes ``acquisition``, ``max``, ``norm``, ``patient_id``;
- in the real ``*_test`` split: no target, k-space already undersampled, a ``mask``
  dataset (bool, one entry per k-space column) and the attributes ``acceleration`` and
  ``num_low_frequency``.

:func:`validate_h5` checks all of that and turns every problem into a
:class:`~mrlib.errors.DataError` that names the file, so a user never sees an h5py or
``ElementTree`` traceback. :func:`slice_dataset` validates every file of a split before
it builds fastMRI's own ``SliceDataset`` (always without its pickle cache).
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any, Callable, NamedTuple

import h5py
import numpy as np
from fastmri.data import SliceDataset

from ..errors import DataError, ParameterError

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
CHALLENGES = ("singlecoil", "multicoil")
SPLITS = ("train", "val", "test")
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
_RANK_TO_CHALLENGE = {3: "singlecoil", 4: "multicoil"}


class VolumeInfo(NamedTuple):
    """What :func:`validate_h5` found in one file.

    ``recon_size`` and ``encoding_size`` are the header's ``(x, y, z)`` matrix sizes;
    fastMRI uses ``recon_size[0]`` as the image height (e.g. for fastMRI+ boxes).
    """

    path: Path
    challenge: str
    n_slices: int
    kspace_shape: tuple
    target_key: str | None
    target_shape: tuple | None
    acquisition: str | None
    encoding_size: tuple | None = None
    recon_size: tuple | None = None
    patient_id: str | None = None
    has_mask: bool = False
    acceleration: int | None = None


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def _check_challenge(challenge: str) -> None:
    if challenge not in CHALLENGES:
        raise ParameterError("challenge", f"unknown challenge {challenge!r}; use one of {', '.join(CHALLENGES)}")


def parse_header(raw: Any, where: str | Path) -> tuple[tuple, tuple, int, int]:
    """Parse an ISMRMRD header as ``SliceDataset`` does.

    Returns:
        ``(encoding_size, recon_size, center, maximum)``: the two ``(x, y, z)`` matrix
        sizes and the ``kspace_encoding_step_1`` center and maximum.
    """
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.shape == () else raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        root = etree.fromstring(raw)
    except (etree.ParseError, TypeError, ValueError) as exc:
        raise DataError(where, f"ismrmrd_header is not valid XML ({exc})") from None
    ns = {"m": ISMRMRD_NS}

    def get(*names: str) -> int:
        query = "." + "".join(f"//m:{n}" for n in names)
        el = root.find(query, ns)
        if el is None or el.text is None:
            raise DataError(
                where,
                f"ismrmrd_header lacks {'/'.join(names)} (namespace {ISMRMRD_NS})",
            )
        try:
            return int(el.text.strip())
        except ValueError:
            raise DataError(where, f"ismrmrd_header {'/'.join(names)} is {el.text!r}, not an integer") from None

    enc = tuple(get("encoding", "encodedSpace", "matrixSize", a) for a in "xyz")
    rec = tuple(get("encoding", "reconSpace", "matrixSize", a) for a in "xyz")
    lims = ("encoding", "encodingLimits", "kspace_encoding_step_1")
    center, maximum = get(*lims, "center"), get(*lims, "maximum")
    return enc, rec, center, maximum


def _check_finite(ds: h5py.Dataset, where: Path, name: str) -> None:
    """Check a dataset for NaN/Inf one slice at a time, reusing one buffer."""
    buf = np.empty(ds.shape[1:], dtype=ds.dtype)
    for i in range(ds.shape[0]):
        ds.read_direct(buf, source_sel=np.s_[i])
        flat = buf.view(np.float32) if buf.dtype == np.complex64 else buf
        if not np.isfinite(flat).all():
            n_bad = int((~np.isfinite(flat)).sum())
            raise DataError(where, f"{name} slice {i} holds {n_bad} NaN/Inf value(s)")


def validate_h5(path: str | Path, require_target: bool = True, check_finite: bool = True) -> VolumeInfo:
    """Check one fastMRI HDF5 file and describe it.

    Args:
        path: the ``.h5`` file.
        require_target: if False a file without its target (a test-split file) passes.
        check_finite: also read k-space (and the target) slice by slice for NaN/Inf.

    Raises:
        DataError: naming the file and the problem: unreadable/truncated/not HDF5,
            missing ``kspace`` or target, wrong rank or dtype, NaN/Inf, a target whose
            shape does not match the k-space slices or the header's recon size, or a
            header ``SliceDataset`` cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if not path.is_file():
        raise DataError(path, "not a file")
    try:
        hf = h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError, sometimes others, for non-HDF5 bytes
        raise DataError(path, f"not a readable HDF5 file (truncated or not HDF5): {exc}") from None
    try:
        with hf:
            return _validate_open(hf, path, require_target, check_finite)
    except DataError:
        raise
    except Exception as exc:  # a truncated file can open and then fail on reading
        raise DataError(path, f"HDF5 file is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _validate_open(hf: h5py.File, path: Path, require_target: bool, check_finite: bool) -> VolumeInfo:
    keys = sorted(hf.keys())
    if "kspace" not in hf or not isinstance(hf["kspace"], h5py.Dataset):
        raise DataError(path, f"no 'kspace' dataset (found: {', '.join(keys) or 'nothing'})")
    ks = hf["kspace"]
    if ks.ndim not in _RANK_TO_CHALLENGE:
        raise DataError(
            path,
            f"kspace has rank {ks.ndim} (shape {tuple(ks.shape)}); expected 3 (slices, rows, cols) "
            "for single-coil or 4 (slices, coils, rows, cols) for multi-coil",
        )
    if ks.dtype != np.complex64:
        raise DataError(path, f"kspace has dtype {ks.dtype}; expected complex64")
    n_slices = int(ks.shape[0])
    if n_slices == 0 or 0 in ks.shape:
        raise DataError(path, f"kspace is empty (shape {tuple(ks.shape)})")
    challenge = _RANK_TO_CHALLENGE[ks.ndim]

    if "ismrmrd_header" not in hf:
        raise DataError(path, "no 'ismrmrd_header' dataset (fastmri.data.SliceDataset needs it)")
    enc, rec, _, _ = parse_header(hf["ismrmrd_header"][()], path)

    target_key = TARGET_KEYS[challenge]
    target_shape = None
    if target_key in hf:
        tg = hf[target_key]
        if not isinstance(tg, h5py.Dataset):
            raise DataError(path, f"'{target_key}' is not a dataset")
        target_shape = tuple(int(s) for s in tg.shape)
        if tg.ndim != 3:
            raise DataError(path, f"{target_key} has rank {tg.ndim} (shape {target_shape}); expected (slices, H, W)")
        if tg.dtype.kind != "f":
            raise DataError(path, f"{target_key} has dtype {tg.dtype}; expected float32")
        if target_shape[0] != n_slices:
            raise DataError(
                path,
                f"{target_key} has {target_shape[0]} slices but kspace has {n_slices} "
                f"(target {target_shape}, kspace {tuple(ks.shape)})",
            )
        if target_shape[1:] != tuple(rec[:2]):
            raise DataError(
                path,
                f"{target_key} images are {target_shape[1]}x{target_shape[2]} but the header's "
                f"reconSpace matrixSize is {rec[0]}x{rec[1]}",
            )
    elif require_target:
        raise DataError(
            path,
            f"no target '{target_key}' for {challenge} data (found: {', '.join(keys)}); "
            "pass require_target=False for a test split",
        )
    else:
        target_key = None

    has_mask, acceleration = "mask" in hf, None
    if has_mask:
        mask = hf["mask"]
        width = int(ks.shape[-1])
        if not isinstance(mask, h5py.Dataset) or mask.ndim != 1 or int(mask.shape[0]) != width:
            shape = tuple(mask.shape) if isinstance(mask, h5py.Dataset) else "a group"
            raise DataError(path, f"stored mask has shape {shape} but the k-space has {width} columns "
                                  f"(kspace {tuple(ks.shape)}); a test file's mask has one entry per column")
        if not np.asarray(mask[()]).any():
            raise DataError(path, "stored mask keeps no k-space column")
        if "acceleration" in hf.attrs:
            acceleration = int(np.asarray(hf.attrs["acceleration"]).item())
    if check_finite:
        _check_finite(ks, path, "kspace")
        if target_key is not None:
            _check_finite(hf[target_key], path, target_key)

    acq = _decode(hf.attrs.get("acquisition"))
    return VolumeInfo(
        path=path,
        challenge=challenge,
        n_slices=n_slices,
        kspace_shape=tuple(int(s) for s in ks.shape),
        target_key=target_key,
        target_shape=target_shape,
        acquisition=None if acq is None else str(acq),
        encoding_size=enc,
        recon_size=rec,
        patient_id=None if hf.attrs.get("patient_id") is None else str(_decode(hf.attrs.get("patient_id"))),
        has_mask=has_mask,
        acceleration=acceleration,
    )


def list_volumes(split_dir: str | Path) -> list[Path]:
    """The sorted ``*.h5`` files of a split directory.

    Raises:
        DataError: if the directory is missing, not a directory, or holds no ``.h5``.
    """
    split_dir = Path(split_dir)
    if not split_dir.exists():
        raise DataError(split_dir, "directory does not exist")
    if not split_dir.is_dir():
        raise DataError(split_dir, "not a directory")
    files = sorted(p for p in split_dir.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        raise DataError(split_dir, "holds no .h5 files")
    return files


class _H5OnlySliceDataset(SliceDataset):
    """``SliceDataset`` that skips non-``.h5`` entries and reports bad files clearly.

    fastMRI's ``SliceDataset`` reads every entry of its directory; a stray README or
    ``.DS_Store`` would crash it inside h5py. Here such entries contribute no slices.
    """

    def _retrieve_metadata(self, fname):  # noqa: D401 - fastMRI's hook
        fname = Path(fname)
        if fname.suffix != ".h5" or not fname.is_file():
            return {}, 0
        try:
            return super()._retrieve_metadata(fname)
        except Exception as exc:
            raise DataError(fname, f"fastmri.data.SliceDataset cannot read it ({type(exc).__name__}: {exc})") from None


def slice_dataset(
    split_dir: str | Path,
    challenge: str = "singlecoil",
    transform: Callable | None = None,
    validate: bool = True,
    require_target: bool = True,
    check_finite: bool = True,
    **kwargs: Any,
) -> SliceDataset:
    """fastMRI's ``SliceDataset`` over one split directory, with every file validated first.

    Args:
        split_dir: e.g. ``DATA/fastmri/singlecoil_train``.
        challenge: ``"singlecoil"`` or ``"multicoil"``; every file must match it.
        transform: a fastMRI transform, e.g. ``UnetDataTransform("singlecoil", mask_func)``.
        validate: run :func:`validate_h5` on every file before building the dataset.
        require_target: False for a test split whose files lack the target.
        check_finite: passed to :func:`validate_h5`.
        **kwargs: passed to ``SliceDataset`` (``sample_rate``, ``num_cols``, ...), except
            ``use_dataset_cache``, which is always False (its cache is an unrestricted pickle).

    Returns:
        A ``fastmri.data.SliceDataset`` (a subclass that ignores non-``.h5`` entries).
    """
    _check_challenge(challenge)
    if kwargs.pop("use_dataset_cache", False):
        raise ParameterError("use_dataset_cache", "not supported: fastMRI's dataset cache is an unrestricted pickle")
    kwargs.pop("dataset_cache_file", None)
    files = list_volumes(split_dir)
    if validate:
        for f in files:
            info = validate_h5(f, require_target=require_target, check_finite=check_finite)
            if info.challenge != challenge:
                raise DataError(
                    f,
                    f"holds {info.challenge} k-space (shape {info.kspace_shape}) but challenge={challenge!r}",
                )
    return _H5OnlySliceDataset(
        root=Path(split_dir),
        challenge=challenge,
        transform=transform,
        use_dataset_cache=False,
        **kwargs,
    )


def find_splits(data_dir: str | Path, challenge: str = "singlecoil") -> dict[str, Path]:
    """The split directories ``DATA/fastmri/{challenge}_{split}`` that exist.

    Returns:
        ``{"train": path, "val": path, "test": path}``, only the splits present.

    Raises:
        DataError: if ``data_dir`` or its ``fastmri`` folder is missing or holds no split.
    """
    _check_challenge(challenge)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory does not exist")
    base = data_dir / "fastmri"
    if not base.is_dir():
        raise DataError(base, "no fastmri folder in the data directory")
    found = {s: base / f"{challenge}_{s}" for s in SPLITS if (base / f"{challenge}_{s}").is_dir()}
    if not found:
        expected = ", ".join(f"{challenge}_{s}" for s in SPLITS)
        raise DataError(base, f"holds none of the split folders {expected}")
    return found


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a whole validated volume.

    Returns:
        ``(kspace, target, attrs)``: complex64 k-space (single-coil ``(slices, rows,
        cols)`` or multi-coil ``(slices, coils, rows, cols)``), the float32 target
        ``(slices, H, W)`` or None for a file without one, and the HDF5 attributes
        (bytes decoded to str) plus ``challenge``, ``encoding_size``, ``recon_size``.
    """
    info = validate_h5(path, require_target=False, check_finite=True)
    try:
        with h5py.File(info.path, "r") as hf:
            kspace = hf["kspace"][()]
            target = hf[info.target_key][()] if info.target_key else None
            attrs = {k: _decode(v) for k, v in hf.attrs.items()}
    except Exception as exc:
        raise DataError(info.path, f"cannot read volume ({type(exc).__name__}: {exc})") from None
    attrs.update(
        challenge=info.challenge,
        encoding_size=info.encoding_size,
        recon_size=info.recon_size,
    )
    return kspace, target, attrs


def read_stored_mask(path: str | Path) -> np.ndarray | None:
    """The ``mask`` a real test-split file stores (bool, one entry per k-space column), or None."""
    info = validate_h5(path, require_target=False, check_finite=False)
    if not info.has_mask:
        return None
    with h5py.File(info.path, "r") as hf:
        return np.asarray(hf["mask"][()]).astype(bool)
