"""Compare two run directories: did a run reproduce?

``python -m mrlib compare RUN_A RUN_B`` reads every ``*.json`` and ``*.csv`` result below the
two run directories (:meth:`mrlib.rundir.RunDir.result_files`: not the stamp, not the
book) and lists every value that differs, timing fields aside. Numbers must be
exactly equal unless a tolerance is given; NaN equals NaN. The absolute path of each run
directory is replaced by ``<run>`` before strings are compared, so two runs into two
directories compare equal when they hold the same results.

Example::

    python -m mrlib run --preset smoke --run-dir runs/a -p seed=3
    python -m mrlib run --preset smoke --run-dir runs/b -p seed=3
    python -m mrlib compare runs/a runs/b          # exit 0: identical; 1: differences
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError, MrlibError
from .rundir import RunDir

#: Field names (JSON keys, CSV columns; shell-style patterns) that hold timings or clock
#: times: they differ between two runs and between two machines by nature.
TIMING_FIELDS = ("seconds", "*seconds*", "*_time", "time_*", "elapsed*", "duration*", "timestamp*",
                 "wall_s", "*per_second*", "*_per_s")

#: At most this many differences are listed per file (the count is always exact).
MAX_PER_FILE = 20


def _ignored(name: str, ignore: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore)


def _files(run: Path) -> set[str]:
    return RunDir(run).result_files()


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a string that spells one, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same_number(a: float, b: float, tolerance: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return tolerance > 0 and math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


class _Differ:
    def __init__(self, roots: tuple[Path, Path], ignore: tuple[str, ...], tolerance: float):
        self.roots = roots
        self.ignore = ignore
        self.tolerance = tolerance

    def norm(self, text: str, side: int) -> str:
        root = self.roots[side]
        for form in {str(root.resolve()), str(root)}:
            text = text.replace(form, "<run>")
        return text

    def scalar(self, a: Any, b: Any, where: str, out: list[str]) -> None:
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None and not (isinstance(a, str) and isinstance(b, str) and a == b):
            if not _same_number(na, nb, self.tolerance):
                out.append(f"{where}: {a!r} != {b!r}")
            return
        if isinstance(a, str) and isinstance(b, str):
            if self.norm(a, 0) != self.norm(b, 1):
                out.append(f"{where}: {a!r} != {b!r}")
        elif type(a) is not type(b) or a != b:
            out.append(f"{where}: {a!r} != {b!r}")

    def json(self, a: Any, b: Any, where: str, out: list[str]) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if _ignored(str(key), self.ignore):
                    continue
                if key not in a or key not in b:
                    out.append(f"{where}.{key}: only in {'the second' if key not in a else 'the first'} run")
                else:
                    self.json(a[key], b[key], f"{where}.{key}", out)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append(f"{where}: {len(a)} items != {len(b)} items")
            for i, (x, y) in enumerate(zip(a, b)):
                self.json(x, y, f"{where}[{i}]", out)
        elif isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
            out.append(f"{where}: a {type(a).__name__} != a {type(b).__name__}")
        else:
            self.scalar(a, b, where, out)

    def csv(self, a: list[list[str]], b: list[list[str]], out: list[str]) -> None:
        if not a or not b:
            if a != b:
                out.append("one file is empty")
            return
        if a[0] != b[0]:
            out.append(f"columns {a[0]} != {b[0]}")
            return
        if len(a) != len(b):
            out.append(f"{len(a) - 1} rows != {len(b) - 1} rows")
        keep = [i for i, name in enumerate(a[0]) if not _ignored(name, self.ignore)]
        for r, (ra, rb) in enumerate(zip(a[1:], b[1:]), start=1):
            if len(ra) != len(rb):
                out.append(f"row {r}: {len(ra)} cells != {len(rb)} cells")
                continue
            for i in keep:
                if i < len(ra):
                    self.scalar(ra[i], rb[i], f"row {r} column {a[0][i]}", out)


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        raise DataError(path, f"not a readable CSV ({exc})") from None


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    ignore: Iterable[str] = TIMING_FIELDS,
    tolerance: float = 0.0,
) -> list[str]:
    """Every difference between the JSON and CSV results of two run directories.

    Args:
        run_a, run_b: the run directories.
        ignore: JSON keys and CSV columns (shell-style patterns) to skip; by default the
            timing fields (:data:`TIMING_FIELDS`).
        tolerance: numbers ``x``, ``y`` are equal when ``x == y``, or, for a tolerance
            above 0, when ``math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance)``.

    Returns:
        One line per difference (``file: where: a != b``); empty when the runs agree.
        A file that only one run holds is a difference.

    Raises:
        MrlibError: a directory is missing, holds no JSON/CSV, or a file cannot be read.
    """
    roots = (Path(run_a), Path(run_b))
    for root in roots:
        if not root.is_dir():
            raise MrlibError(root, "is not a run directory (it does not exist or is a file)")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise MrlibError("--tolerance", f"must be a number >= 0, got {tolerance!r}")
    files = [_files(root) for root in roots]
    if not files[0] and not files[1]:
        raise MrlibError(roots[0], "holds no JSON or CSV results to compare (nor does the other run)")
    differ = _Differ(roots, tuple(ignore), float(tolerance))
    out: list[str] = []
    for rel in sorted(files[0] | files[1]):
        if rel not in files[0] or rel not in files[1]:
            out.append(f"{rel}: only in {roots[0] if rel in files[0] else roots[1]}")
            continue
        a, b = (_read(root / rel) for root in roots)
        found: list[str] = []
        if rel.endswith(".json"):
            differ.json(a, b, "$", found)
        else:
            differ.csv(a, b, found)
        shown = [f"{rel}: {d.strip()}" for d in found[:MAX_PER_FILE]]
        if len(found) > MAX_PER_FILE:
            shown.append(f"{rel}: ... and {len(found) - MAX_PER_FILE} more differences")
        out += shown
    return out
