"""The run manifest: what notebook 01 found in the data directory, for every later step.

The manifest lists the fastMRI splits (files, slices, shapes, acquisitions), the
annotation and kneeMRI locations with their counts, and the checks that passed. Later
notebooks read the data through it instead of searching the directory again. The run
directory (:class:`mrlib.rundir.RunDir`) writes and reads it, storing its paths relative.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .annotations import read_boxes
from .check import check_data_dir
from .fastmri_h5 import find_splits, validate_h5

def build_manifest(data_dir: str | Path, challenge: str = "singlecoil", deep: bool = True) -> dict[str, Any]:
    """Validate ``data_dir`` and describe it.

    Raises:
        DataError: naming the first problem (and how many there are) if any check fails.
    """
    data_dir = Path(data_dir).resolve()
    report = check_data_dir(data_dir, deep=deep)
    if not report.ok:
        where, what = report.problems[0]
        more = f" (and {len(report.problems) - 1} more problems; run python -m mrlib check-data {data_dir})"
        raise DataError(where, what + (more if len(report.problems) > 1 else ""))
    splits = {}
    for split, split_dir in find_splits(data_dir, challenge).items():
        infos = [validate_h5(p, check_finite=False) for p in sorted(split_dir.glob("*.h5"))]
        splits[split] = {
            "dir": str(split_dir),
            "files": [
                {
                    "name": i.path.name,
                    "n_slices": i.n_slices,
                    "kspace_shape": list(i.kspace_shape),
                    "target_shape": list(i.target_shape) if i.target_shape else None,
                    "acquisition": i.acquisition,
                }
                for i in infos
            ],
        }
    if not splits:
        raise DataError(data_dir / "fastmri", f"no {challenge}_{{train,val,test}} directories")
    first = next(f for s in splits.values() for f in s["files"])
    annotations = data_dir / "annotations" / "knee.csv"
    kneemri = data_dir / "kneemri" / "metadata.csv"
    synth = data_dir / "synth.json"
    return {
        "data_dir": str(data_dir),
        "challenge": challenge,
        "splits": splits,
        "counts": {
            s: {"volumes": len(v["files"]), "slices": sum(f["n_slices"] for f in v["files"])}
            for s, v in splits.items()
        },
        "kspace_shape": first["kspace_shape"][-2:],
        "image_size": first["target_shape"][-2:] if first["target_shape"] else None,
        "annotations": str(annotations) if annotations.is_file() else None,
        "kneemri": str(kneemri.parent) if kneemri.is_file() else None,
        "found": report.found,
        "checks": {"ok": True, "deep": deep, "problems": []},
        "synthetic": json.loads(synth.read_text()) if synth.is_file() else None,
    }


def manifest_boxes(manifest: dict[str, Any]):
    """The lesion boxes of the manifest's annotations in image coordinates, or ``None``.

    fastMRI+ stores boxes on up/down-flipped images; the manifest's image height un-flips them.
    """
    if not manifest.get("annotations"):
        return None
    return read_boxes(manifest["annotations"], image_height=manifest["image_size"][0])


def file_index(manifest: dict[str, Any]) -> dict[str, Path]:
    """Map each volume's stem (the ``file`` column of the annotations) to its HDF5 path."""
    return {
        Path(f["name"]).stem: Path(split["dir"]) / f["name"]
        for split in manifest["splits"].values()
        for f in split["files"]
    }
