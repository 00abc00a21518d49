"""Evaluation of the trained U-Nets on the test split: fastMRI metrics, ROI metrics, statistics.

What notebook 06 computes, and how:

* **Volume metrics** are fastMRI's (:func:`mrlib.metrics.volume_metrics`, i.e.
  ``fastmri.evaluate``): NMSE, and PSNR and SSIM with the volume's maximum as data range.
* **ROI metrics** (:func:`roi_metrics`) are the same functions restricted to the
  ground-truth lesion boxes (fastMRI+ format): NMSE and PSNR over the pixels of the union
  of the boxes of all annotated slices of the volume, SSIM as the mean over boxes of the
  SSIM of each box crop (enlarged to skimage's 7 x 7 window where smaller).
* **Every trained run** listed in ``RUN/unet/runs.json`` (notebook 05) and the zero-filled
  baseline are reconstructed at every acceleration of ``RUN/masking.json`` (notebook 02),
  with fastMRI's fixed per-file validation mask (:func:`evaluate`).
* **Statistics** (:func:`summarize`): the unit of analysis is the test *volume*. Each
  volume's metric is first averaged over training seeds; means and t-intervals are taken
  over volumes, and variants are compared with the reference volume by volume (paired
  differences, a t-interval of the mean difference and the Wilcoxon signed-rank test).

The zero-filled baseline is deterministic, so it gets one row per volume and acceleration
with ``seed = -1`` (not one copy per training seed, which would only repeat the same
numbers). Pairing is by volume after averaging over seeds, so it pairs with every variant.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from fastmri import evaluate as fm_eval
from skimage.metrics import structural_similarity

from .artifacts import read_json, write_json, write_text
from .errors import DataError, ParameterError
from .masking import read_mask_spec  # noqa: F401 - also used by notebook 06 as ev.read_mask_spec
from .metrics import volume_metrics

COLUMNS = ("variant", "acceleration", "seed", "volume", "nmse", "psnr", "ssim",
           "roi_nmse", "roi_psnr", "roi_ssim", "seconds")
METRICS = ("nmse", "psnr", "ssim", "roi_nmse", "roi_psnr", "roi_ssim")
ROI_METRICS = ("roi_nmse", "roi_psnr", "roi_ssim")
ZERO_FILLED = "zero-filled"
ZERO_FILLED_SEED = -1
VARIANTS = ("unweighted", "gradcam", "oracle", "random", "l1")
#: which direction is better, for the sentences that read the comparisons
HIGHER_IS_BETTER = {"nmse": False, "psnr": True, "ssim": True,
                    "roi_nmse": False, "roi_psnr": True, "roi_ssim": True}
NO_ROI = "no annotated lesion in the test split: ROI metrics not computed"
SSIM_WINDOW = 7  # skimage.metrics.structural_similarity's default win_size
FEW_VOLUMES = 6  # below this the exact Wilcoxon test cannot reach p < 0.05 (min p = 2 / 2**n)


# ----------------------------------------------------------------------------- ROI metrics

def _clip_box(box: Sequence, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of a box ``(x, y, w, h, ...)`` clipped to the image, or None if empty."""
    if len(box) < 4:
        raise ParameterError("boxes", f"a box is (x, y, width, height, ...), got {tuple(box)!r}")
    x, y, w, h = (int(v) for v in box[:4])
    if w < 0 or h < 0:
        raise ParameterError("boxes", f"box {tuple(box)!r} has a negative width or height")
    y0, y1 = max(y, 0), min(y + h, shape[0])
    x0, x1 = max(x, 0), min(x + w, shape[1])
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


def _grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` symmetrically to at least ``size``, shifted to stay in ``[0, limit)``."""
    extra = size - (hi - lo)
    if extra > 0:
        lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), min(hi, limit)


def ssim_window(box: Sequence, shape: tuple[int, int], size: int = SSIM_WINDOW) -> tuple[int, int, int, int] | None:
    """The crop ``(y0, y1, x0, x1)`` on which a box's SSIM is taken.

    The box clipped to the image, enlarged symmetrically to at least ``size`` x ``size``
    (skimage's SSIM window) and, where that would cross the image edge, shifted inward so
    that it stays ``size`` wide. ``None`` for a box with no pixel in the image.
    """
    clipped = _clip_box(box, shape)
    if clipped is None:
        return None
    y0, y1, x0, x1 = clipped
    y0, y1 = _grow(y0, y1, size, shape[0])
    x0, x1 = _grow(x0, x1, size, shape[1])
    return y0, y1, x0, x1


def roi_mask(shape: tuple[int, ...], boxes_by_slice: Mapping[int, Sequence[Sequence]]) -> np.ndarray:
    """Boolean ``(S, H, W)`` mask of the union of the boxes of every annotated slice."""
    mask = np.zeros(shape, dtype=bool)
    for s, boxes in boxes_by_slice.items():
        s = int(s)
        if not 0 <= s < shape[0]:
            raise DataError("boxes", f"annotated slice {s} is beyond the volume's {shape[0]} slices")
        for box in boxes:
            clipped = _clip_box(box, shape[1:])
            if clipped is not None:
                y0, y1, x0, x1 = clipped
                mask[s, y0:y1, x0:x1] = True
    return mask


def roi_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    boxes_by_slice: Mapping[int, Sequence[Sequence]],
    maxval: float | None = None,
) -> dict[str, float]:
    """NMSE, PSNR and SSIM inside the ground-truth lesion boxes of one volume.

    Args:
        gt: fully sampled target ``(S, H, W)``.
        pred: reconstruction, same shape.
        boxes_by_slice: ``{slice index: [(x, y, width, height, ...), ...]}`` in image
            coordinates (:func:`mrlib.data.annotations.read_boxes`); boxes are clipped to
            the image.
        maxval: the data range for PSNR and SSIM; ``None`` takes ``gt.max()``, the whole
            volume's maximum, as ``fastmri.evaluate`` does (not the maximum inside the
            boxes, so ROI and volume PSNR are on one scale).

    Returns:
        ``{"roi_nmse", "roi_psnr", "roi_ssim"}``:

        * ``roi_nmse`` and ``roi_psnr``: ``fastmri.evaluate.nmse`` / ``psnr`` of the pixels
          inside the union of all boxes of all annotated slices, pooled over the volume
          (a volume-wise ROI metric, like fastMRI's volume-wise metrics);
        * ``roi_ssim``: the mean over boxes of ``structural_similarity`` (as
          ``fastmri.evaluate.ssim`` calls it: 7 x 7 window, ``data_range=maxval``) on each
          box's crop. A box smaller than 7 x 7 is enlarged symmetrically to 7 x 7 (shifted
          inward at the image edge, :func:`ssim_window`), so for such a box SSIM also
          reads the few pixels of that 7 x 7 window; NMSE and PSNR read box pixels only.

        All three are NaN when the volume has no box with a pixel in the image; the caller
        records why (:func:`summarize` says so in ``summary["roi"]``).
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise DataError("roi_metrics", f"expected two (slices, h, w) volumes of one shape, got {gt.shape} and {pred.shape}")
    nan = {k: float("nan") for k in ROI_METRICS}
    mask = roi_mask(gt.shape, boxes_by_slice or {})
    if not mask.any():
        return nan
    maxval = float(gt.max()) if maxval is None else float(maxval)
    g, p = gt[mask], pred[mask]
    out = {
        "roi_nmse": float(np.asarray(fm_eval.nmse(g, p))) if np.any(g) else float("nan"),
        "roi_psnr": float(np.asarray(fm_eval.psnr(g, p, maxval=maxval))),
    }
    ssims = []
    h, w = gt.shape[1:]
    for s, boxes in boxes_by_slice.items():
        for box in boxes:
            win = ssim_window(box, (h, w))
            if win is None:
                continue
            y0, y1, x0, x1 = win
            if min(y1 - y0, x1 - x0) < SSIM_WINDOW:
                raise DataError("roi_metrics", f"the image ({h}x{w}) is smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
            ssims.append(structural_similarity(gt[int(s), y0:y1, x0:x1], pred[int(s), y0:y1, x0:x1], data_range=maxval))
    out["roi_ssim"] = float(np.mean(ssims))
    return out


# ------------------------------------------------------------------------------ the runs

def read_runs(run_dir: str | Path, variants: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """The trained runs (``RUN/unet/runs.json``, notebook 05), filtered by variant and seed.

    ``None`` or an empty list keeps all. An unknown variant or seed is a
    :class:`ParameterError` that lists what was trained.
    """
    path = Path(run_dir) / "unet" / "runs.json"
    if not path.is_file():
        raise DataError(path, "missing; notebook 05_weighted_unet writes it when it trains the U-Nets (run it first)")
    runs = read_json(path)
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "variant" in r and "seed" in r for r in runs):
        raise DataError(path, "expected a list of run configs, each with 'variant' and 'seed'")
    trained = sorted({r["variant"] for r in runs})
    if variants:
        variants = [variants] if isinstance(variants, str) else list(variants)
        unknown = [v for v in variants if v not in trained]
        if unknown:
            raise ParameterError("variants", f"{', '.join(map(repr, unknown))} not trained in {path}; "
                                             f"trained: {', '.join(trained) or 'none'}")
        runs = [r for r in runs if r["variant"] in variants]
    if seeds:
        seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
        have = sorted({int(r["seed"]) for r in runs})
        unknown = [s for s in seeds if s not in have]
        if unknown:
            raise ParameterError("seeds", f"{unknown} not trained in {path}; trained seeds: {have}")
        runs = [r for r in runs if int(r["seed"]) in seeds]
    return runs


def checkpoint_path(run_dir: str | Path, run: Mapping[str, Any]) -> Path:
    """``RUN/unet/{variant}/seed{seed}/best.pt``."""
    return Path(run_dir) / "unet" / str(run["variant"]) / f"seed{int(run['seed'])}" / "best.pt"


def load_run(run_dir: str | Path, run: Mapping[str, Any], device) -> "torch.nn.Module":
    """Build the network a run config names and load its best checkpoint (eval mode)."""
    from .models import build_unet
    from .train import load_weights

    path = checkpoint_path(run_dir, run)
    if not path.is_file():
        raise DataError(path, f"checkpoint of run {run['variant']}/seed{run['seed']} is missing; "
                              "notebook 05_weighted_unet writes it")
    model = build_unet(run.get("model", "unet"), chans=int(run.get("chans", 32)),
                       num_pool_layers=int(run.get("pools", 4)))
    load_weights(model, path)
    return model.to(device).eval()


def read_test_split(run_dir: str | Path) -> tuple[dict, list[Path], pd.DataFrame | None]:
    """The manifest, the test volumes' paths and the boxes (image coordinates, or None)."""
    from .data import annotations
    from .data import manifest as mf

    if not (Path(run_dir) / mf.MANIFEST).is_file():
        raise DataError(Path(run_dir) / mf.MANIFEST, "missing; notebook 01_data writes it (run it first)")
    manifest = mf.read_manifest(run_dir)
    split = manifest.get("splits", {}).get("test")
    if not split or not split.get("files"):
        raise DataError(Path(run_dir) / mf.MANIFEST, "has no test split to evaluate on")
    paths = [Path(split["dir"]) / f["name"] for f in split["files"]]
    boxes = None
    if manifest.get("annotations"):
        boxes = annotations.read_boxes(manifest["annotations"], image_height=manifest["image_size"][0])
    return manifest, paths, boxes


def boxes_by_slice(boxes: pd.DataFrame | None, stem: str) -> dict[int, list[tuple]]:
    """``{slice: [(x, y, w, h, label), ...]}`` of one volume (empty without annotations)."""
    if boxes is None:
        return {}
    sel = boxes[boxes["file"] == stem]
    return {int(s): [(int(r.x), int(r.y), int(r.width), int(r.height), str(r.label)) for r in g.itertuples(index=False)]
            for s, g in sel.groupby("slice", sort=True)}


# ------------------------------------------------------------------------------ evaluate

def evaluate(
    run_dir: str | Path,
    variants: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Reconstruct the test split at every acceleration and score every volume.

    Args:
        run_dir: the run directory (manifest from notebook 01, ``masking.json`` from 02,
            ``unet/runs.json`` and checkpoints from 05).
        variants, seeds: trained runs to evaluate (``None`` or empty: all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: slices per forward pass.
        progress: show a ``tqdm.auto`` bar.

    Returns:
        One row per (variant, acceleration, seed, volume), columns :data:`COLUMNS`. The
        zero-filled baseline is variant ``"zero-filled"`` with ``seed = -1`` (it is
        deterministic). ``seconds`` is the reconstruction time of the volume (masking,
        network, un-normalising; for zero-filled, masking and the inverse FFT). ROI
        columns are NaN for a volume with no lesion box; ``df.attrs["no_boxes"]`` lists
        those volumes and a line is printed.

    Raises:
        DataError: a missing ``runs.json``, ``masking.json``, manifest or checkpoint
            (naming the file and the notebook that writes it).
        ParameterError: a variant or seed that was not trained.
        MrlibError: a checkpoint that does not fit the network its config names.
    """
    from .runtime import progress_bar

    from .recon import SliceBank, reconstruct, zero_filled_volume
    from .runtime import pick_device

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError("batch_size", f"must be a positive integer, got {batch_size!r}")
    run_dir = Path(run_dir)
    runs = read_runs(run_dir, variants, seeds)
    spec = read_mask_spec(run_dir)
    _, paths, boxes = read_test_split(run_dir)
    device = pick_device(device) if isinstance(device, str) else device
    models = [(run, load_run(run_dir, run, device)) for run in runs]  # fail early on a bad checkpoint
    bank = SliceBank(paths, device)
    stems = list(bank.volumes)
    gts = {stem: bank.target[bank.volumes[stem]].cpu().numpy() for stem in stems}
    rois = {stem: boxes_by_slice(boxes, stem) for stem in stems}

    rows = []

    def score(variant, acc, seed, stem, recon, seconds):
        gt = gts[stem]
        row = dict(variant=variant, acceleration=int(acc), seed=int(seed), volume=stem)
        row.update(volume_metrics(gt, recon, where=f"{variant} {stem}"))
        row.update(roi_metrics(gt, recon, rois[stem], maxval=float(gt.max())))
        row["seconds"] = float(seconds)
        rows.append(row)

    total = len(spec.accelerations) * len(stems) * (1 + len(models))
    with progress_bar(total=total, desc="evaluate", unit="volume", progress=progress) as bar:
        for acc in spec.accelerations:
            func = spec.mask_func(acc)
            for stem in stems:
                start = time.perf_counter()
                zf = zero_filled_volume(bank, stem, func)
                score(ZERO_FILLED, acc, ZERO_FILLED_SEED, stem, zf, time.perf_counter() - start)
                bar.update(1)
            for run, model in models:
                bar.set_postfix_str(f"{run['variant']} seed {run['seed']} {acc}x")
                for stem in stems:
                    recon, seconds = reconstruct(model, bank, stem, func, batch_size=batch_size)
                    score(run["variant"], acc, run["seed"], stem, recon, seconds)
                    bar.update(1)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["no_boxes"] = [s for s in stems if not rois[s]]
    n = len(df.attrs["no_boxes"])
    if 0 < n < len(stems):  # none at all: summarize() says so
        print(f"{n} of {len(stems)} test volumes hold no annotated lesion ({', '.join(df.attrs['no_boxes'])}): "
              "their ROI metrics are NaN and are left out of the ROI means")
    return df


def volume_reconstructions(
    run_dir: str | Path,
    stem: str,
    acceleration: int,
    variants: Iterable[str] | None = None,
    seed: int | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, list[tuple]]]:
    """One test volume's target, its reconstructions and its boxes, for figures.

    Returns:
        ``(target (S, h, w), {"zero-filled": ..., variant: ...}, boxes_by_slice)``; for each
        variant the run with ``seed`` (default: the variant's first trained seed).
    """
    from .recon import SliceBank, reconstruct, zero_filled_volume
    from .runtime import pick_device

    runs = read_runs(run_dir, variants)
    spec = read_mask_spec(run_dir)
    _, paths, boxes = read_test_split(run_dir)
    path = {p.stem: p for p in paths}.get(stem)
    if path is None:
        raise ParameterError("stem", f"{stem!r} is not a test volume; test volumes: {', '.join(p.stem for p in paths)}")
    device = pick_device(device) if isinstance(device, str) else device
    bank = SliceBank([path], device)
    func = spec.mask_func(int(acceleration))
    recons = {ZERO_FILLED: zero_filled_volume(bank, stem, func)}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        run = next((r for r in mine if seed is None or int(r["seed"]) == int(seed)), None)
        if run is None:
            raise ParameterError("seed", f"variant {variant!r} has no run with seed {seed}")
        recons[variant] = reconstruct(load_run(run_dir, run, device), bank, stem, func, batch_size)[0]
    return bank.target.cpu().numpy(), recons, boxes_by_slice(boxes, stem)


# ----------------------------------------------------------------------------- statistics

def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of the finite values of ``x``.

    One value has no interval (NaN bounds); values that are all equal give ``[mean, mean]``.
    """
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    sd = float(x.std(ddof=1))
    if sd == 0 or not np.isfinite(sd):
        return mean, mean, mean
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return mean, mean - half, mean + half


def wilcoxon_p(d: Sequence[float]) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences ``d``, with a note.

    All-zero differences give ``p = 1`` (no difference to test). With fewer than
    :data:`FEW_VOLUMES` pairs the note says the test has little power (the exact test's
    smallest two-sided p is ``2 / 2**n``).
    """
    from scipy import stats

    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    notes = []
    if d.size == 0:
        return float("nan"), "no paired volume"
    if d.size < FEW_VOLUMES:
        notes.append(f"little power with {d.size} volume(s): "
                     f"smallest possible p {2 / 2 ** d.size:.3g}")
    if np.all(d == 0):
        notes.append("all differences are zero")
        return 1.0, "; ".join(notes)
    try:
        p = float(stats.wilcoxon(d).pvalue)
    except ValueError as exc:
        notes.append(f"Wilcoxon test not computed ({exc})")
        p = float("nan")
    return p, "; ".join(notes)


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _per_volume(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Each (variant, acceleration, volume)'s metrics averaged over seeds (NaN-aware)."""
    return df.groupby(["variant", "acceleration", "volume"], sort=False)[list(metrics)].mean().reset_index()


def summarize(df: pd.DataFrame, reference: str = "unweighted", level: float = 0.95) -> dict[str, Any]:
    """Means with intervals per (variant, acceleration) and paired comparisons with a reference.

    Args:
        df: rows of :func:`evaluate` (or the same columns read back from ``metrics.csv``).
        reference: the variant every other one is compared with.
        level: the interval's confidence level.

    Returns:
        A JSON-ready dict:

        * ``groups``: per (variant, acceleration): ``n_volumes``, ``n_seeds``,
          ``seconds_per_volume`` (mean) and, per metric, ``{"mean", "low", "high"}``: a
          t-interval over test volumes of the per-volume means across seeds (so it
          describes variation between volumes, not between training seeds), and
          ``seed_sd``: the standard deviation across seeds of the mean over volumes
          (None with one seed).
        * ``comparisons``: per variant != reference, acceleration and metric: the paired
          per-volume difference (variant - reference) with ``mean_diff``, ``low``,
          ``high`` (t-interval), ``p_wilcoxon`` (two-sided signed-rank), ``n_volumes``,
          ``excludes_zero``, ``better`` (``"higher"``/``"lower"``) and ``note``.
        * ``roi``: how the ROI metrics were computed or, when no test volume has a box,
          :data:`NO_ROI` (then the ROI fields are absent; this is printed too).
        * ``level``, ``reference``, ``metrics``, ``interval``, ``notes``.
    """
    if not 0 < level < 1:
        raise ParameterError("level", f"must be between 0 and 1, got {level!r}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError("metrics", f"missing column(s) {', '.join(missing)}")
    volumes = sorted(df["volume"].astype(str).unique())
    has_roi = df[list(ROI_METRICS)].notna().any(axis=1)
    roi_vols = sorted(df.loc[has_roi, "volume"].astype(str).unique())
    if not roi_vols:
        metrics = [m for m in METRICS if m not in ROI_METRICS]
        roi = NO_ROI
        print(roi)
    else:
        metrics = list(METRICS)
        without = [v for v in volumes if v not in roi_vols]
        roi = (f"ROI metrics over the {len(roi_vols)} of {len(volumes)} test volumes that hold an annotated lesion"
               + (f"; no box in {', '.join(without)} (left out of the ROI means)" if without else ""))
        if without:
            print(roi)
    notes = []
    per_vol = _per_volume(df, metrics)
    groups = []
    for (variant, acc), g in df.groupby(["variant", "acceleration"], sort=False):
        pv = per_vol[(per_vol["variant"] == variant) & (per_vol["acceleration"] == acc)]
        seeds = sorted(g["seed"].unique())
        entry: dict[str, Any] = dict(variant=str(variant), acceleration=int(acc), n_volumes=int(pv["volume"].nunique()),
                                     n_seeds=len(seeds), seconds_per_volume=float(g["seconds"].mean()))
        for m in metrics:
            mean, low, high = t_interval(pv[m], level)
            seed_means = g.groupby("seed")[m].mean()
            entry[m] = dict(mean=_finite(mean), low=_finite(low), high=_finite(high),
                            seed_sd=_finite(float(seed_means.std(ddof=1))) if len(seeds) > 1 else None)
        groups.append(entry)

    comparisons = []
    if reference not in set(df["variant"]):
        notes.append(f"reference variant {reference!r} not evaluated: no paired comparison")
    else:
        for (variant, acc), pv in per_vol.groupby(["variant", "acceleration"], sort=False):
            if variant == reference:
                continue
            ref = per_vol[(per_vol["variant"] == reference) & (per_vol["acceleration"] == acc)]
            pair = pv.merge(ref, on="volume", suffixes=("", "_ref"))
            for m in metrics:
                d = (pair[m] - pair[f"{m}_ref"]).to_numpy(dtype=np.float64)
                d = d[np.isfinite(d)]
                mean, low, high = t_interval(d, level)
                p, note = wilcoxon_p(d)
                excludes = bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
                comparisons.append(dict(
                    variant=str(variant), reference=reference, acceleration=int(acc), metric=m,
                    n_volumes=int(d.size), mean_diff=_finite(mean), low=_finite(low), high=_finite(high),
                    p_wilcoxon=_finite(p), excludes_zero=excludes,
                    better="higher" if HIGHER_IS_BETTER[m] else "lower", note=note,
                ))
    return dict(
        level=level, reference=reference, metrics=metrics, volumes=volumes,
        interval=(f"{level:.0%} Student-t interval over test volumes of the per-volume means across seeds; "
                  "comparisons are paired by volume (variant - reference)"),
        groups=groups, comparisons=comparisons, roi=roi, notes=notes,
    )


def write_results(run_dir: str | Path, df: pd.DataFrame, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``RUN/evaluation/metrics.csv`` and ``RUN/evaluation/summary.json`` atomically."""
    out = Path(run_dir) / "evaluation"
    csv = write_text(out / "metrics.csv", df.to_csv(index=False))
    js = write_json(out / "summary.json", summary)
    return csv, js


def read_results(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back what :func:`write_results` wrote."""
    out = Path(run_dir) / "evaluation"
    if not (out / "metrics.csv").is_file():
        raise DataError(out / "metrics.csv", "missing; notebook 06_evaluation writes it")
    return pd.read_csv(out / "metrics.csv"), read_json(out / "summary.json")


# ----------------------------------------------------------------------------- the book's tables

_DIGITS = {"nmse": 4, "psnr": 2, "ssim": 4, "roi_nmse": 4, "roi_psnr": 2, "roi_ssim": 4}


def _fmt(v: float | None, digits: int, sign: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _interval(mean, low, high, digits, sign=False) -> str:
    if low is None or high is None:
        return f"{_fmt(mean, digits, sign)} [n/a]"
    return f"{_fmt(mean, digits, sign)} [{_fmt(low, digits, sign)}, {_fmt(high, digits, sign)}]"


def ablation_table(summary: Mapping[str, Any], metrics: Sequence[str] = ("psnr", "ssim", "roi_psnr", "roi_ssim")) -> pd.DataFrame:
    """The ablation as a table of strings, one row per variant x acceleration.

    Columns: ``variant``, ``acceleration``, ``volumes``, ``seeds``, then per metric
    ``"mean [low, high]"`` and ``"Δ metric vs <reference>"``: the paired mean difference
    with its interval and the Wilcoxon p (``"reference"`` on the reference's own rows).
    Metrics absent from the summary (ROI metrics with no annotated lesion) are skipped.
    """
    metrics = [m for m in metrics if m in summary["metrics"]]
    ref = summary["reference"]
    comps = {(c["variant"], c["acceleration"], c["metric"]): c for c in summary["comparisons"]}
    rows = []
    for g in summary["groups"]:
        row = {"variant": g["variant"], "acceleration": f"{g['acceleration']}x",
               "volumes": g["n_volumes"], "seeds": g["n_seeds"]}
        for m in metrics:
            row[m] = _interval(g[m]["mean"], g[m]["low"], g[m]["high"], _DIGITS[m])
        for m in metrics:
            c = comps.get((g["variant"], g["acceleration"], m))
            key = f"Δ {m} vs {ref}"
            if g["variant"] == ref:
                row[key] = "reference"
            elif c is None:
                row[key] = "n/a"
            else:
                row[key] = (_interval(c["mean_diff"], c["low"], c["high"], _DIGITS[m], sign=True)
                            + f", p={_fmt(c['p_wilcoxon'], 3)}")
        rows.append(row)
    order = {v: i for i, v in enumerate((ZERO_FILLED, ref) + VARIANTS)}
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["acceleration", "variant"], key=lambda s: s.map(
            lambda v: order.get(v, len(order)) if s.name == "variant" else int(str(v).rstrip("x"))), kind="stable")
    return table.reset_index(drop=True)


def comparison_sentences(summary: Mapping[str, Any], metrics: Sequence[str] | None = None,
                         include_zero_filled: bool = False) -> list[str]:
    """One plain sentence per comparison: does the interval of the difference exclude 0?"""
    metrics = [m for m in (metrics or summary["metrics"]) if m in summary["metrics"]]
    out = []
    for c in summary["comparisons"]:
        if c["metric"] not in metrics or (c["variant"] == ZERO_FILLED and not include_zero_filled):
            continue
        name = c["metric"].upper().replace("ROI_", "ROI ")
        digits = _DIGITS[c["metric"]]
        diff = _interval(c["mean_diff"], c["low"], c["high"], digits, sign=True)
        head = f"{c['variant']} vs {c['reference']} at {c['acceleration']}x, {name}: difference {diff} over {c['n_volumes']} volume(s)"
        if "all differences are zero" in c["note"]:
            verdict = ("identical to the reference on every volume (did the training change anything? "
                       "an all-zero heatmap, for one, weights every pixel 1)")
        elif c["low"] is None or c["high"] is None:
            verdict = "no interval (too few volumes), so no conclusion"
        elif c["excludes_zero"]:
            good = (c["mean_diff"] > 0) == (c["better"] == "higher")
            where = (f"on these {c['n_volumes']} test volumes, weak evidence with so few"
                     if c["n_volumes"] < FEW_VOLUMES else "on this test split")
            verdict = f"the interval excludes 0: {c['variant']} is {'better' if good else 'worse'} {where}"
        else:
            verdict = "the interval includes 0: no evidence of a difference"
        p = f"Wilcoxon p = {_fmt(c['p_wilcoxon'], 3)}" + (f"; {c['note']}" if c["note"] else "")
        out.append(f"{head}; {verdict} ({p}).")
    return out


def final_losses(run_dir: str | Path, runs: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The report's Table 1 per run: final train and validation loss from ``history.json``.

    Columns: ``variant, seed, loss, epochs, train_loss, val_loss, val_mse, best_val_loss``
    (the last epoch's values, and the lowest validation loss). ``loss`` names each run's
    own training loss, which differs between variants (weighted MSE, L1): compare
    ``val_mse`` across variants, not ``val_loss``.
    """
    runs = read_runs(run_dir) if runs is None else runs
    rows = []
    for run in runs:
        path = checkpoint_path(run_dir, run).parent / "history.json"
        history = read_json(path)
        if not history:
            raise DataError(path, "empty training history")
        last = history[-1]
        rows.append(dict(variant=run["variant"], seed=int(run["seed"]), loss=run.get("loss"),
                         epochs=int(last.get("epoch", len(history))), train_loss=last.get("train_loss"),
                         val_loss=last.get("val_loss"), val_mse=last.get("val_mse"),
                         best_val_loss=min(h.get("val_loss", float("inf")) for h in history)))
    return pd.DataFrame(rows, columns=["variant", "seed", "loss", "epochs", "train_loss", "val_loss",
                                       "val_mse", "best_val_loss"])


def crop_around(box: Sequence, shape: tuple[int, int], size: int = 24) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of a ``size`` x ``size`` window (at least the box) centred on a box, inside the image."""
    x, y, w, h = (int(v) for v in box[:4])
    rows = _grow(max(y, 0), min(y + h, shape[0]), max(size, h), shape[0])
    cols = _grow(max(x, 0), min(x + w, shape[1]), max(size, w), shape[1])
    return slice(*rows), slice(*cols)
