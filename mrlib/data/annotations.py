"""fastMRI+ bounding-box annotations (``file,slice,study_level,x,y,width,height,label``).

Real fastMRI+ boxes refer to up/down-flipped images. fastMRI's ``AnnotatedSliceDataset``
turns a CSV row into image coordinates with ``y_img = H - y_csv - height`` where ``H`` is
the reconstruction height (``recon_size[0]``, 320 for fastMRI knee). The map is its own
inverse, so the synthetic generator writes its boxes with the same function and one
reader serves real and synthetic annotations.

The real ``knee.csv`` has quirks the reader absorbs and counts (see :func:`read_boxes`):
study-level rows with empty box fields, a zero-height box, boxes reaching one row past
the image (``y = -1``), labels with stray spaces (``"Joint Effusion "``). Files without
any box are either true negatives (listed in ``knee_file_list.csv``, the files the
annotators reviewed; see :func:`read_file_list`) or were never reviewed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import DataError
from .tables import integer_column, read_csv

COLUMNS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
BOX_COLUMNS = ("file", "slice", "x", "y", "width", "height", "label")
_INT_COLUMNS = ("slice", "x", "y", "width", "height")

#: The labels of fastMRI+ ``Annotations/knee.csv`` (microsoft/fastmri-plus), spelled as
#: there (odd spaces around hyphens included, the trailing space of "Joint Effusion "
#: dropped). All are box labels except ``artifact``, which only marks study-level rows.
KNEE_LABELS = (
    "Bone - Lesion",
    "Bone- Subchondral edema",
    "Bone-Fracture/Contusion/dislocation",
    "Cartilage - Full Thickness loss/defect",
    "Cartilage - Partial Thickness loss/defect",
    "Displaced Meniscal Tissue",
    "Joint Bodies",
    "Joint Effusion",
    "LCL Complex - Low-Mod Grade Sprain",
    "LCL Complex- High Grade Sprain",
    "Ligament - ACL High Grade Sprain",
    "Ligament - ACL Low Grade sprain",
    "Ligament - MCL High Grade sprain",
    "Ligament - MCL Low-Mod Grade Sprain",
    "Ligament - PCL High Grade",
    "Ligament - PCL Low-Mod grade sprain",
    "Meniscus Tear",
    "Muscle Strain",
    "Patellar Retinaculum - High grade sprain",
    "Periarticular cysts",
    "Soft Tissue Lesion",
    "artifact",
)

#: The ``df.attrs`` counts of :func:`read_boxes`, each the number of CSV rows dropped for
#: that reason (``n_clipped``: kept, but cut to the image).
COUNT_ATTRS = ("n_missing_file", "n_study_level", "n_not_lesion", "n_degenerate", "n_outside", "n_clipped")


def _clean(text: object) -> str:
    return " ".join(str(text).split())


def _label_key(text: object) -> str:
    return re.sub(r" ?- ?", "-", _clean(text)).casefold()


_CANONICAL = {_label_key(label): label for label in KNEE_LABELS}


def canonical_label(text: object) -> str:
    """The :data:`KNEE_LABELS` spelling of ``text``, matched ignoring case, runs of
    whitespace and spaces around hyphens; for an unknown label, ``text`` with its
    whitespace stripped and collapsed."""
    return _CANONICAL.get(_label_key(text), _clean(text))


def flip_y(y: int, height: int, image_height: int) -> int:
    """Convert a box's top row between fastMRI+ CSV and image coordinates (both ways)."""
    return int(image_height) - int(y) - int(height)


def _stem(fname: str | Path) -> str:
    name = Path(str(fname).strip()).name
    return name[:-3] if name.endswith(".h5") else name


def _int_column(rows: pd.DataFrame, col: str, csv_path: Path) -> pd.Series:
    num, bad = integer_column(rows[col])
    if bad.any():
        line = bad.index[bad.to_numpy()][0]
        raise DataError(
            csv_path, f"line {line}: {col} is {rows.at[line, col]!r}, not an integer (file {rows.at[line, 'file']})"
        )
    return num


_NO_EDGE = np.iinfo(np.int64).max  # the width of an image of unknown width


def read_boxes(
    csv_path: str | Path,
    image_height: int | Mapping[str, int] = 320,
    *,
    image_shape: Mapping[str, tuple[int, int]] | None = None,
    files: Iterable[str] | None = None,
    lesion_labels: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read fastMRI+ boxes, convert them to image coordinates and drop the unusable ones.

    Args:
        csv_path: the annotation CSV (e.g. ``DATA/annotations/knee.csv``).
        image_height: the reconstruction height ``H`` (``recon_size[0]``) used to
            un-flip ``y``; an int for all files, or a mapping file stem -> H (files
            missing from the mapping use 320).
        image_shape: file stem -> ``(H, W)`` of its images; where given it sets ``H``
            (over ``image_height``) and the width ``W`` boxes are clipped to.
        files: the file stems (or ``.h5`` names) present; rows of other files are
            skipped. None: every file.
        lesion_labels: the labels that count as a lesion (matched with
            :func:`canonical_label`); boxes with other labels are dropped. None or
            empty: every label.

    Returns:
        One row per box with columns ``file`` (stem, str), ``slice``, ``x``, ``y``,
        ``width``, ``height`` (ints, image coordinates: ``y`` is the top row of the box
        in the un-flipped image, ``width, height >= 1``) and ``label`` (see
        :func:`canonical_label`). The index is the CSV line number. ``df.attrs``
        counts the rows (ints, :data:`COUNT_ATTRS`), each row once, in this order:

        - ``n_missing_file``: rows (box or study-level) of a file not in ``files``;
          their stems, sorted, in ``missing_files``;
        - ``n_study_level``: study-level rows (``study_level == "Yes"``), which carry
          no box; their labels in ``study_level_labels``;
        - ``n_not_lesion``: boxes whose label is not in ``lesion_labels``;
        - ``n_degenerate``: boxes of zero or negative width or height;
        - ``n_outside``: boxes entirely outside their image, dropped;
        - ``n_clipped``: boxes partly outside (negative ``x`` or ``y`` included), kept
          and cut to the image ``[0, H) x [0, W)``; without ``image_shape`` a file's
          image has no right edge.

    Raises:
        DataError: missing file or columns, a non-integer number or a negative slice,
            naming the CSV line (every row is checked, even those then dropped).
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
    raw["file"] = raw["file"].map(_stem)
    raw["label"] = raw["label"].map(canonical_label)
    study = raw["study_level"].str.strip().str.lower() == "yes"
    out = raw.loc[~study, ["file", "label"]]
    for col in _INT_COLUMNS:
        out[col] = _int_column(raw[~study], col, csv_path)
    if (out["slice"] < 0).any():
        line = out.index[(out["slice"] < 0).to_numpy()][0]
        raise DataError(
            csv_path, f"line {line}: slice is negative ({out.at[line, 'slice']}) (file {out.at[line, 'file']})"
        )

    present = raw["file"].isin({_stem(f) for f in files}) if files is not None else pd.Series(True, raw.index)
    absent = ~present
    attrs: dict = {
        "n_missing_file": int(absent.sum()),
        "missing_files": sorted(set(raw.loc[absent, "file"])),
        "n_study_level": int((study & ~absent).sum()),
        "study_level_labels": sorted(set(raw.loc[study & ~absent, "label"])),
    }
    out = out[present[out.index]]

    def drop(name: str, bad: pd.Series) -> pd.DataFrame:
        attrs[name] = int(bad.sum())
        return out[~bad]

    lesions = {canonical_label(label) for label in lesion_labels or ()}
    out = drop("n_not_lesion", ~out["label"].isin(lesions) if lesions else pd.Series(False, out.index))
    out = drop("n_degenerate", (out["width"] <= 0) | (out["height"] <= 0))

    def size(stem: str) -> tuple[int, int]:
        if image_shape is not None and stem in image_shape:
            return int(image_shape[stem][0]), int(image_shape[stem][1])
        h = image_height.get(stem, 320) if isinstance(image_height, Mapping) else image_height
        return int(h), _NO_EDGE

    image_h, image_w = np.array([size(f) for f in out["file"]], dtype=np.int64).reshape(-1, 2).T
    x, y_csv, w, h = (out[c].to_numpy() for c in ("x", "y", "width", "height"))
    y = image_h - y_csv - h  # flip_y, vectorised
    x0, y0 = np.maximum(x, 0), np.maximum(y, 0)
    x1, y1 = np.minimum(x + w, image_w), np.minimum(y + h, image_h)
    clipped = (x0 != x) | (y0 != y) | (x1 != x + w) | (y1 != y + h)
    out = out.assign(x=x0, y=y0, width=x1 - x0, height=y1 - y0)
    outside = (out["width"] <= 0) | (out["height"] <= 0)
    attrs["n_clipped"] = int((clipped & ~outside).sum())
    out = drop("n_outside", (out["width"] <= 0) | (out["height"] <= 0))
    out = out[list(BOX_COLUMNS)]
    out.attrs = attrs
    return out


_NAME = re.compile(r"[\w.-]+")  # a file name: no space, comma or quote


def read_file_list(path: str | Path) -> list[str]:
    """The file stems of a fastMRI+ file list (``knee_file_list.csv``): every file the
    annotators reviewed, with or without a box.

    The real list has no header: one name per line (``file1000000``), then a last line
    ``Knee data``. Blank lines and a first or last line that is not a file name (a
    caption or header) are skipped; ``.h5`` is dropped from a name.

    Returns:
        The stems, in file order, without repeats.

    Raises:
        DataError: the list is missing, not UTF-8 text, names no file, or has a line
            other than the first and last that is not a file name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file list does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable text file ({type(exc).__name__}: {exc})") from None
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    names = [(i, s) for k, (i, s) in enumerate(lines) if _NAME.fullmatch(s) or 0 < k < len(lines) - 1]
    for i, s in names:
        if not _NAME.fullmatch(s):
            raise DataError(path, f"line {i}: {s[:60]!r} is not a file name")
    if not names:
        raise DataError(path, "names no file")
    return list(dict.fromkeys(_stem(s) for _, s in names))


def annotation_counts(boxes: pd.DataFrame, stems: Iterable[str], reviewed: Iterable[str] | None = None) -> dict:
    """Positive, negative and unreviewed files among ``stems``, for a JSON manifest.

    Args:
        boxes: from :func:`read_boxes`.
        stems: the files of the data directory (stems or ``.h5`` names).
        reviewed: the files the annotators reviewed (:func:`read_file_list`); None: unknown.

    Returns:
        Plain ints: ``files`` (distinct ``stems``), ``boxes`` (boxes on them),
        ``positive`` (files with a box), ``reviewed`` (files in ``reviewed``),
        ``negative`` (reviewed, no box: true negatives), ``unreviewed`` (no box, not
        reviewed; every file without a box when ``reviewed`` is None), so
        ``positive + negative + unreviewed == files``; the :data:`COUNT_ATTRS` of
        ``boxes.attrs`` without their ``n_`` (``study_level``, ``missing_file``, ...),
        and ``missing_files``, a list of stems.
    """
    stems = {_stem(s) for s in stems}
    listed = {_stem(s) for s in reviewed or ()} & stems
    on = boxes["file"].isin(stems)
    positive = set(boxes.loc[on, "file"])
    counts = {
        "files": len(stems),
        "boxes": int(on.sum()),
        "positive": len(positive),
        "reviewed": len(listed),
        "negative": len(listed - positive),
        "unreviewed": len(stems - positive - listed),
    }
    counts.update({name[2:]: int(boxes.attrs.get(name, 0)) for name in COUNT_ATTRS})
    counts["missing_files"] = [str(s) for s in boxes.attrs.get("missing_files", [])]
    return counts


def boxes_for(df: pd.DataFrame, fname: str | Path, slice_num: int) -> list[tuple[int, int, int, int, str]]:
    """The boxes ``(x, y, width, height, label)`` of one slice (file stem or ``.h5`` name)."""
    sel = df[(df["file"] == _stem(fname)) & (df["slice"] == int(slice_num))]
    return slice_boxes(sel).get((_stem(fname), int(slice_num)), [])


def slice_boxes(df: pd.DataFrame) -> dict[tuple[str, int], list[tuple[int, int, int, int, str]]]:
    """Every slice's boxes at once, ``{(file stem, slice): [(x, y, width, height, label), ...]}``:
    one pass over the table, for code that asks about thousands of slices (a slice without
    a box is not a key)."""
    out: dict[tuple[str, int], list[tuple[int, int, int, int, str]]] = {}
    for r in df.itertuples(index=False):
        out.setdefault((str(r.file), int(r.slice)), []).append(
            (int(r.x), int(r.y), int(r.width), int(r.height), str(r.label)))
    return out


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
