"""fastMRI+ bounding-box annotations (``file,slice,study_level,x,y,width,height,label``).

Real fastMRI+ boxes refer to up/down-flipped images. fastMRI's ``AnnotatedSliceDataset``
turns a CSV row into image coordinates with ``y_img = H - y_csv - height`` where ``H`` is
the reconstruction height (``recon_size[0]``, 320 for fastMRI knee). The map is its own
inverse, so the synthetic generator writes its boxes with the same function and one
reader serves real and synthetic annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import DataError
from .tables import integer_column, read_csv

COLUMNS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
BOX_COLUMNS = ("file", "slice", "x", "y", "width", "height", "label")
_INT_COLUMNS = ("slice", "x", "y", "width", "height")


def flip_y(y: int, height: int, image_height: int) -> int:
    """Convert a box's top row between fastMRI+ CSV and image coordinates (both ways)."""
    return int(image_height) - int(y) - int(height)


def _stem(fname: str | Path) -> str:
    name = Path(str(fname).strip()).name
    return name[:-3] if name.endswith(".h5") else name


def read_boxes(
    csv_path: str | Path, image_height: int | Mapping[str, int] = 320
) -> pd.DataFrame:
    """Read fastMRI+ boxes and convert them to image coordinates.

    Args:
        csv_path: the annotation CSV (e.g. ``DATA/annotations/knee.csv``).
        image_height: the reconstruction height ``H`` (``recon_size[0]``) used to
            un-flip ``y``; an int for all files, or a mapping file stem -> H (files
            missing from the mapping use 320).

    Returns:
        One row per box with columns ``file`` (stem, str), ``slice``, ``x``, ``y``,
        ``width``, ``height`` (ints, image coordinates: ``y`` is the top row of the box
        in the un-flipped image) and ``label``. The index is the CSV line number.
        Study-level rows (``study_level == "Yes"``) carry no box and are dropped; their
        count is in ``df.attrs["n_study_level"]``, their labels in
        ``df.attrs["study_level_labels"]``.

    Raises:
        DataError: missing file or columns, non-integer numbers, negative coordinates
            or sizes.
    """
    csv_path = Path(csv_path)
    raw = read_csv(csv_path, "annotation file", keep_default_na=False)
    raw = raw.rename(columns=lambda c: str(c).strip())
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            csv_path, f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, raw.columns))})"
        )
    raw.index = pd.RangeIndex(2, len(raw) + 2, name="line")
    study = raw["study_level"].str.strip().str.lower() == "yes"
    boxes = raw[~study].copy()
    out = pd.DataFrame(index=boxes.index)
    out["file"] = boxes["file"].map(_stem)
    for col in _INT_COLUMNS:
        num, bad = integer_column(boxes[col])
        if bad.any():
            line = bad.index[bad.to_numpy()][0]
            raise DataError(
                csv_path, f"line {line}: {col} is {boxes.at[line, col]!r}, not an integer (file {boxes.at[line, 'file']})"
            )
        if (num < 0).any():
            line = num.index[(num < 0).to_numpy()][0]
            raise DataError(
                csv_path, f"line {line}: {col} is negative ({int(num[line])}) (file {boxes.at[line, 'file']})"
            )
        out[col] = num
    out["label"] = boxes["label"].str.strip()
    if isinstance(image_height, Mapping):
        heights = out["file"].map(lambda f: int(image_height.get(f, 320)))
    else:
        heights = pd.Series(int(image_height), index=out.index)
    out["y"] = (heights - out["y"] - out["height"]).astype(np.int64)  # flip_y, vectorised
    out = out[list(BOX_COLUMNS)]
    out.attrs["n_study_level"] = int(study.sum())
    out.attrs["study_level_labels"] = sorted(set(raw.loc[study, "label"].str.strip()))
    return out


def boxes_for(df: pd.DataFrame, fname: str | Path, slice_num: int) -> list[tuple[int, int, int, int, str]]:
    """The boxes ``(x, y, width, height, label)`` of one slice (file stem or ``.h5`` name)."""
    sel = df[(df["file"] == _stem(fname)) & (df["slice"] == int(slice_num))]
    return [
        (int(r.x), int(r.y), int(r.width), int(r.height), str(r.label))
        for r in sel.itertuples(index=False)
    ]


def check_boxes_in_image(
    df: pd.DataFrame,
    image_shape: tuple[int, int] | Mapping[str, tuple[int, int]],
    csv_path: str | Path,
) -> None:
    """Raise :class:`DataError` naming the first box that is not inside its image.

    Args:
        df: from :func:`read_boxes` (image coordinates).
        image_shape: ``(H, W)`` for all files, or a mapping file stem -> ``(H, W)``
            (files missing from the mapping are not checked).
        csv_path: the CSV, for the message.
    """
    for line, r in zip(df.index, df.itertuples(index=False)):
        if isinstance(image_shape, Mapping):
            if r.file not in image_shape:
                continue
            h, w = image_shape[r.file]
        else:
            h, w = image_shape
        if r.x < 0 or r.y < 0 or r.x + r.width > w or r.y + r.height > h:
            raise DataError(
                csv_path,
                f"line {line}: box x={r.x} y={r.y} width={r.width} height={r.height} "
                f"(image coordinates) of {r.file} slice {r.slice} lies outside the {h}x{w} image",
            )
