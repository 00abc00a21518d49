"""``check-data``: look at a data directory, report what is there and every problem.

Known layouts under ``DIR``::

    fastmri/{singlecoil,multicoil}_{train,val,test}/*.h5
    annotations/knee.csv
    kneemri/metadata.csv + kneemri/**/*.pck
    MRNet-v1.0/ (or mrnet/, MRNet/): {train,valid}/{axial,coronal,sagittal}/NNNN.npy
                                     {train,valid}-{abnormal,acl,meniscus}.csv

:func:`check_data_dir` never stops at the first bad file: it records each problem as
``(where, what)`` and goes on, so one run lists everything to fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, ParameterError
from . import annotations as ann
from . import fastmri_h5, kneemri, mrnet
from .tables import read_csv


@dataclass
class DataReport:
    """What :func:`check_data_dir` found and the problems, each ``(where, what)``."""

    root: Path
    found: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str | Path, what: str) -> None:
        self.problems.append((str(where), what))

    def format(self) -> str:
        """A human-readable summary: what was found, then every problem with its file."""
        lines = [f"data directory: {self.root}"]
        fm = self.found.get("fastmri", {})
        for name, s in fm.items():
            lines.append(
                f"  fastmri/{name}: {s['files']} file(s) ok"
                + (f", {s['bad_files']} bad" if s.get("bad_files") else "")
                + f", {s['slices']} slice(s)"
            )
            for key, title in (
                ("kspace_shapes", "kspace shapes per slice"),
                ("target_shapes", "target shapes"),
                ("acquisitions", "acquisitions"),
            ):
                if s[key]:
                    lines.append(f"    {title}: " + ", ".join(f"{k} (x{v})" for k, v in s[key].items()))
        a = self.found.get("annotations")
        if a:
            labels = ", ".join(f"{k} (x{v})" for k, v in a["labels"].items()) or "none"
            lines.append(
                f"  annotations: {a['boxes']} box(es) on {a['files']} file(s), "
                f"{a['study_level']} study-level row(s); labels: {labels}"
            )
        k = self.found.get("kneemri")
        if k:
            labels = ", ".join(f"{c} {kneemri.ACL_LABELS.get(int(c), '?')} (x{n})" for c, n in k["labels"].items())
            lines.append(f"  kneemri: {k['exams']} exam(s); aclDiagnosis: {labels}")
            if k.get("volume_shapes"):
                lines.append(
                    "    volume shapes [z, y, x]: "
                    + ", ".join(f"{s} (x{n})" for s, n in k["volume_shapes"].items())
                )
        m = self.found.get("mrnet")
        if m:
            lines.append(f"  mrnet ({m['root']}):")
            for split, s in m["splits"].items():
                planes = ", ".join(f"{p} {n}" for p, n in s["planes"].items())
                tasks = ", ".join(f"{t} {pos}/{n}" for t, (pos, n) in s["labels"].items())
                lines.append(f"    {split}: exams per plane: {planes}; positives: {tasks}")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  {where}: {what}" for where, what in self.problems)
        return "\n".join(lines)


def _shape_str(shape: tuple) -> str:
    return "x".join(str(s) for s in shape)


def _check_fastmri(base: Path, report: DataReport, deep: bool) -> dict[str, tuple[int, int, int]]:
    """Check every split folder; return file stem -> (slices, H, W) for annotation checks."""
    images: dict[str, tuple[int, int, int]] = {}
    found: dict[str, Any] = {}
    for challenge in fastmri_h5.CHALLENGES:
        for split in fastmri_h5.SPLITS:
            d = base / f"{challenge}_{split}"
            if not d.is_dir():
                continue
            stats = {
                "files": 0,
                "bad_files": 0,
                "slices": 0,
                "kspace_shapes": Counter(),
                "target_shapes": Counter(),
                "acquisitions": Counter(),
            }
            found[d.name] = stats
            try:
                files = fastmri_h5.list_volumes(d)
            except DataError as exc:
                report.add(exc.where, exc.problem)
                files = []
            for f in files:
                try:
                    info = fastmri_h5.validate_h5(f, require_target=(split != "test"), check_finite=deep)
                    if info.challenge != challenge:
                        raise DataError(f, f"holds {info.challenge} k-space {info.kspace_shape} in a {challenge} folder")
                except DataError as exc:
                    stats["bad_files"] += 1
                    report.add(exc.where, exc.problem)
                    continue
                stats["files"] += 1
                stats["slices"] += info.n_slices
                stats["kspace_shapes"][_shape_str(info.kspace_shape[1:])] += 1
                if info.target_shape:
                    stats["target_shapes"][_shape_str(info.target_shape[1:])] += 1
                stats["acquisitions"][info.acquisition or "unknown"] += 1
                rec = info.recon_size or (320, 320, 1)
                images[f.stem] = (info.n_slices, rec[0], rec[1])
            for key in ("kspace_shapes", "target_shapes", "acquisitions"):
                stats[key] = dict(sorted(stats[key].items()))
    if not found:
        report.add(base, "holds no {singlecoil,multicoil}_{train,val,test} folder")
    report.found["fastmri"] = found
    return images


def _check_annotations(csv_path: Path, report: DataReport, images: dict[str, tuple[int, int, int]]) -> None:
    heights = {stem: h for stem, (_, h, _) in images.items()}
    try:
        df = ann.read_boxes(csv_path, image_height=heights)
    except DataError as exc:
        report.add(exc.where, exc.problem)
        return
    report.found["annotations"] = {
        "boxes": len(df),
        "files": int(df["file"].nunique()),
        "study_level": df.attrs.get("n_study_level", 0),
        "labels": dict(sorted(Counter(df["label"]).items())),
    }
    # boxes on files that are present must lie inside the image and on an existing slice
    for line, r in zip(df.index, df.itertuples(index=False)):
        if r.file not in images:
            continue
        n, h, w = images[r.file]
        if r.slice >= n:
            report.add(csv_path, f"line {line}: slice {r.slice} of {r.file} but the file has {n} slice(s)")
        elif r.x + r.width > w or r.y < 0 or r.y + r.height > h:
            report.add(
                csv_path,
                f"line {line}: box x={r.x} y={r.y} width={r.width} height={r.height} (image coordinates) "
                f"of {r.file} slice {r.slice} lies outside the {h}x{w} image",
            )


def _check_kneemri(d: Path, report: DataReport, deep: bool) -> None:
    csv_path = d / "metadata.csv"
    try:
        raw = read_csv(csv_path, "metadata file")
    except DataError as exc:
        report.add(exc.where, exc.problem)
        return
    df, problems = kneemri.metadata_problems(raw, csv_path, check_files=deep)
    for where, what in problems:
        report.add(where, what)
    if "aclDiagnosis" not in df.columns:
        return
    info: dict[str, Any] = {
        "exams": len(df),
        "labels": {str(k): int(v) for k, v in sorted(Counter(df["aclDiagnosis"].tolist()).items())},
    }
    if "volumeShape" in df.columns:
        shapes = Counter(_shape_str(t) for t in df["volumeShape"] if t is not None)
        info["volume_shapes"] = dict(sorted(shapes.items()))
    if not deep and "volumePath" in df.columns:
        for name, p in zip(df["volumeFilename"], df["volumePath"]):
            if p is None:
                report.add(csv_path, f"volume file {name!r} not found under {d}")
    report.found["kneemri"] = info


def _check_mrnet(root: Path, report: DataReport, deep: bool) -> None:
    info: dict[str, Any] = {"root": str(root), "splits": {}}
    for split in mrnet.SPLITS:
        if not (root / split).is_dir() and not any((root / f"{split}-{t}.csv").is_file() for t in mrnet.TASKS):
            continue
        s: dict[str, Any] = {"planes": {}, "labels": {}}
        info["splits"][split] = s
        ids: set[str] = set()
        for task in mrnet.TASKS:
            try:
                lab = mrnet.read_labels(root, split, task)
            except DataError as exc:
                report.add(exc.where, exc.problem)
                continue
            s["labels"][task] = (int(lab.sum()), len(lab))
            ids |= set(lab.index)
        for plane in mrnet.PLANES:
            try:
                exams = mrnet.list_exams(root, split, plane)
            except DataError as exc:
                report.add(exc.where, exc.problem)
                continue
            s["planes"][plane] = len(exams)
            missing = sorted(ids - set(exams))
            if missing:
                more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                report.add(root / split / plane, f"no .npy for labelled exam(s) {', '.join(missing[:5])}{more}")
            if deep:
                for e in exams:
                    try:
                        mrnet.check_exam_file(mrnet.exam_path(root, split, plane, e))
                    except DataError as exc:
                        report.add(exc.where, exc.problem)
    report.found["mrnet"] = info


def check_data_dir(path: str | Path, deep: bool = True) -> DataReport:
    """Check a data directory (real or synthetic) and report what it holds.

    Args:
        path: the data directory.
        deep: also scan k-space for NaN/Inf, load every kneeMRI volume (ROI inside the
            volume) and read every MRNet ``.npy`` header. Without it only structure,
            keys, shapes and CSVs are checked.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False if any problem was found.

    Raises:
        DataError: if ``path`` is missing, not a directory, or holds none of the known
            layouts (``fastmri/``, ``annotations/knee.csv``, ``kneemri/metadata.csv``,
            an MRNet root).
    """
    if not isinstance(deep, bool):
        raise ParameterError("deep", f"expected True or False, got {deep!r}")
    root = Path(path)
    if not root.exists():
        raise DataError(root, "data directory does not exist")
    if not root.is_dir():
        raise DataError(root, "not a directory")
    report = DataReport(root=root)
    fm_dir = root / "fastmri"
    ann_csv = root / "annotations" / "knee.csv"
    knee_dir = root / "kneemri"
    mr_root = mrnet.find_root(root)
    if not (fm_dir.is_dir() or ann_csv.is_file() or knee_dir.is_dir() or mr_root is not None):
        raise DataError(
            root,
            "holds none of the known layouts: fastmri/{singlecoil,multicoil}_{train,val,test}/, "
            "annotations/knee.csv, kneemri/metadata.csv, MRNet-v1.0/",
        )
    images: dict[str, tuple[int, int, int]] = {}
    if fm_dir.is_dir():
        images = _check_fastmri(fm_dir, report, deep)
    if ann_csv.is_file():
        _check_annotations(ann_csv, report, images)
    if knee_dir.is_dir():
        _check_kneemri(knee_dir, report, deep)
    if mr_root is not None:
        _check_mrnet(mr_root, report, deep)
    return report
