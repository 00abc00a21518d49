"""The run directory: the one owner of every path and artifact of a run.

A run directory holds what the six chapters write, and nothing else in mrlib spells one
of its file names. Its layout::

    RUN/run.json                      the stamp: preset, parameters, notebooks finished
    RUN/data/                         the synthetic cohorts, when no --data is given
    RUN/manifest.json                 chapter 1: splits, shapes, checks (paths relative)
    RUN/masking.json                  chapter 2: the masking spec
    RUN/mrnet/<source>/metrics.json, splits.json, predictions.csv
    RUN/mrnet/<source>/seed<N>/{best,last}.pt, history.json
                                      chapter 3: a classifier per ROI source and seed
    RUN/gradcam/<source>/seed<N>/heatmaps.h5, twin_heatmaps.h5
    RUN/gradcam/localization.csv, localization_by_group.csv, localization_kneemri.csv
                                      chapter 4: the CAMs and how well they localise
    RUN/unet/runs.json                chapter 5: the run registry (merged under a lock)
    RUN/unet/<variant key>/seed<N>/{best,last}.pt, history.json, config.json
    RUN/evaluation/metrics.csv, summary.json
                                      chapter 6: metrics per volume, the summary
    RUN/book/                         the run's own book: _config.yml, _toc.yml, the pages
                                      (book/*.md), the executed notebooks (book/notebooks/),
                                      the run's record (book/generated/) and _build/html

Every write is atomic (a temporary name, then a rename). Paths stored inside artifacts
are relative to the run directory or to the data directory, so a copied or moved run
directory still reads, compares and builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from .artifacts import read_json, write_json, write_text
from .errors import DataError, ParameterError
from .data.manifest import role_files
from .masking import MaskSpec


class CheckpointDir:
    """The files of one trained model: checkpoints, history and config.

    Used by :func:`mrlib.train.fit` for the classifier and for every U-Net run.
    """

    LAST = "last.pt"
    BEST = "best.pt"
    HISTORY = "history.json"
    CONFIG = "config.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CheckpointDir({str(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    def read_history(self) -> list[dict[str, Any]]:
        history = read_json(self.history)
        if not history:
            raise DataError(self.history, "empty training history")
        return history

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        return write_json(self.history, history)

    def write_config(self, config: Mapping[str, Any]) -> Path:
        return write_json(self.config, dict(config))


#: The chapters' notebooks, in the order they run. Each reads only what earlier ones wrote.
NOTEBOOKS = ("01_data", "02_masking", "03_mrnet", "04_gradcam", "05_weighted_unet", "06_evaluation")


class RunDir:
    """Every path of one run directory, and atomic reads and writes of its artifacts."""

    STAMP = "run.json"
    DATA = "data"
    MANIFEST = "manifest.json"
    MASKING = "masking.json"
    CLASSIFIER = "mrnet"
    CLASSIFIER_METRICS = "metrics.json"
    CLASSIFIER_SPLITS = "splits.json"
    CLASSIFIER_PREDICTIONS = "predictions.csv"
    GRADCAM = "gradcam"
    HEATMAPS = "heatmaps.h5"
    TWIN_HEATMAPS = "twin_heatmaps.h5"
    LOCALIZATION = "localization.csv"
    LOCALIZATION_BY_GROUP = "localization_by_group.csv"
    LOCALIZATION_IN_DOMAIN = "localization_kneemri.csv"
    UNET = "unet"
    REGISTRY = "runs.json"
    EVALUATION = "evaluation"
    METRICS = "metrics.csv"
    ROI_BY_KIND = "roi_by_kind.csv"
    SUMMARY = "summary.json"
    RECONSTRUCTIONS = "reconstructions"
    BOOK = "book"
    RUN_INFO = "run_info.md"
    ANSWER = "answer.md"
    SPEED = "speed_measured.md"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------ the stamp
    @property
    def stamp(self) -> Path:
        return self.root / self.STAMP

    def read_stamp(self) -> dict[str, Any]:
        return read_json(self.stamp)

    def write_stamp(self, stamp: Mapping[str, Any]) -> Path:
        return write_json(self.stamp, dict(stamp))

    def result_files(self) -> set[str]:
        """Every JSON and CSV result, relative to the run: what ``mrlib compare`` compares.

        The stamp (it holds the notebooks finished so far) and the book (executed
        notebooks, built pages) are not results; hidden files are temporaries.
        """
        found = set()
        for pattern in ("*.json", "*.csv"):
            for p in self.root.rglob(pattern):
                rel = p.relative_to(self.root)
                if not p.is_file() or any(part.startswith(".") for part in rel.parts):
                    continue
                if rel.as_posix() == self.STAMP or rel.parts[0] == self.BOOK:
                    continue
                found.add(rel.as_posix())
        return found

    # ------------------------------------------------------------------ chapter 1
    @property
    def default_data(self) -> Path:
        """Where chapter 1 generates the synthetic cohorts when no data directory is given."""
        return self.root / self.DATA

    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """Write the manifest with its paths made relative: ``data_dir`` to the run
        directory when the data lie inside it, split directories and data files to
        ``data_dir``."""
        m = dict(manifest)
        data = Path(m["data_dir"]).resolve()
        m["data_dir"] = relative_path(data, self.root.resolve())
        m["splits"] = {s: {**v, "dir": relative_path(Path(v["dir"]).resolve(), data)} for s, v in m["splits"].items()}
        for key in ("annotations", "annotation_file_list", "kneemri"):
            if m.get(key):
                m[key] = relative_path(Path(m[key]).resolve(), data)
        return write_json(self.manifest_path, m)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of chapter 1, with every path resolved against this run directory."""
        if not self.manifest_path.is_file():
            raise DataError(self.manifest_path, "missing; notebook 01_data writes it (run it first)")
        m = read_json(self.manifest_path)
        data = (self.root / m["data_dir"]).resolve()
        m["data_dir"] = str(data)
        m["splits"] = {s: {**v, "dir": str(data / v["dir"])} for s, v in m["splits"].items()}
        for key in ("annotations", "annotation_file_list", "kneemri"):
            if m.get(key):
                m[key] = str(data / m[key])
        return m

    def split_paths(self, role: str, manifest: Mapping[str, Any] | None = None) -> list[Path]:
        """The HDF5 files of one role of the manifest: ``train``, ``selection``,
        ``evaluation`` or ``inference`` (:mod:`mrlib.data.splits`)."""
        manifest = manifest or self.read_manifest()
        paths = role_files(manifest, role)
        if not paths and role != "inference":
            raise DataError(self.manifest_path, f"gives no volume the {role} role "
                                                f"(split policy {manifest.get('split_policy')})")
        return paths

    # ------------------------------------------------------------------ chapter 2
    @property
    def masking_path(self) -> Path:
        return self.root / self.MASKING

    def write_mask_spec(self, spec: MaskSpec, seed: int) -> Path:
        return write_json(self.masking_path, {**spec.to_dict(), "seed": int(seed)})

    def read_mask_spec(self) -> MaskSpec:
        if not self.masking_path.is_file():
            raise DataError(self.masking_path, "missing; notebook 02_masking writes it (run it first)")
        return MaskSpec.from_dict(read_json(self.masking_path))

    # ------------------------------------------------------------------ chapter 3
    def classifier(self, source: str, seed: int = 0) -> CheckpointDir:
        """The checkpoints of ``source``'s classifier trained with ``seed``."""
        return CheckpointDir(self.root / self.CLASSIFIER / str(source) / f"seed{int(seed)}")

    def classifier_metrics(self, source: str) -> Path:
        return self.root / self.CLASSIFIER / str(source) / self.CLASSIFIER_METRICS

    def classifier_splits(self, source: str) -> Path:
        return self.classifier_metrics(source).with_name(self.CLASSIFIER_SPLITS)

    def classifier_predictions(self, source: str) -> Path:
        return self.classifier_metrics(source).with_name(self.CLASSIFIER_PREDICTIONS)

    def write_classifier_results(self, source: str, metrics: Mapping, splits: Mapping, predictions_csv: str) -> None:
        write_json(self.classifier_metrics(source), dict(metrics))
        write_json(self.classifier_splits(source), dict(splits))
        write_text(self.classifier_predictions(source), predictions_csv)

    def read_classifier_metrics(self, source: str) -> dict[str, Any]:
        path = self.classifier_metrics(source)
        if not path.is_file():
            have = self.classifier_sources()
            raise DataError(path, f"missing; notebook 03_mrnet writes it with roi_sources including {source!r} "
                                  f"(this run has: {', '.join(have) or 'none'})")
        return read_json(path)

    def read_classifier_splits(self, source: str) -> dict[str, list[str]]:
        return read_json(self.classifier_splits(source))

    def classifier_sources(self) -> list[str]:
        """The ROI sources whose classifier chapter 3 finished (its metrics are written)."""
        base = self.root / self.CLASSIFIER
        return sorted(p.parent.name for p in base.glob(f"*/{self.CLASSIFIER_METRICS}")) if base.is_dir() else []

    # ------------------------------------------------------------------ chapter 4
    def heatmaps(self, source: str, seed: int = 0, twin: bool = False) -> Path:
        """The maps of ``source``'s classifier ``seed`` (``twin``: on the lesion-free twins)."""
        return self.root / self.GRADCAM / str(source) / f"seed{int(seed)}" / (self.TWIN_HEATMAPS if twin else self.HEATMAPS)

    def localization(self, in_domain: bool = False, by_group: bool = False) -> Path:
        name = self.LOCALIZATION_IN_DOMAIN if in_domain else self.LOCALIZATION_BY_GROUP if by_group else self.LOCALIZATION
        return self.root / self.GRADCAM / name

    def write_localization(self, table, in_domain: bool = False, by_group: bool = False) -> Path:
        return write_text(self.localization(in_domain, by_group), table.to_csv(index=False))

    # ------------------------------------------------------------------ chapter 5
    @property
    def registry(self) -> Path:
        return self.root / self.UNET / self.REGISTRY

    def unet_run(self, key: str, seed: int) -> CheckpointDir:
        """The checkpoint directory of one trained U-Net: ``unet/<variant key>/seed<N>``."""
        return CheckpointDir(self.root / self.UNET / _variant_dir(key) / f"seed{int(seed)}")

    @contextlib.contextmanager
    def _registry_lock(self) -> Iterator[None]:
        lock = self.registry.parent / f".{self.REGISTRY}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_registry(self) -> list[dict[str, Any]]:
        """The trained runs, in the order they were first registered (``[]`` if none)."""
        if not self.registry.is_file():
            return []
        runs = read_json(self.registry)
        if not isinstance(runs, list) or not all(isinstance(r, dict) and "variant" in r and "seed" in r for r in runs):
            raise DataError(self.registry, "expected a list of run configs, each with 'variant' and 'seed'")
        return runs

    def register_run(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Merge one run's config into the registry under a file lock; return the registry.

        A run is identified by ``(variant, seed)``: registering it again replaces its
        entry in place; other runs are kept. Call it from rank 0 only.
        """
        config = dict(config)
        ident = (str(config["variant"]), int(config["seed"]))
        with self._registry_lock():
            runs = self.read_registry()
            for i, r in enumerate(runs):
                if (str(r["variant"]), int(r["seed"])) == ident:
                    runs[i] = config
                    break
            else:
                runs.append(config)
            write_json(self.registry, runs)
        return runs

    # ------------------------------------------------------------------ chapter 6
    @property
    def metrics_csv(self) -> Path:
        return self.root / self.EVALUATION / self.METRICS

    def reconstructions(self, split: str, variant: str, seed: int, acceleration: int) -> Path:
        """One folder of reconstructions in fastMRI's submission layout:
        ``reconstructions/<split>/<variant>/seed<N>/<acceleration>x/``, one ``<file>.h5`` per volume."""
        return (self.root / self.RECONSTRUCTIONS / str(split) / _variant_dir(variant) / f"seed{int(seed)}"
                / f"{int(acceleration)}x")

    def clear_reconstructions(self, split: str) -> None:
        """Remove every reconstruction folder of ``split`` (before an evaluation writes anew,
        so that no folder of an earlier evaluation is scored beside this one's metrics)."""
        shutil.rmtree(self.root / self.RECONSTRUCTIONS / str(split), ignore_errors=True)

    def reconstruction_folders(self, split: str) -> list[tuple[str, int, int, Path]]:
        """``(variant, seed, acceleration, folder)`` of every reconstruction folder of ``split``."""
        base = self.root / self.RECONSTRUCTIONS / str(split)
        found = []
        for folder in sorted(base.glob("*/seed*/*x")) if base.is_dir() else []:
            seed, acc = folder.parent.name[len("seed"):], folder.name[:-1]
            if folder.is_dir() and seed.isdigit() and acc.isdigit():
                found.append((folder.parent.parent.name, int(seed), int(acc), folder))
        return found

    @property
    def summary_json(self) -> Path:
        return self.root / self.EVALUATION / self.SUMMARY

    @property
    def roi_by_kind_csv(self) -> Path:
        """The ROI metrics of each volume restricted to the boxes of one lesion kind
        (:func:`mrlib.evaluate.evaluate`'s ``by_kind``)."""
        return self.root / self.EVALUATION / self.ROI_BY_KIND

    def write_evaluation(self, df, summary: Mapping[str, Any], roi_by_kind=None) -> tuple[Path, Path]:
        """``metrics.csv``, ``summary.json`` and, when given, ``roi_by_kind.csv``."""
        if roi_by_kind is not None:
            write_text(self.roi_by_kind_csv, roi_by_kind.to_csv(index=False))
        return write_text(self.metrics_csv, df.to_csv(index=False)), write_json(self.summary_json, dict(summary))

    def read_roi_by_kind(self):
        """The per-kind ROI metrics chapter 6 wrote (a DataFrame), or ``None`` if it wrote none."""
        return pd.read_csv(self.roi_by_kind_csv) if self.roi_by_kind_csv.is_file() else None

    def read_evaluation(self):
        """``(metrics DataFrame, summary dict)`` as chapter 6 wrote them."""
        if not self.metrics_csv.is_file():
            raise DataError(self.metrics_csv, "missing; notebook 06_evaluation writes it")
        return pd.read_csv(self.metrics_csv), read_json(self.summary_json)

    # ------------------------------------------------------------------ the run's book
    @property
    def book(self) -> Path:
        """The run's own Jupyter Book source: pages, executed notebooks, config, toc."""
        return self.root / self.BOOK

    def executed(self, notebook: str) -> Path:
        """Where the runner writes the executed copy of ``notebook`` (a name of :data:`NOTEBOOKS`)."""
        return self.book / "book" / "notebooks" / f"{notebook}.ipynb"

    @property
    def run_info(self) -> Path:
        """The page included by the book's introduction: what produced this edition."""
        return self.book / "book" / "generated" / self.RUN_INFO

    @property
    def answer(self) -> Path:
        """The page included by the book's introduction: the experiment's computed answer."""
        return self.book / "book" / "generated" / self.ANSWER

    @property
    def speed(self) -> Path:
        """The page included by the book's speed chapter: the committed benchmark results, rendered."""
        return self.book / "book" / "generated" / self.SPEED

    @property
    def book_html(self) -> Path:
        return self.book / "_build" / "html" / "index.html"


def _variant_dir(key: str) -> str:
    """A variant key as one directory name: ``%`` and ``/`` (a user map file's path, as in
    ``gradcam[roi_source=file:/data/maps.h5]``) are percent-encoded, so distinct keys keep
    distinct directories and every other key is its own name."""
    key = str(key)
    if not key or key in (".", ".."):
        raise ParameterError("variant", f"{key!r} cannot name a run directory")
    return key.replace("%", "%25").replace("/", "%2F")


def relative_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies below it, else the absolute path."""
    try:
        return path.relative_to(base).as_posix() or "."
    except ValueError:
        return str(path)


def as_run_dir(run_dir: "str | os.PathLike | RunDir") -> RunDir:
    """A :class:`RunDir` from a path or a RunDir."""
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
