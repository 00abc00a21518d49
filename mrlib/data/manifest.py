"""The run manifest: what notebook 01 found in the data directory, for every later step.

The manifest lists the fastMRI splits (files, slices, shapes, acquisitions), the role of
every volume under the run's split policy and why (:mod:`mrlib.data.splits`), how each
source's arrays are oriented, the annotation and kneeMRI locations with their counts, and
the checks that passed. Later
notebooks read the data through it instead of searching the directory again. The run
directory (:class:`mrlib.rundir.RunDir`) writes and reads it, storing its paths relative.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError, ParameterError
from .annotations import KNEE_LABELS, annotation_counts, canonical_label, read_boxes, read_file_list
from .check import check_data_dir
from .fastmri_h5 import find_splits, read_volume, validate_h5
from .twins import find_twins, lesion_contrast, read_twin
from .splits import (ROLES, SELECTION_FRACTION, SPLIT_OF_ROLE, TARGET_ROLES, FileEntry, assign_roles,
                     role_summary)

def build_manifest(data_dir: str | Path, challenge: str = "singlecoil", deep: bool = True,
                   split_policy: str = "synthetic", selection_fraction: float = SELECTION_FRACTION,
                   lesion_labels: Sequence[str] = (), needed_roles: Sequence[str] = TARGET_ROLES) -> dict[str, Any]:
    """Validate ``data_dir`` and describe it, with every volume's role under ``split_policy``.

    ``lesion_labels``: the fastMRI+ box labels that count as a lesion (empty: every box
    label); recorded, and applied by :func:`manifest_boxes` for every later chapter.
    ``needed_roles``: the roles that must get volumes (``mrlib train`` needs no evaluation split).

    Raises:
        DataError: naming the first problem (and how many there are) if any check fails,
            including whatever a run with ``split_policy`` would refuse.
    """
    data_dir = Path(data_dir).resolve()
    report = check_data_dir(data_dir, deep=deep, split_policy=split_policy, selection_fraction=selection_fraction,
                            needed_roles=tuple(needed_roles))
    if not report.ok:
        where, what = report.problems[0]
        more = (f" (and {len(report.problems) - 1} more problems; run python -m mrlib check-data {data_dir} "
                f"--split-policy {split_policy})")
        raise DataError(where, what + (more if len(report.problems) > 1 else ""))
    splits, entries = {}, []
    for split, split_dir in find_splits(data_dir, challenge).items():
        infos = [validate_h5(p, require_target=False, check_finite=False) for p in sorted(split_dir.glob("*.h5"))]
        splits[split] = {
            "dir": str(split_dir),
            "files": [
                {
                    "name": i.path.name,
                    "n_slices": i.n_slices,
                    "kspace_shape": list(i.kspace_shape),
                    "target_shape": list(i.target_shape) if i.target_shape else None,
                    "acquisition": i.acquisition,
                    "recon_size": list(i.recon_size[:2]),
                    "stored_mask": i.has_mask,
                    "acceleration": i.acceleration,
                }
                for i in infos
            ],
        }
        entries += [FileEntry(split, i.path.name, i.patient_id, i.target_key is not None, i.has_mask) for i in infos]
    if not splits:
        raise DataError(data_dir / "fastmri", f"no {challenge}_{{train,val,test}} directories")
    roles = assign_roles(entries, split_policy, selection_fraction)
    files = [f for s in splits.values() for f in s["files"]]
    with_target = [f for f in files if f["target_shape"]]
    annotations = data_dir / "annotations" / "knee.csv"
    kneemri = data_dir / "kneemri" / "metadata.csv"
    synth = data_dir / "synth.json"
    synthetic = json.loads(synth.read_text()) if synth.is_file() else None
    manifest = {
        "data_dir": str(data_dir),
        "challenge": challenge,
        "split_policy": split_policy,
        "selection_fraction": float(selection_fraction),
        "evaluation_split": SPLIT_OF_ROLE[split_policy]["evaluation"],
        "selection_split": SPLIT_OF_ROLE[split_policy]["selection"],
        "splits": splits,
        "roles": roles,
        "counts": {
            s: {"volumes": len(v["files"]), "slices": sum(f["n_slices"] for f in v["files"])}
            for s, v in splits.items()
        },
        "role_counts": role_summary(roles),
        "kspace_shape": list(Counter(tuple(f["kspace_shape"][-2:]) for f in files).most_common(1)[0][0]),
        "kspace_widths": sorted({f["kspace_shape"][-1] for f in files}),
        "image_size": with_target[0]["target_shape"][-2:] if with_target else None,
        "orientation": orientation(synthetic),
        "annotations": str(annotations) if annotations.is_file() else None,
        "kneemri": str(kneemri.parent) if kneemri.is_file() else None,
        "found": report.found,
        "checks": {"ok": True, "deep": deep, "problems": []},
        "synthetic": synthetic,
        "lesion_labels": _checked_labels(lesion_labels),
    }
    boxes = manifest_boxes(manifest)
    if boxes is not None:
        file_list = annotations.parent / "knee_file_list.csv"
        manifest["annotation_counts"] = annotation_counts(
            boxes, [Path(f["name"]).stem for f in files], read_file_list(file_list) if file_list.is_file() else None)
        manifest["annotation_file_list"] = str(file_list) if file_list.is_file() else None
    return manifest


def orientation(synthetic: Mapping[str, Any] | None) -> dict[str, Any]:
    """How each source's stored arrays relate to the radiological view, for the manifest.

    fastMRI knee arrays are stored upside down relative to the view the fastMRI+
    annotators (and radiologists) use: fastMRI+ flipped them up/down before annotating.
    kneeMRI's sagittal volumes are stored the way they are viewed. Synthetic cohorts record
    how they were written (older ones were written display-up).
    """
    fastmri_flip = bool(synthetic.get("display_flip_ud", False)) if synthetic else True
    return {
        "fastmri": {"display_flip_ud": fastmri_flip,
                    "why": ("stored upside down, as the real fastMRI knee arrays; fastMRI+ boxes refer to the "
                            "up/down-flipped view" if fastmri_flip else "stored display-up (an older synthetic cohort)")},
        "kneemri": {"display_flip_ud": False, "why": "stored as viewed (sagittal, superior at the top)"},
        "mrnet": {"display_flip_ud": False, "why": "MRNet-v1.0 slices are stored as viewed"},
    }


def _checked_labels(labels: Sequence[str]) -> list[str]:
    """``lesion_labels`` in fastMRI+'s spelling; an unknown label (a typo would silently
    drop every box) is a :class:`ParameterError` listing the known ones."""
    labels = [canonical_label(label) for label in labels]
    unknown = [label for label in labels if label not in KNEE_LABELS]
    if unknown:
        raise ParameterError("lesion_labels", f"unknown fastMRI+ label(s) {unknown}; the knee labels are: "
                                              + "; ".join(KNEE_LABELS))
    return labels


def display_flip(manifest: Mapping[str, Any], source: str = "fastmri") -> bool:
    """Whether ``source``'s stored slices must be flipped up/down to be seen the radiological way up."""
    orientation = manifest.get("orientation", {})
    if source not in orientation:
        raise ParameterError("source", f"the manifest records no orientation for {source!r} "
                                       f"(it knows {', '.join(orientation) or 'none'}; re-run chapter 1)")
    return bool(orientation[source]["display_flip_ud"])


def classifier_flip(manifest: Mapping[str, Any], source: str = "kneemri") -> bool:
    """Whether fastMRI slices must be flipped up/down to be shown to a classifier trained on
    ``source``: when one of the two is stored upside down relative to the other."""
    return display_flip(manifest, "fastmri") != display_flip(manifest, source)


def role_files(manifest: Mapping[str, Any], role: str) -> list[Path]:
    """The HDF5 files the manifest gives ``role`` (``train``, ``selection``, ``evaluation``, ``inference``)."""
    if role not in ROLES:
        raise ParameterError("role", f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if "roles" not in manifest:
        raise DataError("manifest", "was written before split policies and roles; re-run chapter 1 (01_data)")
    return [Path(manifest["splits"][a["split"]]["dir"]) / a["file"] for a in manifest["roles"] if a["role"] == role]


def manifest_boxes(manifest: Mapping[str, Any]):
    """The lesion boxes of the manifest's annotations in image coordinates, or ``None``.

    fastMRI+ stores boxes on up/down-flipped images; each file's reconstruction size
    un-flips them. Boxes partly outside the image are clipped, degenerate ones dropped,
    rows of files not in the data directory skipped, and only the manifest's
    ``lesion_labels`` kept (:func:`mrlib.data.annotations.read_boxes` counts each in
    ``attrs``).
    """
    if not manifest.get("annotations"):
        return None
    shapes = {Path(f["name"]).stem: tuple(f.get("recon_size") or manifest["image_size"])
              for split in manifest["splits"].values() for f in split["files"]}
    return read_boxes(manifest["annotations"], image_height=manifest["image_size"][0], image_shape=shapes,
                      files=set(shapes), lesion_labels=manifest.get("lesion_labels") or None)


def twin_files(manifest: Mapping[str, Any]) -> dict[str, Path]:
    """``{file stem: twin path}`` of every volume with a lesion-free twin (synthetic data
    only; empty for real data, :mod:`mrlib.data.twins`)."""
    out: dict[str, Path] = {}
    for split in manifest["splits"].values():
        out.update(find_twins(manifest["data_dir"], split["dir"]))
    return out


def acquisitions(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{file stem: acquisition}`` (``CORPD_FBK`` or ``CORPDFS_FBK``) of every listed file."""
    return {Path(f["name"]).stem: f["acquisition"] for s in manifest["splits"].values() for f in s["files"]}


def lesion_contrasts(manifest: Mapping[str, Any]):
    """:func:`mrlib.data.twins.lesion_contrast` of every lesion with a twin, with its file and
    acquisition: a ``pandas.DataFrame`` (empty for real data)."""
    import pandas as pd  # lazy: the manifest itself needs no pandas

    acquisition = acquisitions(manifest)
    index = file_index(manifest)
    rows = []
    for stem, path in sorted(twin_files(manifest).items()):
        target = read_volume(index[stem])[1]
        rows += [dict(file=stem, acquisition=acquisition.get(stem, ""), **r)
                 for r in lesion_contrast(target, read_twin(path))]
    return pd.DataFrame(rows, columns=["file", "acquisition", "label", "contrast", "cnr", "rose", "pixels"])


def file_index(manifest: dict[str, Any]) -> dict[str, Path]:
    """Map each volume's stem (the ``file`` column of the annotations) to its HDF5 path."""
    return {
        Path(f["name"]).stem: Path(split["dir"]) / f["name"]
        for split in manifest["splits"].values()
        for f in split["files"]
    }
