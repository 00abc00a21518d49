"""Statistics of the ablation: intervals over evaluation volumes and paired comparisons.

The unit of analysis is the evaluation *volume*. Each volume's metric is first averaged over
training seeds; means and Student-t intervals are taken over volumes, and variants are
compared with a reference volume by volume (paired differences, a t-interval of the mean
difference and the Wilcoxon signed-rank test).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import DataError, ParameterError
from .metrics import HIGHER_IS_BETTER, METRICS, ROI_METRICS, ZERO_FILLED, ZERO_FILLED_SEED

#: The columns :func:`summarize` reads (the rows of :func:`mrlib.evaluate.evaluate`).
#: Metrics only some data has (``lesion_fidelity`` and ``diagnostic_auc`` need the synthetic
#: twins, ``diagnostic_auc`` also the in-domain classifier): NaN when absent.
OPTIONAL = ("lesion_fidelity", "diagnostic_auc")
REQUIRED = ("variant", "acceleration", "seed", "volume", *(m for m in METRICS if m not in OPTIONAL), "seconds")
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
    df = df.assign(**{m: np.nan for m in OPTIONAL if m not in df.columns})
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
    metrics = [m for m in metrics if m not in OPTIONAL or df[m].notna().any()]
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


# --------------------------------------------------------------------------- the confirmatory design
# (chapter 6): paired differences d(seed, volume) = arm - reference, a bootstrap over the
# crossed design, a fixed test sequence, Holm for the rest, the minimal detectable effect.

#: B of the two-way bootstrap and its fixed RNG seed (the interval is reproducible).
N_BOOT = 10_000
BOOT_SEED = 20_240_601
TWO_WAY = ("two-way percentile bootstrap: seeds and volumes resampled independently with replacement "
           f"(crossed design), B = {N_BOOT}")


def two_way_bootstrap(d: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      level: float = 0.95) -> dict[str, Any]:
    """The mean of a ``(n_seeds, n_volumes)`` matrix of paired differences, with an interval
    that carries both training variance (seeds) and volume variance.

    Each replicate draws ``n_seeds`` rows and ``n_volumes`` columns with replacement,
    independently (every seed is trained and scored on every volume: the design is crossed,
    not nested), and takes the mean of the drawn cells.

    Returns:
        ``diff`` (the mean), ``ci`` ``[low, high]`` (percentile), ``se`` (the replicates'
        standard deviation), ``p`` (two-sided: twice the smaller share of replicates on
        either side of 0, at least ``1 / n_boot``), ``per_seed`` (each seed's mean over
        volumes), ``n_seeds``, ``n_volumes``, ``interval_method``.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ParameterError("differences", f"expected a (seeds, volumes) matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise DataError("differences", "hold NaN or Inf: leave out volumes without the metric before the bootstrap")
    if not 0 < level < 1:
        raise ParameterError("level", f"must be between 0 and 1, got {level!r}")
    n_s, n_v = d.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_s, size=(n_boot, n_s))
    cols = rng.integers(0, n_v, size=(n_boot, n_v))
    # mean of d[rows][:, cols] = mean over drawn rows of (row-wise mean over drawn columns)
    reps = np.empty(n_boot)
    for start in range(0, n_boot, 1000):
        r, c = rows[start:start + 1000], cols[start:start + 1000]
        reps[start:start + 1000] = d[r[:, :, None], c[:, None, :]].mean(axis=(1, 2))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    p = min(1.0, max(2 * min((reps <= 0).mean(), (reps >= 0).mean()), 1 / n_boot))
    return dict(diff=float(d.mean()), ci=[float(low), float(high)], se=float(reps.std(ddof=1)), p=float(p),
                per_seed=[float(v) for v in d.mean(axis=1)], n_seeds=int(n_s), n_volumes=int(n_v),
                interval_method=TWO_WAY)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of ``p`` (same order): the k-th smallest of m p-values is
    multiplied by ``m - k + 1``, made non-decreasing along the sorted order, capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ParameterError("p", f"expected p-values in [0, 1], got {p!r}")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    out = np.empty_like(p)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def mde(se: float, n_volumes: int, alpha: float = 0.05, power: float = 0.80) -> float:
    """The minimal detectable effect of a two-sided test at ``alpha`` with ``power``:
    ``(t[1 - alpha/2, df] + t[power, df]) * se`` with ``df = n_volumes - 1``."""
    if n_volumes < 2:
        return float("nan")
    df = n_volumes - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def variance_components(d: np.ndarray) -> dict[str, float]:
    """The variances of a crossed ``(n_seeds, n_volumes)`` matrix of paired differences,
    ``d(s, v) = mu + a_s + b_v + e_sv``, by the method of moments of the two-way layout
    without replication (negative estimates set to 0).

    Returns:
        ``{"seed": var(a), "volume": var(b), "residual": var(e)}``; the residual holds the
        seed x volume interaction (each network's own errors on each volume).
    """
    d = np.asarray(d, dtype=np.float64)
    n_s, n_v = d.shape
    if n_s < 2 or n_v < 2:
        raise ParameterError("differences", f"variance components need at least 2 seeds and 2 volumes, got {d.shape}")
    rows, cols = d.mean(axis=1) - d.mean(), d.mean(axis=0) - d.mean()
    resid = d - d.mean() - rows[:, None] - cols[None, :]
    ms_e = float((resid ** 2).sum() / ((n_s - 1) * (n_v - 1)))
    ms_s = float(n_v * (rows ** 2).sum() / (n_s - 1))
    ms_v = float(n_s * (cols ** 2).sum() / (n_v - 1))
    return {"seed": max((ms_s - ms_e) / n_v, 0.0), "volume": max((ms_v - ms_e) / n_s, 0.0), "residual": ms_e}


def sizing(d: np.ndarray, se: float, seeds: Sequence[int] = (3, 5, 8, 12),
           volume_factors: Sequence[float] = (1, 2, 4, 8)) -> pd.DataFrame:
    """What other numbers of seeds and volumes would give, projected from one run.

    The standard error of the mean of a crossed design is
    ``sqrt(var_seed / S + var_volume / V + var_residual / (S V))``
    (:func:`variance_components`). The projection keeps the run's own bootstrap ``se``
    and scales it by that formula's ratio between the design ``(S, V)`` and the run's, then
    takes :func:`mde` at ``V``. That ``mde`` uses ``V - 1`` degrees of freedom; where the seed
    variance dominates, fewer stand behind it, so the projection is optimistic for few seeds.

    Args:
        d: the run's ``(n_seeds, n_volumes)`` differences; se: their two-way bootstrap SE.
        seeds: the seed counts S to project; volume_factors: V as multiples of the run's.

    Returns:
        One row per design: ``n_seeds, n_volumes, se, mde``.
    """
    d = np.asarray(d, dtype=np.float64)
    c = variance_components(d)

    def model_var(n_s: int, n_v: int) -> float:
        return c["seed"] / n_s + c["volume"] / n_v + c["residual"] / (n_s * n_v)

    base = model_var(*d.shape)
    rows = []
    for n_s in seeds:
        for f in volume_factors:
            n_v = int(round(f * d.shape[1]))
            s = se * np.sqrt(model_var(n_s, n_v) / base) if base > 0 else se  # no variance: nothing to scale
            rows.append(dict(n_seeds=int(n_s), n_volumes=n_v, se=float(s), mde=mde(s, n_v)))
    return pd.DataFrame(rows, columns=["n_seeds", "n_volumes", "se", "mde"])


def paired_matrix(df: pd.DataFrame, arm: str, reference: str, metric: str, acceleration: int) -> pd.DataFrame:
    """``d(seed, volume) = metric(arm, seed, volume) - metric(reference, seed, volume)``, a
    ``(seeds, volumes)`` frame; a reference without seeds (zero filling, seed -1) pairs with
    every seed of the arm. Volumes without the metric (ROI metrics of a volume without a
    box) are left out."""
    at = df[df["acceleration"] == acceleration]
    a = at[at["variant"] == arm].pivot_table(index="seed", columns="volume", values=metric, aggfunc="mean", dropna=False)
    r = at[at["variant"] == reference].pivot_table(index="seed", columns="volume", values=metric, aggfunc="mean", dropna=False)
    if a.empty or r.empty:
        raise DataError("metrics", f"no rows of {arm if a.empty else reference!r} at {acceleration}x")
    if list(r.index) == [ZERO_FILLED_SEED]:  # deterministic: the same for every seed of the arm
        r = pd.DataFrame(np.repeat(r.to_numpy(), len(a), axis=0), index=a.index, columns=r.columns)
    seeds = a.index.intersection(r.index)
    vols = a.columns.intersection(r.columns)
    d = a.loc[seeds, vols] - r.loc[seeds, vols]
    return d.loc[:, d.notna().all(axis=0)]


def comparison(df: pd.DataFrame, arm: str, reference: str, metric: str, acceleration: int,
               **extra: Any) -> dict[str, Any]:
    """One entry of ``summary.json``: the arm against the reference on one metric at one
    acceleration, by :func:`two_way_bootstrap`, with its :func:`mde`."""
    d = paired_matrix(df, arm, reference, metric, acceleration)
    entry = dict(variant=arm, reference=reference, metric=metric, acceleration=int(acceleration))
    if d.empty:  # e.g. an ROI metric where no evaluation volume holds a box
        entry.update(diff=None, ci=[None, None], se=None, p=None, per_seed=[], n_seeds=int(len(d.index)), n_volumes=0,
                     interval_method=TWO_WAY, mde=None, note=f"no volume with {metric} at {acceleration}x")
    else:
        entry.update(two_way_bootstrap(d.to_numpy()))
        entry["mde"] = mde(entry["se"], entry["n_volumes"])
    entry.update(extra)
    return entry


#: The fixed sequence's level; the confirmatory p-values are not adjusted.
ALPHA = 0.05


def decisive_summary(df: pd.DataFrame, declared: Mapping[str, Any],
                     strengths: Mapping[str, Mapping[str, float]] | None = None,
                     metrics: Sequence[str] = ("psnr", "ssim", "roi_psnr", "roi_ssim", "lesion_fidelity",
                                               "diagnostic_auc")
                     ) -> dict[str, Any]:
    """The confirmatory design of chapter 6 on the rows of :func:`mrlib.evaluate.evaluate`.

    Args:
        df: one row per (variant, acceleration, seed, volume).
        declared: the preset's declaration (:func:`mrlib.presets.declaration`):
            ``reference``, ``positive_control``, ``primary`` (variant keys), ``metric``,
            ``acceleration`` and ``declared_in``.
        strengths: per variant key, ``{"alpha", "weight_share"}`` (chapter 5's record).

    Returns:
        ``positive_control`` and ``primary``: :func:`comparison` entries with ``strength``,
        ``declared_in``, ``tested`` and ``significant`` (the positive control also its
        ``variance_components`` and ``sizing``: :func:`sizing`). They are tested in this fixed
        sequence at :data:`ALPHA`: the primary only if the positive control succeeded (its
        interval above 0 and p < alpha), each p unadjusted. ``unet_vs_zero_filled``: the
        reference against zero filling, per acceleration, on ``psnr`` and ``roi_psnr``.
        ``exploratory``: every other arm x metric x acceleration against the reference, with
        ``p_adjusted`` by :func:`holm` over all ``m`` of them.
    """
    strengths = strengths or {}
    ref, metric, acc = declared["reference"], declared["metric"], int(declared["acceleration"])
    where = str(declared.get("declared_in", ""))

    def entry(arm: str, m: str, a: int, reference: str = ref) -> dict[str, Any]:
        return comparison(df, arm, reference, m, a, strength=dict(strengths.get(arm, {})) or None, declared_in=where)

    out: dict[str, Any] = {"alpha": ALPHA}
    tested = True
    for role in ("positive_control", "primary"):
        e = entry(declared[role], metric, acc)
        e["tested"] = tested
        e["significant"] = bool(tested and e["p"] is not None and e["p"] < ALPHA and e["ci"][0] > 0)
        tested = e["significant"]
        out[role] = e
    pc = out["positive_control"]
    if pc["se"] is not None and pc["n_seeds"] >= 2 and pc["n_volumes"] >= 2:
        d = paired_matrix(df, declared["positive_control"], ref, metric, acc).to_numpy()
        pc["variance_components"] = variance_components(d)
        pc["sizing"] = sizing(d, pc["se"]).to_dict(orient="records")
    accs = sorted(int(a) for a in df["acceleration"].unique())
    out["unet_vs_zero_filled"] = [entry(ref, m, a, reference=ZERO_FILLED) for a in accs
                                  for m in ("psnr", "roi_psnr") if m in df and df[m].notna().any()]
    confirmatory = {(declared["positive_control"], metric, acc), (declared["primary"], metric, acc)}
    arms = [v for v in dict.fromkeys(df["variant"]) if v not in (ref, ZERO_FILLED)]
    rest = [entry(v, m, a) for v in arms for a in accs for m in metrics
            if m in df and df[m].notna().any() and (v, m, a) not in confirmatory]
    rest = [e for e in rest if e["p"] is not None]
    for e, p_adj in zip(rest, holm([e["p"] for e in rest])):
        e["p_adjusted"] = float(p_adj)
        e["m"] = len(rest)
    out["exploratory"] = rest
    return out
