"""Evaluation of the trained U-Nets on the evaluation split: reconstruct, then score.

What notebook 06 and ``python -m mrlib evaluate RUN`` compute, and how:

* **Every trained run** in the run registry (chapter 5) and the zero-filled baseline are
  reconstructed at every acceleration of the run's masking spec (chapter 2), with
  fastMRI's fixed per-file validation mask (:func:`evaluate`).
* **Volume metrics** are fastMRI's (:func:`mrlib.metrics.volume_metrics`), the **ROI
  metrics** the same functions inside the lesion boxes (:func:`mrlib.metrics.roi_metrics`).
* **Does the reconstruction keep the diagnosis?** On synthetic data, the lesion fidelity
  against the lesion-free twin, and the diagnostic AUC: the in-domain classifier on the
  reconstructed lesion slices against the same slices of the twin reconstructed alike.
* **Statistics** are :mod:`mrlib.stats`'s; the tables and sentences :mod:`mrlib.report`'s.

The zero-filled baseline is deterministic, so it gets one row per volume and acceleration
with ``seed = -1`` (not one copy per training seed, which would only repeat the same
numbers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from fastmri.data import transforms as T

from .classifier import load_classifier, prepare_exam
from .data.boxes import Box
from .data.fastmri_h5 import read_stored_mask, read_volume
from .data.manifest import classifier_flip, manifest_boxes, twin_files
from .data.twins import read_twin
from .errors import DataError, ParameterError
from .masking import apply_masks, file_seed, make_masks, zero_filled
from .metrics import (METRICS, ROI_METRICS, ZERO_FILLED, ZERO_FILLED_SEED, diagnostic_auc, lesion_fidelity,
                      roi_metrics, volume_metrics)
from .models import build_unet
from .recon import SliceBank, load_bank, reconstruct, reconstruct_kspace, zero_filled_volume
from .rundir import RunDir, as_run_dir
from .runtime import pick_device, progress_bar
from .stats import comparison, decisive_summary, summarize
from .submission import FolderWriter, score_folder, write_folder
from .train import load_weights
from .variants import make_variant

COLUMNS = ("variant", "acceleration", "seed", "volume", *METRICS, "seconds")
#: Columns of the per-kind ROI table (``RUN/evaluation/roi_by_kind.csv``).
KIND_COLUMNS = ("variant", "acceleration", "seed", "volume", "kind", *ROI_METRICS)


# ------------------------------------------------------------------------------ the runs

def read_runs(run_dir: str | Path | RunDir, variants: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """The trained runs of the registry (chapter 5), filtered by variant key and seed.

    ``None`` or an empty list keeps all. An unknown variant or seed is a
    :class:`ParameterError` that lists what was trained.
    """
    rd = as_run_dir(run_dir)
    runs = rd.read_registry()
    if not runs:
        raise DataError(rd.registry, "missing; notebook 05_weighted_unet writes it when it trains the U-Nets (run it first)")
    trained = list(dict.fromkeys(r["variant"] for r in runs))
    if variants:
        variants = [variants] if isinstance(variants, str) else list(variants)
        named = {v: runs_named(v, runs) for v in variants}
        unknown = [v for v, rs in named.items() if not rs]
        if unknown:
            raise ParameterError("variants", f"{', '.join(map(repr, unknown))} not trained in {rd.registry}; "
                                             f"trained: {', '.join(trained) or 'none'}")
        runs = [r for r in runs if any(r in rs for rs in named.values())]
    if seeds:
        seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
        have = sorted({int(r["seed"]) for r in runs})
        unknown = [s for s in seeds if s not in have]
        if unknown:
            raise ParameterError("seeds", f"{unknown} not trained in {rd.registry}; trained seeds: {have}")
        runs = [r for r in runs if int(r["seed"]) in seeds]
    return runs


def load_run(run_dir: str | Path | RunDir, run: Mapping[str, Any], device) -> torch.nn.Module:
    """Build the network a run config names and load the checkpoint its rule names (eval
    mode): ``last`` or ``best`` (:attr:`mrlib.config.UnetConfig.checkpoint`; runs recorded
    before the rule existed used ``best``)."""
    ckpts = as_run_dir(run_dir).unet_run(run["variant"], run["seed"])
    path = ckpts.last if run.get("checkpoint", "best") == "last" else ckpts.best
    if not path.is_file():
        raise DataError(path, f"checkpoint of run {run['variant']}/seed{run['seed']} is missing; "
                              "notebook 05_weighted_unet writes it")
    model = build_unet(run.get("model", "unet"), chans=int(run.get("chans", 32)),
                       num_pool_layers=int(run.get("pools", 4)))
    load_weights(model, path)
    return model.to(device).eval()


def run_precision(run: Mapping[str, Any]) -> str:
    """The arithmetic a run trained with, which its inference uses too (runs recorded before
    precision was: ``fp32``)."""
    return run.get("precision", "fp32")


def read_evaluation_split(run_dir: str | Path | RunDir) -> tuple[dict, list[Path], pd.DataFrame | None]:
    """The manifest, the evaluation volumes' paths and the boxes (image coordinates, or None)."""
    rd = as_run_dir(run_dir)
    manifest = rd.read_manifest()
    return manifest, rd.split_paths("evaluation", manifest), manifest_boxes(manifest)


def names_run(key: str, run: Mapping[str, Any]) -> bool:
    """Does ``key`` name ``run``? Either it is the run's key, or the key it becomes under the
    run's own parameters: ``gradcam`` names ``gradcam[alpha=50]`` in a run with ``alpha=50``,
    and not ``gradcam[alpha=4]``, trained beside it with an explicit alpha."""
    if key == run["variant"]:
        return True
    try:
        return make_variant(key, run).key == run["variant"]
    except ParameterError:  # not a variant at all: it names no run
        return False


def runs_named(key: str, runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs ``key`` names: those whose key it is, if any; else those it names under their
    own parameters (:func:`names_run`). A full key never also picks a run it names only
    through the run's parameters, e.g. the matched Grad-CAM arm's key does not pick
    the same arm with ``roi_source=kneemri`` trained beside it."""
    exact = [r for r in runs if r["variant"] == key]
    return exact or [r for r in runs if names_run(key, r)]


def first_seeds(runs: Sequence[Mapping[str, Any]], variants: Iterable[str] | None = None) -> set[tuple[str, int]]:
    """``{(variant, seed)}``: the first trained seed of each variant (of ``variants``, each
    as :func:`runs_named` reads it; None: all)."""
    wanted = None if variants is None else [r for v in variants for r in runs_named(v, runs)]
    out: dict[str, int] = {}
    for r in runs:
        if wanted is None or r in wanted:
            out.setdefault(r["variant"], int(r["seed"]))
    return set(out.items())


def boxes_by_slice(boxes: pd.DataFrame | None, stem: str) -> dict[int, list[Box]]:
    """``{slice: [Box, ...]}`` of one volume (empty without annotations)."""
    if boxes is None:
        return {}
    sel = boxes[boxes["file"] == stem]
    return {int(s): [Box(int(r.x), int(r.y), int(r.width), int(r.height), str(r.label)) for r in g.itertuples(index=False)]
            for s, g in sel.groupby("slice", sort=True)}


# ------------------------------------------------------------------------------ the diagnosis

class Detector(NamedTuple):
    """One in-domain classifier of chapter 3 (``roi_source = fastmri``), as the diagnostic
    AUC uses it: its seed, the model in eval mode, its input size and whether slices are flipped."""

    seed: int
    model: torch.nn.Module
    input_size: int
    flip_ud: bool

    def scores(self, volume: np.ndarray, slices: Sequence[int], twin_slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logits of ``slices`` of ``volume (S, H, W)`` and of ``twin_slices (L, H, W)``,
        the same L slices of the twin: ``((L,), (L,))``. Both are prepared as one exam
        (:func:`~mrlib.classifier.prepare_exam`, one min-max scaling over the volume and
        the twin's slices), so the lesion is the only difference the classifier sees."""
        volume, twin_slices = np.asarray(volume), np.asarray(twin_slices)
        x = prepare_exam(np.concatenate([volume, twin_slices]), flip_ud=self.flip_ud, size=self.input_size)
        rows = [*slices, *range(len(volume), len(volume) + len(twin_slices))]
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model.slice_logits(x[rows].to(device))[:, 0].float().cpu().numpy()
        return logits[:len(slices)], logits[len(slices):]


def detectors(rd: RunDir, manifest: Mapping[str, Any], device: torch.device) -> list[Detector]:
    """The in-domain classifier of every classifier seed (empty when chapter 3 trained none)."""
    if "fastmri" not in rd.classifier_sources():
        return []
    metrics = rd.read_classifier_metrics("fastmri")
    flip = classifier_flip(manifest, "fastmri")
    return [Detector(int(m["seed"]), load_classifier(rd, "fastmri", int(m["seed"]), device), int(metrics["input_size"]),
                     flip) for m in metrics.get("seeds", [])]


def target_diagnosis(run_dir: str | Path | RunDir, device: str = "cpu") -> pd.DataFrame:
    """The diagnostic AUC's ceiling: each in-domain classifier on the fully sampled targets of
    the evaluation split's lesion volumes against their lesion-free twins' targets, scored as
    :func:`evaluate` scores a reconstruction. One row per classifier seed: ``classifier_seed``,
    ``n_volumes``, ``diagnostic_auc`` (the mean over volumes). Empty without twins or classifier."""
    rd = as_run_dir(run_dir)
    manifest, paths, boxes = read_evaluation_split(rd)
    twin_paths = twin_files(manifest)
    dets = detectors(rd, manifest, pick_device(device))
    per_seed: dict[int, list[float]] = {det.seed: [] for det in dets}
    for path in paths:
        rois = boxes_by_slice(boxes, path.stem)
        if not rois or path.stem not in twin_paths or not dets:
            continue
        target, slices = read_volume(path)[1], sorted(rois)
        twin = read_twin(twin_paths[path.stem]).twin[slices]
        for det in dets:
            per_seed[det.seed].append(diagnostic_auc(*det.scores(target, slices, twin)))
    return pd.DataFrame([dict(classifier_seed=s, n_volumes=len(v), diagnostic_auc=float(np.mean(v)))
                         for s, v in per_seed.items() if v], columns=["classifier_seed", "n_volumes", "diagnostic_auc"])


# ------------------------------------------------------------------------------ evaluate

def evaluate(
    run_dir: str | Path,
    variants: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    save_variants: Iterable[str] = (),
    by_kind: list | None = None,
) -> pd.DataFrame:
    """Reconstruct the evaluation split at every acceleration and score every volume.

    Args:
        run_dir: the run directory (manifest from notebook 01, ``masking.json`` from 02,
            ``unet/runs.json`` and checkpoints from 05).
        variants, seeds: trained runs to evaluate (``None`` or empty: all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: slices per forward pass.
        progress: show a ``tqdm.auto`` bar.
        save_variants: variant keys whose first seed's reconstructions are also written
            in fastMRI's layout (:meth:`RunDir.reconstructions`, split = the manifest's
            ``evaluation_split``); every variant and seed would take tens of GB on real data.
        by_kind: a list to extend with the ROI metrics of each (variant, acceleration,
            seed, volume) restricted to the boxes of each lesion kind the volume holds, as
            dicts with the keys :data:`KIND_COLUMNS`.

    Returns:
        One row per (variant, acceleration, seed, volume), columns :data:`COLUMNS`. The
        zero-filled baseline is variant ``"zero-filled"`` with ``seed = -1`` (it is
        deterministic). ``seconds`` is the reconstruction time of the volume (masking,
        network, un-normalising; for zero-filled, masking and the inverse FFT). ROI
        columns are NaN for a volume with no lesion box; ``df.attrs["no_boxes"]`` lists
        those volumes and a line is printed. ``lesion_fidelity``
        (:func:`mrlib.metrics.lesion_fidelity`) needs the volume's lesion-free twin
        (synthetic data) and is NaN without one. ``diagnostic_auc``
        (:func:`mrlib.metrics.diagnostic_auc`) also needs the twin's k-space, whose lesion
        slices are reconstructed with the volume's own mask, and chapter 3's in-domain
        classifier (:meth:`Detector.scores`): U-Net seed s is read by classifier seed s mod
        their number, zero filling by the first.

    Raises:
        DataError: a missing ``runs.json``, ``masking.json``, manifest or checkpoint
            (naming the file and the notebook that writes it).
        ParameterError: a variant or seed that was not trained.
        MrlibError: a checkpoint that does not fit the network its config names.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError("batch_size", f"must be a positive integer, got {batch_size!r}")
    rd = as_run_dir(run_dir)
    runs = read_runs(run_dir, variants, seeds)
    spec = rd.read_mask_spec()
    manifest, paths, boxes = read_evaluation_split(run_dir)
    saved = first_seeds(runs, save_variants)
    device = pick_device(device) if isinstance(device, str) else device
    models = [(run, load_run(run_dir, run, device)) for run in runs]  # fail early on a bad checkpoint
    if saved:
        rd.clear_reconstructions(manifest["evaluation_split"])
    bank = load_bank(paths, device)  # in memory when it fits, else streamed from disk
    stems = list(bank.volumes)
    gts = {stem: bank.target[bank.volumes[stem]].cpu().numpy() for stem in stems}
    rois = {stem: boxes_by_slice(boxes, stem) for stem in stems}
    twin_paths = twin_files(manifest)  # synthetic data only: the lesion-free twins
    twins = {stem: read_twin(twin_paths[stem]) for stem in stems if stem in twin_paths}
    # the diagnosis kept: the lesion slices of the twins' own k-space (synthetic evaluation
    # split), reconstructed alike, and the in-domain classifiers
    twin_kspace = {stem: T.to_tensor(tw.kspace[sorted(rois[stem])]) for stem, tw in twins.items()
                   if tw.kspace is not None and rois[stem]}
    dets = detectors(rd, manifest, device) if twin_kspace else []

    def diagnosis(seed, stem, recon, twin_recon):
        """:func:`~mrlib.metrics.diagnostic_auc` of one reconstruction, by the classifier of
        seed ``seed`` mod their number (the one whose maps weighted U-Net seed ``seed``)."""
        if twin_recon is None or not dets:
            return float("nan")
        det = dets[max(int(seed), 0) % len(dets)]
        return diagnostic_auc(*det.scores(recon, sorted(rois[stem]), twin_recon))

    def twin_masks(stem, func):  # the volume's own fixed mask (one per file, the same on every slice)
        return make_masks(func, twin_kspace[stem].shape, [file_seed(f"{stem}.h5")] * twin_kspace[stem].shape[0])

    kinds = {stem: sorted({b.label for bs in rois[stem].values() for b in bs}) for stem in stems}
    rows, kind_rows = [], []

    def score(variant, acc, seed, stem, recon, seconds, twin_recon=None):
        gt = gts[stem]
        row = dict(variant=variant, acceleration=int(acc), seed=int(seed), volume=stem)
        row.update(volume_metrics(gt, recon, where=f"{variant} {stem}"))
        row.update(roi_metrics(gt, recon, rois[stem], maxval=float(gt.max())))
        for label in kinds[stem]:
            if len(kinds[stem]) == 1:  # one kind: its boxes are all the boxes, already scored
                scores = {k: row[k] for k in ROI_METRICS}
            else:
                only = {s: [b for b in bs if b.label == label] for s, bs in rois[stem].items()}
                scores = roi_metrics(gt, recon, {s: b for s, b in only.items() if b}, maxval=float(gt.max()))
            kind_rows.append(dict(variant=variant, acceleration=int(acc), seed=int(seed), volume=stem, kind=label,
                                  **scores))
        tw = twins.get(stem)
        row["lesion_fidelity"] = (lesion_fidelity(gt, recon, tw.twin, tw.masks.any(axis=0)) if tw is not None
                                  else float("nan"))
        row["diagnostic_auc"] = diagnosis(seed, stem, recon, twin_recon)
        row["seconds"] = float(seconds)
        rows.append(row)

    total = len(spec.accelerations) * len(stems) * (1 + len(models))
    with progress_bar(total=total, desc="evaluate", unit="volume", progress=progress) as bar:
        for acc in spec.accelerations:
            func = spec.mask_func(acc)
            for stem in stems:
                start = time.perf_counter()
                zf = zero_filled_volume(bank, stem, func)
                seconds = time.perf_counter() - start
                zf_twin = (zero_filled(apply_masks(twin_kspace[stem], twin_masks(stem, func)), bank.crop).cpu().numpy()
                           if stem in twin_kspace and dets else None)
                score(ZERO_FILLED, acc, ZERO_FILLED_SEED, stem, zf, seconds, zf_twin)
                bar.update(1)
            for run, model in models:
                bar.set_postfix_str(f"{run['variant']} seed {run['seed']} {acc}x")
                keep = (run["variant"], int(run["seed"])) in saved
                written = {}
                for stem in stems:
                    recon, seconds = reconstruct(model, bank, stem, func, batch_size=batch_size,
                                                 precision=run_precision(run))
                    twin_recon = (reconstruct_kspace(model, twin_kspace[stem], twin_masks(stem, func), bank.crop,
                                                     batch_size, run_precision(run))[0]
                                  if stem in twin_kspace and dets else None)
                    score(run["variant"], acc, run["seed"], stem, recon, seconds, twin_recon)
                    if keep:
                        written[stem] = recon
                    bar.update(1)
                if keep:
                    write_folder(rd.reconstructions(manifest["evaluation_split"], run["variant"], run["seed"], acc),
                                 written)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if by_kind is not None:
        by_kind.extend(kind_rows)
    df.attrs["no_boxes"] = [s for s in stems if not rois[s]]
    n = len(df.attrs["no_boxes"])
    if 0 < n < len(stems):  # none at all: summarize() says so
        print(f"{n} of {len(stems)} evaluation volumes hold no annotated lesion ({', '.join(df.attrs['no_boxes'])}): "
              "their ROI metrics are NaN and are left out of the ROI means")
    return df


def infer(
    run_dir: str | Path | RunDir,
    variants: Iterable[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Reconstruct the inference volumes (the real test split) and write them; score nothing.

    Every trained variant (of ``variants``; None: all) reconstructs each volume with its
    first seed. A file that stores its mask (the real test split: k-space already
    undersampled) is reconstructed once, with that mask, into the folder of its own
    ``acceleration``; a file without one at each acceleration of the run's masking spec,
    with fastMRI's fixed per-file mask. Folders: :meth:`RunDir.reconstructions` with the
    file's split.

    Returns:
        One row per (variant, seed, acceleration, volume): ``seconds`` and ``folder``.
    """
    rd = as_run_dir(run_dir)
    manifest = rd.read_manifest()
    paths = rd.split_paths("inference", manifest)
    columns = ["variant", "seed", "acceleration", "volume", "seconds", "folder"]
    if not paths:
        return pd.DataFrame(columns=columns)
    runs = read_runs(rd, variants)
    spec = rd.read_mask_spec()
    device = pick_device(device) if isinstance(device, str) else device
    chosen = sorted(first_seeds(runs))
    chosen_runs = [next(r for r in runs if r["variant"] == v and int(r["seed"]) == s) for v, s in chosen]
    models = [(r["variant"], int(r["seed"]), load_run(rd, r, device), run_precision(r)) for r in chosen_runs]
    entries = {f["name"]: f for split in manifest["splits"].values() for f in split["files"]}
    split_of = {a["file"]: a["split"] for a in manifest["roles"]}
    writers: dict[tuple[str, int, str, int], FolderWriter] = {}
    rows = []
    try:
        with progress_bar(total=len(models) * len(paths), desc="inference", unit="volume", progress=progress) as bar:
            for path in paths:  # one volume in memory at a time
                kspace = T.to_tensor(read_volume(path)[0])
                crop = tuple(entries[path.name]["recon_size"])
                stored = read_stored_mask(path)
                if stored is not None:  # the real test split: undersampled with this mask
                    acc = int(entries[path.name]["acceleration"] or round(len(stored) / max(1, int(stored.sum()))))
                    masks = {acc: torch.as_tensor(stored, dtype=torch.float32).reshape(1, 1, -1, 1)
                             .expand(kspace.shape[0], -1, -1, -1)}
                else:
                    masks = {acc: make_masks(spec.mask_func(acc), kspace.shape, [file_seed(path.name)] * kspace.shape[0])
                             for acc in spec.accelerations}
                for variant, seed, model, precision in models:
                    for acc, mask in masks.items():
                        recon, seconds = reconstruct_kspace(model, kspace, mask, crop, batch_size, precision)
                        key = (variant, seed, split_of[path.name], acc)
                        if key not in writers:
                            writers[key] = FolderWriter(rd.reconstructions(key[2], variant, seed, acc))
                        writers[key].add(path.stem, recon)
                        rows.append(dict(variant=variant, seed=seed, acceleration=acc, volume=path.stem,
                                         seconds=seconds, folder=str(writers[key].folder.relative_to(rd.root))))
                    bar.update(1)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    for writer in writers.values():
        writer.commit()
    return pd.DataFrame(rows, columns=columns)


def score_saved(run_dir: str | Path | RunDir) -> pd.DataFrame:
    """fastMRI's own evaluation of every evaluation-split folder :func:`evaluate` wrote.

    Returns one row per folder: ``variant, seed, acceleration, volumes`` and fastMRI's
    ``NMSE, PSNR, SSIM`` means, to set beside the means of ``metrics.csv``.
    """
    rd = as_run_dir(run_dir)
    manifest = rd.read_manifest()
    targets = rd.split_paths("evaluation", manifest)
    rows = []
    for variant, seed, acc, folder in rd.reconstruction_folders(manifest["evaluation_split"]):
        scores = score_folder(folder, targets, manifest["challenge"])
        rows.append(dict(variant=variant, seed=seed, acceleration=acc, volumes=len(targets),
                         **{k.lower(): v for k, v in scores.items() if k != "MSE"}))
    return pd.DataFrame(rows, columns=["variant", "seed", "acceleration", "volumes", "nmse", "psnr", "ssim"])


def volume_reconstructions(
    run_dir: str | Path,
    stem: str,
    acceleration: int,
    variants: Iterable[str] | None = None,
    seed: int | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, list[tuple]]]:
    """One evaluation volume's target, its reconstructions and its boxes, for figures.

    Returns:
        ``(target (S, h, w), {"zero-filled": ..., variant: ...}, boxes_by_slice)``; for each
        variant the run with ``seed`` (default: the variant's first trained seed).
    """
    runs = read_runs(run_dir, variants)
    spec = as_run_dir(run_dir).read_mask_spec()
    _, paths, boxes = read_evaluation_split(run_dir)
    path = {p.stem: p for p in paths}.get(stem)
    if path is None:
        raise ParameterError("stem", f"{stem!r} is not an evaluation volume; evaluation volumes: "
                                     f"{', '.join(p.stem for p in paths)}")
    device = pick_device(device) if isinstance(device, str) else device
    bank = SliceBank([path], device)
    func = spec.mask_func(int(acceleration))
    recons = {ZERO_FILLED: zero_filled_volume(bank, stem, func)}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        run = next((r for r in mine if seed is None or int(r["seed"]) == int(seed)), None)
        if run is None:
            raise ParameterError("seed", f"variant {variant!r} has no run with seed {seed}")
        recons[variant] = reconstruct(load_run(run_dir, run, device), bank, stem, func, batch_size,
                                      precision=run_precision(run))[0]
    return bank.target.cpu().numpy(), recons, boxes_by_slice(boxes, stem)


def evaluate_run(
    run_dir: str | Path | RunDir,
    variants: Iterable[str] | None = None,
    reference: str = "unweighted",
    write: bool = True,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    save_variants: Iterable[str] = (),
    declared: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Chapter 6's computation: :func:`evaluate`, :func:`mrlib.stats.summarize`, and both
    (with the per-kind ROI metrics) written to the run directory when ``write`` (``mrlib evaluate RUN`` calls this too),
    with the reconstructions of ``save_variants`` (first seed) in fastMRI's layout.

    With ``declared`` (:func:`mrlib.pipeline.declared_comparisons`), the summary also holds
    the confirmatory entries of :func:`mrlib.stats.decisive_summary` (``positive_control``,
    ``primary``, ``unet_vs_zero_filled``, ``exploratory``), each arm's strength read from
    chapter 5's registry (:func:`strengths`).

    Returns ``(metrics per volume, summary)``.
    """
    rd = as_run_dir(run_dir)
    by_kind: list[dict[str, Any]] = []
    df = evaluate(rd, variants or None, device=device, batch_size=batch_size, progress=progress,
                  save_variants=save_variants if write else (), by_kind=by_kind)
    summary = summarize(df, reference=reference)
    if declared:
        arms = [declared[k] for k in ("reference", "positive_control", "primary")]
        absent = [a for a in arms if a not in set(df["variant"])]
        if absent:
            summary["notes"].append(f"no confirmatory result: the declared arm(s) {', '.join(absent)} were not "
                                    "trained or not evaluated in this run")
        else:
            summary.update(decisive_summary(df, declared, strengths(rd.read_registry())))
    if write:
        rd.write_evaluation(df, summary, pd.DataFrame(by_kind, columns=list(KIND_COLUMNS)))
    return df, summary


def roi_breakdown(df: pd.DataFrame, by_kind: pd.DataFrame | None, acquisitions: Mapping[str, str],
                  reference: str = "unweighted", metric: str = "roi_psnr") -> pd.DataFrame:
    """Each arm against ``reference``, and ``reference`` against zero filling, on ``metric``
    within groups of volumes and boxes: by
    acquisition (each volume's ROI metric, grouped by its ``acquisitions[volume]``) and by
    lesion kind (``by_kind``: the metric over the boxes of that kind alone). Exploratory:
    one :func:`mrlib.stats.comparison` (two-way bootstrap over seeds and volumes) per cell,
    no adjustment, n in every row.

    Returns:
        one row per (group, variant, acceleration): ``group``, ``variant``, ``reference``,
        ``acceleration``, ``n_volumes``, ``n_seeds``, ``mean`` (the arm's metric), ``diff``,
        ``low``, ``high``.
    """
    groups = [(f"acquisition: {a}", df[df["volume"].map(acquisitions) == a]) for a in sorted(set(acquisitions.values()))]
    if by_kind is not None and len(by_kind):
        groups += [(f"kind: {k}", g) for k, g in by_kind.groupby("kind", sort=True)]
    pairs = [(reference, ZERO_FILLED)] + [(v, reference) for v in dict.fromkeys(df["variant"])
                                          if v not in (reference, ZERO_FILLED)]
    rows = []
    for group, g in groups:
        for acc in sorted(g["acceleration"].unique()):
            at = g[g["acceleration"] == acc]
            for arm, ref in pairs:
                if not ((at["variant"] == arm).any() and (at["variant"] == ref).any()):
                    continue
                c = comparison(g, arm, ref, metric, int(acc))
                rows.append(dict(group=group, variant=arm, reference=ref, acceleration=int(acc),
                                 n_volumes=c["n_volumes"], n_seeds=c["n_seeds"],
                                 mean=float(at[at["variant"] == arm][metric].mean()), diff=c["diff"], low=c["ci"][0],
                                 high=c["ci"][1]))
    return pd.DataFrame(rows, columns=["group", "variant", "reference", "acceleration", "n_volumes", "n_seeds", "mean",
                                       "diff", "low", "high"])


def strengths(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Each variant's weighting strength, from chapter 5's registry: ``alpha`` and
    ``weight_share`` (the share of the loss weight inside the true boxes on the training
    bank's lesion slices, :func:`mrlib.variants.weight_stats`; the mean over seeds)."""
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == key]
        shares = [r["weight_share"] for r in mine if r.get("weight_share") is not None]
        out[key] = {"alpha": float(mine[0].get("alpha", 0.0)),
                    "weight_share": float(np.mean(shares)) if shares else None}
    return out


def final_losses(run_dir: str | Path, runs: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The report's Table 1 per run: final train and validation loss from each run's training history.

    Columns: ``variant, seed, loss, epochs, train_loss, val_loss, val_mse, best_val_loss``
    (the last epoch's values, and the lowest validation loss). ``loss`` names each run's
    own training loss, which differs between variants (weighted MSE, L1): compare
    ``val_mse`` across variants, not ``val_loss``.
    """
    runs = read_runs(run_dir) if runs is None else runs
    rows = []
    for run in runs:
        history = as_run_dir(run_dir).unet_run(run["variant"], run["seed"]).read_history()
        last = history[-1]
        rows.append(dict(variant=run["variant"], seed=int(run["seed"]), loss=run.get("loss"),
                         epochs=int(last.get("epoch", len(history))), train_loss=last.get("train_loss"),
                         val_loss=last.get("val_loss"), val_mse=last.get("val_mse"),
                         best_val_loss=min(h.get("val_loss", float("inf")) for h in history)))
    return pd.DataFrame(rows, columns=["variant", "seed", "loss", "epochs", "train_loss", "val_loss",
                                       "val_mse", "best_val_loss"])
