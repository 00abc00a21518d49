"""The book's tables and computed sentences, read from the statistical summary.

Every sentence that states a result is produced here from ``summary.json``
(:func:`mrlib.stats.summarize`), so the book's words change with the run.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .metrics import ZERO_FILLED
from .stats import FEW_VOLUMES
from .variants import REGISTRY

_DIGITS = {"nmse": 4, "psnr": 2, "ssim": 4, "roi_nmse": 4, "roi_psnr": 2, "roi_ssim": 4, "lesion_fidelity": 3, "diagnostic_auc": 3}


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
    order = {v: i for i, v in enumerate((ZERO_FILLED, ref, *REGISTRY))}
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
            where = (f"on these {c['n_volumes']} evaluation volumes, weak evidence with so few"
                     if c["n_volumes"] < FEW_VOLUMES else "on this evaluation split")
            verdict = f"the interval excludes 0: {c['variant']} is {'better' if good else 'worse'} {where}"
        else:
            verdict = "the interval includes 0: no evidence of a difference"
        p = f"Wilcoxon p = {_fmt(c['p_wilcoxon'], 3)}" + (f"; {c['note']}" if c["note"] else "")
        out.append(f"{head}; {verdict} ({p}).")
    return out


# --------------------------------------------------------------------------- the confirmatory answer

def _metric_name(metric: str) -> str:
    return metric.upper().replace("ROI_", "ROI ")


def _strength(e: Mapping[str, Any]) -> str:
    s = e.get("strength") or {}
    if s.get("alpha") is None:
        return ""
    share = s.get("weight_share")
    return f" (α = {s['alpha']:g}" + (f", {share:.1%} of the loss weight in the lesion boxes)" if share is not None
                                      else ")")


def _entry_text(e: Mapping[str, Any]) -> str:
    digits = _DIGITS.get(e["metric"], 3)
    return (f"{_interval(e['diff'], *e['ci'], digits, sign=True)} dB"
            if e["metric"] in ("psnr", "roi_psnr") else _interval(e["diff"], *e["ci"], digits, sign=True))


def confirmatory_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The two confirmatory comparisons and the U-Net against zero filling, one row each:
    arm, reference, metric, acceleration, difference with its 95 % interval, p, MDE, n."""
    rows = []
    entries = [("positive control", summary["positive_control"]), ("primary", summary["primary"])]
    entries += [("U-Net vs zero filling", e) for e in summary.get("unet_vs_zero_filled", [])]
    for role, e in entries:
        digits = _DIGITS.get(e["metric"], 3)
        rows.append({"comparison": role, "arm": e["variant"], "reference": e["reference"],
                     "metric": _metric_name(e["metric"]), "acceleration": f"{e['acceleration']}x",
                     "difference [95% interval]": _interval(e["diff"], *e["ci"], digits, sign=True),
                     "p": _fmt(e["p"], 4), "MDE": _fmt(e["mde"], digits),
                     "volumes": e["n_volumes"], "seeds": e["n_seeds"],
                     "result": ("significant" if e.get("significant") else
                                "not tested" if e.get("tested") is False else
                                "not significant" if "tested" in e else "")})
    return pd.DataFrame(rows)


def answer_paragraph(summary: Mapping[str, Any]) -> str:
    """The experiment's answer in one paragraph, computed from the confirmatory entries of
    ``summary`` (:func:`mrlib.stats.decisive_summary`): the positive control, then the primary
    comparison with its interval, unadjusted p and minimal detectable effect."""
    pc, pr = summary["positive_control"], summary["primary"]
    metric, acc = _metric_name(pc["metric"]), pc["acceleration"]
    n = f"{pc['n_volumes']} evaluation volumes with a lesion × {pc['n_seeds']} seeds"
    text = [f"Declared before the run ({pc['declared_in']}): {metric} at {acc}x, each arm against `{pc['reference']}`, "
            f"over {n}, by a {pc['interval_method']}."]
    if pc["significant"]:
        text.append(f"The positive control `{pc['variant']}`{_strength(pc)} succeeded: {_entry_text(pc)}, "
                    f"p = {_fmt(pc['p'], 4)}.")
        verdict = ("improves" if pr["significant"] else "was not shown to change")
        text.append(f"The primary arm `{pr['variant']}`{_strength(pr)} {verdict} {metric}: {_entry_text(pr)}, "
                    f"p = {_fmt(pr['p'], 4)} (unadjusted), minimal detectable effect {_fmt(pr['mde'], 2)} dB.")
        if not pr["significant"]:
            text.append(f"Effects outside [{_fmt(pr['ci'][0], 2, True)}, {_fmt(pr['ci'][1], 2, True)}] dB are "
                        "excluded at 95 %.")
    else:
        text.append(f"The positive control `{pc['variant']}`{_strength(pc)} did not succeed ({_entry_text(pc)}, "
                    f"p = {_fmt(pc['p'], 4)}): at this scale the experiment could not detect an ROI effect even with "
                    f"the true boxes, so the primary arm `{pr['variant']}` was not tested and its result "
                    f"({_entry_text(pr)}, minimal detectable effect {_fmt(pr['mde'], 2)} dB) says nothing "
                    "about the method.")
        text.append(sizing_sentence(pc))  # empty when there is nothing to project
    if pc["n_seeds"] <= 3:
        text.append(f"With {pc['n_seeds']} seeds, the seed component of the intervals rests on "
                    f"{pc['n_seeds'] - 1} degree(s) of freedom.")
    return " ".join(filter(None, text))


def sizing_sentence(entry: Mapping[str, Any]) -> str:
    """What a design would need to detect ``entry``'s estimate, from its ``sizing`` rows
    (:func:`mrlib.stats.sizing`): the cheapest projected design (fewest seed x volume
    cells) whose minimal detectable effect is at most the estimate, or that none in the
    grid reaches it. Empty without a sizing or with an estimate at or below 0."""
    rows, diff = entry.get("sizing") or [], entry.get("diff")
    if not rows or diff is None or diff <= 0:
        return ""
    c = entry.get("variance_components", {})
    sds = ", ".join(f"{k} {math.sqrt(c[k]):.2f}" for k in ("seed", "volume", "residual") if k in c)
    head = (f"Projected from this run's variance components (standard deviations in dB: {sds}), detecting an "
            f"effect of the estimated size ({_fmt(diff, 2, True)} dB) with 80 % power")
    fits = sorted((r for r in rows if r["mde"] <= diff), key=lambda r: (r["n_seeds"] * r["n_volumes"], r["n_seeds"]))
    if not fits:
        big = max(rows, key=lambda r: r["n_seeds"] * r["n_volumes"])
        return (f"{head} is out of reach of every projected design, up to {big['n_seeds']} seeds × "
                f"{big['n_volumes']} lesion volumes (minimal detectable effect there {_fmt(big['mde'], 2)} dB).")
    r = fits[0]
    return (f"{head} would need about {r['n_seeds']} seeds × {r['n_volumes']} lesion volumes "
            f"(minimal detectable effect {_fmt(r['mde'], 2)} dB).")


def price_of_attention(summary: Mapping[str, Any], acceleration: int | None = None) -> pd.DataFrame:
    """What each weighted arm buys inside the lesions and pays on the whole image: per arm,
    its difference from the reference in PSNR and in ROI-PSNR at ``acceleration`` (default
    the declared one), with the two-way intervals and the arm's strength (``alpha``,
    ``weight_share``). Read from the confirmatory and exploratory entries of ``summary``."""
    entries = [summary["positive_control"], summary["primary"], *summary.get("exploratory", [])]
    acc = int(acceleration or summary["primary"]["acceleration"])
    rows: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["acceleration"] != acc or e["metric"] not in ("psnr", "roi_psnr") or e["diff"] is None:
            continue
        row = rows.setdefault(e["variant"], {"variant": e["variant"], **(e.get("strength") or {})})
        row[f"d_{e['metric']}"], row[f"{e['metric']}_low"], row[f"{e['metric']}_high"] = e["diff"], *e["ci"]
    cols = ["variant", "alpha", "weight_share", "d_psnr", "psnr_low", "psnr_high", "d_roi_psnr", "roi_psnr_low",
            "roi_psnr_high"]
    return pd.DataFrame(list(rows.values())).reindex(columns=cols).dropna(subset=["d_psnr", "d_roi_psnr"])
