"""Statistics of the ablation: intervals over evaluation volumes and paired comparisons.

The unit of analysis is the evaluation *volume*. Each volume's metric is first averaged over
training seeds; means and Student-t intervals are taken over volumes, and variants are
compared with a reference volume by volume (paired differences, a t-interval of the mean
difference and the Wilcoxon signed-rank test).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import DataError, ParameterError
from .metrics import HIGHER_IS_BETTER, METRICS, ROI_METRICS

#: The columns :func:`summarize` reads (the rows of :func:`mrlib.evaluate.evaluate`).
REQUIRED = ("variant", "acceleration", "seed", "volume", *METRICS, "seconds")
NO_ROI = "no annotated lesion in the evaluation split: ROI metrics not computed"
FEW_VOLUMES = 6  # below this the exact Wilcoxon test cannot reach p < 0.05 (min p = 2 / 2**n)


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of the finite values of ``x``.

    One value has no interval (NaN bounds); values that are all equal give ``[mean, mean]``.
    """
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
          t-interval over evaluation volumes of the per-volume means across seeds (so it
          describes variation between volumes, not between training seeds), and
          ``seed_sd``: the standard deviation across seeds of the mean over volumes
          (None with one seed).
        * ``comparisons``: per variant != reference, acceleration and metric: the paired
          per-volume difference (variant - reference) with ``mean_diff``, ``low``,
          ``high`` (t-interval), ``p_wilcoxon`` (two-sided signed-rank), ``n_volumes``,
          ``excludes_zero``, ``better`` (``"higher"``/``"lower"``) and ``note``.
        * ``roi``: how the ROI metrics were computed or, when no evaluation volume has a box,
          :data:`NO_ROI` (then the ROI fields are absent; this is printed too).
        * ``level``, ``reference``, ``metrics``, ``interval``, ``notes``.
    """
    if not 0 < level < 1:
        raise ParameterError("level", f"must be between 0 and 1, got {level!r}")
    missing = [c for c in REQUIRED if c not in df.columns]
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
        roi = (f"ROI metrics over the {len(roi_vols)} of {len(volumes)} evaluation volumes that hold an annotated lesion"
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
        interval=(f"{level:.0%} Student-t interval over evaluation volumes of the per-volume means across seeds; "
                  "comparisons are paired by volume (variant - reference)"),
        groups=groups, comparisons=comparisons, roi=roi, notes=notes,
    )


def cluster_bootstrap(values: Sequence[float], clusters: Sequence, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n_clusters)``: the mean of ``values`` with a percentile bootstrap
    interval that resamples whole clusters (volumes) with replacement, so that slices of one
    volume, which are not independent, move together. Paired differences go in as values."""
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(clusters)
    keep = np.isfinite(v)
    v, c = v[keep], c[keep]
    groups = [v[c == k] for k in dict.fromkeys(c.tolist())]
    if not groups:
        return float("nan"), float("nan"), float("nan"), 0
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(v.mean()), float(low), float(high), len(groups)
