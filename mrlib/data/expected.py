"""How many files or exams each split of the real downloads holds.

:data:`EXPECTED` is the one table of these counts: ``check-data`` prints what it found
beside it and warns when a split holds fewer (a synthetic cohort, a partial download, an
interrupted extraction), and the book's "Getting the data" page shows the same numbers
(a test compares the page with this table). Each row names where its count was checked.
A count that could not be checked against its source is left out, so a split without a
row is reported without an expectation rather than against a guess.

``dataset`` and ``split`` name the part of a data directory as ``check-data`` reports it:
``fastmri/<challenge>_<split>`` (``.h5`` files), ``annotations/knee_file_list.csv`` (the
file names it lists), ``kneemri/metadata.csv`` (its exam rows) and ``mrnet/<split>``
(exams, under whichever MRNet root :func:`mrlib.data.mrnet.find_root` finds).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

_FASTMRI_MANIFEST = "facebookresearch/fastMRI, fastmri_raw_data_manifest/v2.0/knee_{}.txt (file names, one a line)"
_FASTMRI_PLUS = "microsoft/fastmri-plus, Annotations/knee_file_list.csv (commit 67ed9a6)"
_MRNET_PAGE = "stanfordmlgroup.github.io/competitions/mrnet/ (Splits)"
_KNEEMRI_PAPER = "Stajduhar et al. 2017, abstract (917 labelled exam sequences)"


class Expected(NamedTuple):
    """One split of a real download and the number of items it holds."""

    dataset: str  #: section of the ``check-data`` report: fastmri, annotations, kneemri, mrnet
    split: str  #: the folder or file counted
    count: int  #: items in the real download
    unit: str  #: what is counted
    source: str  #: where the count was checked

    @property
    def label(self) -> str:
        """``dataset/split``, as ``check-data`` and the book name it."""
        return f"{self.dataset}/{self.split}"


EXPECTED: tuple[Expected, ...] = (
    Expected("fastmri", "singlecoil_train", 973, "files", _FASTMRI_MANIFEST.format("singlecoil_train")),
    Expected("fastmri", "singlecoil_val", 199, "files", _FASTMRI_MANIFEST.format("singlecoil_val")),
    Expected("fastmri", "singlecoil_test", 108, "files", _FASTMRI_MANIFEST.format("singlecoil_test")),
    Expected("fastmri", "multicoil_train", 973, "files",
             _FASTMRI_MANIFEST.format("multicoil_train_batch_{0..4}") + ", 197 + 4 x 194"),
    Expected("fastmri", "multicoil_val", 199, "files", _FASTMRI_MANIFEST.format("multicoil_val")),
    Expected("fastmri", "multicoil_test", 118, "files", _FASTMRI_MANIFEST.format("multicoil_test")),
    Expected("annotations", "knee_file_list.csv", 1172, "files listed", _FASTMRI_PLUS),
    Expected("kneemri", "metadata.csv", 917, "exams", _KNEEMRI_PAPER),
    Expected("mrnet", "train", 1130, "exams", _MRNET_PAGE),
    Expected("mrnet", "valid", 120, "exams", _MRNET_PAGE),
)


def expected(dataset: str, split: str) -> Expected | None:
    """The row of :data:`EXPECTED` for one split, or None where no count was checked."""
    return next((e for e in EXPECTED if (e.dataset, e.split) == (dataset, split)), None)


class CountCheck(NamedTuple):
    """A split's count in a data directory beside the real download's (None: no row)."""

    label: str
    found: int
    expected: int | None
    unit: str

    @property
    def short(self) -> bool:
        """Fewer items than the real download holds."""
        return self.expected is not None and self.found < self.expected

    def line(self) -> str:
        """``fastmri/singlecoil_val: 2 of 199 files`` (or ``2 files, no published count``)."""
        if self.expected is None:
            return f"{self.label}: {self.found} {self.unit} (no checked count for the real download)"
        return f"{self.label}: {self.found} of {self.expected} {self.unit}"

    def warning(self) -> str:
        """One line naming the split, its count and the real download's; not a problem."""
        return (f"warning: {self.label}: {self.found} {self.unit}, fewer than the {self.expected} of the real "
                f"download (a synthetic cohort or a partial download?)")


def compare(found: Iterable[tuple[str, str, int]]) -> list[CountCheck]:
    """Each ``(dataset, split, count)`` found beside the real download's count."""
    out = []
    for dataset, split, n in found:
        row = expected(dataset, split)
        out.append(CountCheck(f"{dataset}/{split}", int(n), row.count if row else None,
                              row.unit if row else "item(s)"))
    return out
