"""Writers of the real file formats, all atomic (temporary name, then rename).

* fastMRI HDF5: ``kspace`` (complex64), ``reconstruction_esc`` / ``reconstruction_rss``
  (float32), ``ismrmrd_header`` (ISMRMRD XML) and the attributes ``acquisition``,
  ``max``, ``norm``, ``patient_id``;
* kneeMRI: one pickled ``uint16`` ndarray per exam (pickle protocol 2) and
  ``metadata.csv``;
* fastMRI+ boxes: ``file,slice,study_level,x,y,width,height,label``;
* MRNet-v1.0: one ``.npy`` ``uint8`` (S, 256, 256) per exam and plane, and header-less
  label files of ``exam,label`` lines (``0000,1``).
"""

from __future__ import annotations

import csv
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from ..artifacts import atomic_path
from ..errors import DataError
from .annotations import COLUMNS

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
KNEEMRI_COLUMNS = ("examId", "seriesNo", "aclDiagnosis", "kneeLR", "roiX", "roiY", "roiZ",
                   "roiHeight", "roiWidth", "roiDepth", "volumeFilename")


def ismrmrd_header(encoded: Sequence[int], recon: Sequence[int], fov_mm: float,
                   slice_thickness_mm: float, pe_limits: Sequence[int], n_slices: int,
                   protocol: str = "CORPD_FBK", n_coils: int = 15,
                   field_strength: float = 2.89362) -> bytes:
    """An ISMRMRD XML header as fastMRI stores it.

    Args:
        encoded: encodedSpace matrix (x = readout incl. oversampling, y = phase encodes, z).
        recon: reconSpace matrix (x, y, z).
        fov_mm: reconstruction field of view (square, mm); the encoded FOV scales with
            the matrix (readout oversampling along x).
        slice_thickness_mm: slice thickness (the z field of view).
        pe_limits: (minimum, maximum, center) of ``kspace_encoding_step_1``: fastMRI's
            ``padding_left = encoded_y // 2 - center``,
            ``padding_right = padding_left + maximum + 1``.
        n_slices: number of slices (encodingLimits/slice).
        protocol, n_coils, field_strength: recorded as measurement/system information.
    """
    ET.register_namespace("", ISMRMRD_NS)

    def el(parent, tag, text=None):
        node = ET.SubElement(parent, f"{{{ISMRMRD_NS}}}{tag}")
        if text is not None:
            node.text = str(text)
        return node

    def xyz(parent, tag, values):
        node = el(parent, tag)
        for axis, value in zip("xyz", values):
            el(node, axis, value)

    def limit(parent, tag, lo, hi, centre):
        node = el(parent, tag)
        el(node, "minimum", lo)
        el(node, "maximum", hi)
        el(node, "center", centre)

    ex, ey, ez = (int(v) for v in encoded)
    rx, ry, rz = (int(v) for v in recon)
    pix = fov_mm / rx
    root = ET.Element(f"{{{ISMRMRD_NS}}}ismrmrdHeader")
    study = el(root, "studyInformation")
    el(study, "studyTime", "00:00:00")
    meas = el(root, "measurementInformation")
    el(meas, "measurementID", "synthetic")
    el(meas, "patientPosition", "HFS")
    el(meas, "protocolName", protocol)
    system = el(root, "acquisitionSystemInformation")
    el(system, "systemVendor", "SYNTHETIC")
    el(system, "systemModel", "mrlib")
    el(system, "systemFieldStrength_T", f"{field_strength:g}")
    el(system, "relativeReceiverNoiseBandwidth", "0.793")
    el(system, "receiverChannels", int(n_coils))
    el(system, "institutionName", "mrlib synthetic knee")
    cond = el(root, "experimentalConditions")
    el(cond, "H1resonanceFrequency_Hz", int(round(42.577478e6 * field_strength)))
    enc = el(root, "encoding")
    space = el(enc, "encodedSpace")
    xyz(space, "matrixSize", (ex, ey, ez))
    xyz(space, "fieldOfView_mm", (f"{ex * pix:.4f}", f"{ey * pix:.4f}", f"{slice_thickness_mm:.4f}"))
    space = el(enc, "reconSpace")
    xyz(space, "matrixSize", (rx, ry, rz))
    xyz(space, "fieldOfView_mm", (f"{fov_mm:.4f}", f"{ry * pix:.4f}", f"{slice_thickness_mm:.4f}"))
    lims = el(enc, "encodingLimits")
    lo, hi, centre = (int(v) for v in pe_limits)
    limit(lims, "kspace_encoding_step_1", lo, hi, centre)
    limit(lims, "kspace_encoding_step_2", 0, 0, 0)
    limit(lims, "average", 0, 0, 0)
    limit(lims, "slice", 0, max(0, int(n_slices) - 1), int(n_slices) // 2)
    limit(lims, "contrast", 0, 0, 0)
    limit(lims, "phase", 0, 0, 0)
    limit(lims, "repetition", 0, 0, 0)
    limit(lims, "set", 0, 0, 0)
    limit(lims, "segment", 0, 0, 0)
    el(enc, "trajectory", "cartesian")
    seq = el(root, "sequenceParameters")
    el(seq, "TR", "2750")
    el(seq, "TE", "27")
    el(seq, "TI", "100")
    el(seq, "flipAngle_deg", "90")
    el(seq, "sequence_type", "TurboSpinEcho")
    el(seq, "echo_spacing", "13.6")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                       xml_declaration=False)


def write_fastmri_h5(path, kspace: np.ndarray, target: np.ndarray | None, attrs: Mapping,
                     header: bytes, multicoil: bool = False, mask: np.ndarray | None = None) -> Path:
    """Write one fastMRI volume (single-coil: ``reconstruction_esc``; multi-coil: ``_rss``).

    kspace: complex (slices, 2N, PE) or, multi-coil, (slices, coils, 2N, PE);
    target: float (slices, N, N), or ``None`` for a test-split file, which then needs its
    ``mask`` (bool, PE: the columns its already undersampled k-space keeps) and the
    attributes ``acceleration`` and ``num_low_frequency``. ``attrs`` must hold acquisition
    and patient_id, and max and norm with a target.
    """
    path = Path(path)
    kspace = np.asarray(kspace)
    ndim = 4 if multicoil else 3
    if kspace.ndim != ndim or not np.iscomplexobj(kspace):
        raise DataError(path, f"kspace must be complex with {ndim} dimensions, got "
                              f"{kspace.dtype} {kspace.shape}")
    required = {"acquisition", "patient_id"}
    if target is not None:
        target = np.asarray(target)
        if target.ndim != 3 or target.shape[0] != kspace.shape[0]:
            raise DataError(path, f"target must be (slices, N, N) matching kspace, got {target.shape}")
        required |= {"max", "norm"}
    else:
        if mask is None or np.asarray(mask).shape != (kspace.shape[-1],):
            raise DataError(path, f"a file without target needs a mask of {kspace.shape[-1]} columns")
        required |= {"acceleration", "num_low_frequency"}
    if not (np.isfinite(kspace).all() and (target is None or np.isfinite(target).all())):
        raise DataError(path, "NaN or infinity in kspace or target")
    missing = required - set(attrs)
    if missing:
        raise DataError(path, f"missing attributes {sorted(missing)}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as hf:
            hf.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
            if target is not None:
                key = "reconstruction_rss" if multicoil else "reconstruction_esc"
                hf.create_dataset(key, data=target.astype(np.float32, copy=False))
            else:
                hf.create_dataset("mask", data=np.asarray(mask, dtype=bool))
            hf.create_dataset("ismrmrd_header", data=np.bytes_(header))
            for name, value in attrs.items():
                hf.attrs[name] = value
    return path


def write_pck(path, volume: np.ndarray) -> Path:
    """Pickle a plain ndarray (protocol 2), as the kneeMRI ``.pck`` files are stored."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise DataError(path, f"a kneeMRI volume must be 3D [z, y, x], got shape {volume.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(np.ascontiguousarray(volume), f, protocol=2)
    return Path(path)


def write_mrnet_exam(path, volume: np.ndarray) -> Path:
    """Save one MRNet-v1.0 series, ``uint8`` ``(S, H, W)``, as a plain ``.npy``."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.dtype != np.uint8:
        raise DataError(path, f"an MRNet exam must be uint8 (slices, H, W), got {volume.dtype} {volume.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, np.ascontiguousarray(volume), allow_pickle=False)
    return Path(path)


def write_mrnet_labels(path, rows: Iterable[tuple[str, int]]) -> Path:
    """Write an MRNet-v1.0 label file as the real ones are: no header, ``exam,label`` lines
    (``0000,1``), exam ids zero-padded to four digits."""
    lines = "".join(f"{str(exam).zfill(4)},{int(label)}\n" for exam, label in rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(lines)
    return Path(path)


def _write_csv(path, columns: Sequence[str], rows: Iterable[Mapping]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                missing = set(columns) - set(row)
                if missing:
                    raise DataError(path, f"row {dict(row)} lacks columns {sorted(missing)}")
                writer.writerow({c: row[c] for c in columns})
    return Path(path)


def write_kneemri_metadata(path, rows: Iterable[Mapping]) -> Path:
    """Write kneeMRI ``metadata.csv`` (columns :data:`KNEEMRI_COLUMNS`, in that order)."""
    return _write_csv(path, KNEEMRI_COLUMNS, rows)


def write_boxes_csv(path, rows: Iterable[Mapping]) -> Path:
    """Write fastMRI+ boxes (columns ``annotations.COLUMNS``), y already flipped."""
    return _write_csv(path, COLUMNS, rows)


def write_file_list(path, stems: Iterable[str]) -> Path:
    """Write fastMRI+'s ``knee_file_list.csv`` as the real one is: no header, one reviewed
    file per line, then the caption line ``Knee data``."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{s}\n" for s in stems) + "Knee data\n")
    return Path(path)
