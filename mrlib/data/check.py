"""``check-data``: look at a data directory, report what is there and every problem.

Known layouts under ``DIR``::

    fastmri/{singlecoil,multicoil}_{train,val,test}/*.h5
    annotations/knee.csv
    kneemri/metadata.csv + kneemri/**/*.pck
    MRNet-v1.0/ (or mrnet/, MRNet/): {train,valid}/{axial,coronal,sagittal}/NNNN.npy
                                     {train,valid}-{abnormal,acl,meniscus}.csv

:func:`check_data_dir` never stops at the first bad file: it records each problem as
``(where, what)`` and goes on, so one run lists everything to fix. It also prints each
split's count beside the real download's (:mod:`mrlib.data.expected`) and warns, without
failing, when a split holds fewer: a synthetic cohort or a partial download passes, and says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, ParameterError
from . import annotations as ann
from . import expected, fastmri_h5, kneemri, mrnet, splits
from .tables import read_csv


@dataclass
class DataReport:
    """What :func:`check_data_dir` found and the problems, each ``(where, what)``."""

    root: Path
    found: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    checked_policy: str | None = None
    sizes: list[tuple[str, str, int]] = field(default_factory=list)

    def add_size(self, dataset: str, split: str, items: int) -> None:
        """Record how many items a split holds, named as :mod:`mrlib.data.expected` names it."""
        self.sizes.append((dataset, split, int(items)))

    @property
    def counts(self) -> list[expected.CountCheck]:
        """Each split's count beside the real download's."""
        return expected.compare(self.sizes)

    @property
    def ok(self) -> bool:
        """No problem found; warnings (:attr:`warnings`) do not count."""
        return not self.problems

    @property
    def warnings(self) -> list[str]:
        """One line for each split that holds fewer items than the real download."""
        return [c.warning() for c in self.counts if c.short]

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
            if s.get("without_target"):
                lines.append(f"    {s['without_target']} file(s) without a target (as the real test split)")
        for challenge, verdicts in self.found.get("split_policies", {}).items():
            for policy, verdict in verdicts.items():
                lines.append(f"  {challenge} with split_policy={policy}: {verdict}")
            if not self.checked_policy:
                lines.append("    (pass --split-policy to check the directory as a run with that policy does)")
        a = self.found.get("annotations")
        if a:
            labels = ", ".join(f"{k} (x{v})" for k, v in a["labels"].items()) or "none"
            reviewed = (
                f"; of the data files {a['positive']} with a box, {a['negative']} reviewed without, "
                f"{a['unreviewed']} not reviewed" if "reviewed" in a else ""
            )
            lines.append(
                f"  annotations: {a['boxes']} box(es) on {a['files']} file(s) ({a['clipped']} clipped); "
                f"skipped: {a['study_level']} study-level, {a['degenerate']} zero-size, {a['outside']} outside, "
                f"{a['missing_file']} of absent files{reviewed}; labels: {labels}"
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
        if self.counts:
            lines.append("  counts against the real downloads:")
            lines.extend(f"    {c.line()}" for c in self.counts)
        lines.extend(self.warnings)
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  {where}: {what}" for where, what in self.problems)
        return "\n".join(lines)


def _shape_str(shape: tuple) -> str:
    return "x".join(str(s) for s in shape)


def _check_fastmri(base: Path, report: DataReport, deep: bool, policies: tuple[str, ...],
                   selection_fraction: float, needed: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """Check every split folder and what each split policy would make of it.

    Returns file stem -> (slices, H, W) for the annotation checks.
    """
    images: dict[str, tuple[int, int, int]] = {}
    found: dict[str, Any] = {}
    usable: dict[str, dict[str, str]] = {}
    for challenge in fastmri_h5.CHALLENGES:
        entries: list[splits.FileEntry] = []
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
                    info = fastmri_h5.validate_h5(f, require_target=False, check_finite=deep)
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
                entries.append(splits.FileEntry(split, f.name, info.patient_id, info.target_key is not None,
                                                info.has_mask))
                if info.target_key is None:
                    stats["without_target"] = stats.get("without_target", 0) + 1
            for key in ("kspace_shapes", "target_shapes", "acquisitions"):
                stats[key] = dict(sorted(stats[key].items()))
            report.add_size("fastmri", d.name, stats["files"] + stats["bad_files"])  # bad ones are there too
        if not entries:
            continue
        usable[challenge] = {}
        for policy in splits.POLICIES:
            problems = splits.policy_problems(entries, policy, challenge, selection_fraction, needed)
            if policy in policies:
                for where, what in problems:
                    report.add(base.parent / where, what)
            usable[challenge][policy] = "usable" if not problems else f"not usable: {problems[0][1]}"
    report.found["split_policies"] = usable
    if not found:
        report.add(base, "holds no {singlecoil,multicoil}_{train,val,test} folder")
    report.found["fastmri"] = found
    return images


def _check_annotations(csv_path: Path, report: DataReport, images: dict[str, tuple[int, int, int]]) -> None:
    """Read the boxes against the fastMRI files found (all of them if none were) and,
    if it is there, the reviewed-file list ``knee_file_list.csv`` beside them."""
    try:
        df = ann.read_boxes(
            csv_path,
            image_shape={stem: (h, w) for stem, (_, h, w) in images.items()},
            files=images.keys() if images else None,
        )
    except DataError as exc:
        report.add(exc.where, exc.problem)
        return
    reviewed = None
    list_path = csv_path.parent / "knee_file_list.csv"
    if list_path.is_file():
        try:
            reviewed = ann.read_file_list(list_path)
        except DataError as exc:
            report.add(exc.where, exc.problem)
    counts = ann.annotation_counts(df, images, reviewed)
    info: dict[str, Any] = {"boxes": len(df), "files": int(df["file"].nunique())}
    info.update({k: counts[k] for k in ("study_level", "degenerate", "clipped", "outside", "missing_file")})
    info["labels"] = dict(sorted(Counter(df["label"]).items()))
    if reviewed is not None:
        info.update({k: counts[k] for k in ("reviewed", "positive", "negative", "unreviewed")})
        report.add_size("annotations", list_path.name, len(reviewed))
    report.found["annotations"] = info
    # boxes are clipped to their image; one on a slice the file does not have is a problem
    for line, r in zip(df.index, df.itertuples(index=False)):
        n = images.get(r.file, (r.slice + 1,))[0]
        if r.slice >= n:
            report.add(csv_path, f"line {line}: slice {r.slice} of {r.file} but the file has {n} slice(s)")


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
    report.add_size("kneemri", csv_path.name, len(df))


def _check_mrnet(root: Path, report: DataReport, deep: bool, data_dir: Path) -> None:
    # the root relative to the data directory, as the manifest records every other path:
    # a run directory copied or moved elsewhere holds the same results
    info: dict[str, Any] = {"root": root.relative_to(data_dir).as_posix(), "splits": {}}
    for split in mrnet.SPLITS:
        if not (root / split).is_dir() and not any((root / f"{split}-{t}.csv").is_file() for t in mrnet.TASKS):
            continue
        s: dict[str, Any] = {"planes": {}, "labels": {}}
        info["splits"][split] = s
        ids: set[str] = set()
        seen: set[str] = set()  # every exam named by a label file or a plane folder
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
            seen |= set(exams)
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
        report.add_size("mrnet", split, len(ids | seen))
    report.found["mrnet"] = info


def check_data_dir(path: str | Path, deep: bool = True, split_policy: str | None = None,
                   selection_fraction: float = splits.SELECTION_FRACTION,
                   needed_roles: tuple[str, ...] = splits.TARGET_ROLES) -> DataReport:
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

    ``split_policy`` (:mod:`mrlib.data.splits`): what a run with that policy would refuse
    (a training file without target, no evaluation split...) is a problem; chapter 1 runs
    exactly this check. ``None`` checks the files alone and reports, for each policy,
    whether a run could use the directory (``found["split_policies"]``).
    """
    if not isinstance(deep, bool):
        raise ParameterError("deep", f"expected True or False, got {deep!r}")
    root = Path(path)
    if not root.exists():
        raise DataError(root, "data directory does not exist")
    if not root.is_dir():
        raise DataError(root, "not a directory")
    report = DataReport(root=root, checked_policy=split_policy)
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
    if split_policy is not None:
        splits.check_policy(split_policy, selection_fraction)
    if fm_dir.is_dir():
        images = _check_fastmri(fm_dir, report, deep, (split_policy,) if split_policy else (), selection_fraction,
                                tuple(needed_roles))
    if ann_csv.is_file():
        _check_annotations(ann_csv, report, images)
    if knee_dir.is_dir():
        _check_kneemri(knee_dir, report, deep)
    if mr_root is not None:
        _check_mrnet(mr_root, report, deep, root)
    return report
