"""The confirmatory statistics of chapter 6 (mrlib.stats): the two-way bootstrap over seeds
and volumes, Holm's adjustment, the minimal detectable effect and the paired matrix."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from mrlib import stats
from mrlib.errors import DataError, ParameterError
from mrlib.metrics import ZERO_FILLED, ZERO_FILLED_SEED


def test_holm_known_answer():
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]).size == 0
    with pytest.raises(ParameterError, match="p-values"):
        stats.holm([0.1, 1.5])


def test_two_way_interval_carries_the_seed_variance():
    rng = np.random.default_rng(3)
    d = rng.normal(0.5, 1.0, size=(3, 8))
    base = stats.two_way_bootstrap(d)
    shifted = stats.two_way_bootstrap(d + np.array([[-1.0], [0.0], [1.0]]))  # seed offsets of +-1 dB
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(shifted) >= 1.5 * width(base)
    assert shifted["diff"] == pytest.approx(base["diff"])  # the offsets cancel in the mean
    assert base["per_seed"] == pytest.approx(d.mean(axis=1).tolist())
    assert (base["n_seeds"], base["n_volumes"]) == (3, 8)
    assert base["ci"][0] < base["diff"] < base["ci"][1]
    assert stats.two_way_bootstrap(d) == base  # a fixed RNG seed: the same interval every time


def test_two_way_bootstrap_p_and_edge_cases():
    strong = stats.two_way_bootstrap(np.full((3, 10), 2.0) + np.linspace(-0.1, 0.1, 10))
    assert strong["p"] == pytest.approx(1 / stats.N_BOOT) and strong["ci"][0] > 0
    rng = np.random.default_rng(0)
    null = stats.two_way_bootstrap(rng.normal(0, 1, (3, 40)) - 0.0)
    assert null["p"] > 0.05 and null["ci"][0] < 0 < null["ci"][1]
    with pytest.raises(DataError, match="NaN"):
        stats.two_way_bootstrap(np.array([[1.0, np.nan]]))
    with pytest.raises(ParameterError, match="matrix"):
        stats.two_way_bootstrap(np.ones(5))


def test_mde_is_t_quantiles_times_se():
    assert stats.mde(0.2, 17) == pytest.approx((st.t.ppf(0.975, 16) + st.t.ppf(0.8, 16)) * 0.2)
    assert np.isnan(stats.mde(0.2, 1))


def _rows(values: dict, metric="roi_psnr", acc=8):
    return pd.DataFrame([dict(variant=v, seed=s, volume=vol, acceleration=acc, **{metric: x})
                         for (v, s, vol), x in values.items()])


def test_variance_components_recover_each_source_of_variance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 6), rng.normal(0, 1, 9)
    only_seeds = 0.3 + a[:, None] + np.zeros((6, 9))
    c = stats.variance_components(only_seeds)
    assert c["seed"] == pytest.approx(a.var(ddof=1)) and c["volume"] == pytest.approx(0, abs=1e-20)
    assert c["residual"] == pytest.approx(0, abs=1e-20)
    c = stats.variance_components(b[None, :] + np.zeros((6, 9)))
    assert c["volume"] == pytest.approx(b.var(ddof=1)) and c["seed"] == pytest.approx(0, abs=1e-20)
    big = 2.0 * rng.normal(size=(40, 1)) + 0.5 * rng.normal(size=(1, 60)) + 1.0 * rng.normal(size=(40, 60))
    c = stats.variance_components(big)
    assert c["seed"] == pytest.approx(4.0, rel=0.35) and c["volume"] == pytest.approx(0.25, rel=0.4)
    assert c["residual"] == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ParameterError, match="at least 2 seeds"):
        stats.variance_components(np.zeros((1, 5)))


def test_sizing_keeps_the_runs_own_se_and_shrinks_it_by_the_crossed_formula():
    rng = np.random.default_rng(1)
    d = 0.2 + 0.3 * rng.normal(size=(3, 1)) + 0.4 * rng.normal(size=(1, 12)) + 0.5 * rng.normal(size=(3, 12))
    table = stats.sizing(d, se=0.15, seeds=(3, 6), volume_factors=(1, 2))
    own = table[(table.n_seeds == 3) & (table.n_volumes == 12)].iloc[0]
    assert own.se == pytest.approx(0.15) and own.mde == pytest.approx(stats.mde(0.15, 12))
    assert (table.se <= 0.15 + 1e-12).all() and table.se.iloc[-1] < table.se.iloc[0]
    # variance only between seeds: more volumes buy nothing, more seeds buy sqrt(3 / 6)
    seeds_only = stats.sizing(rng.normal(size=(3, 1)) + np.zeros((3, 12)), se=0.1, seeds=(3, 6), volume_factors=(1, 2))
    assert list(seeds_only.se.round(12)) == [0.1, 0.1, round(0.1 * np.sqrt(0.5), 12), round(0.1 * np.sqrt(0.5), 12)]
    # no variance at all: the run's SE stands for every design, and nothing is NaN
    assert (stats.sizing(np.full((3, 12), 0.2), se=0.0).se == 0).all()


def test_the_answer_names_the_design_a_failed_control_would_need():
    from mrlib import report

    rows = [dict(n_seeds=3, n_volumes=19, se=0.13, mde=0.39), dict(n_seeds=5, n_volumes=38, se=0.09, mde=0.27),
            dict(n_seeds=8, n_volumes=19, se=0.1, mde=0.30), dict(n_seeds=12, n_volumes=76, se=0.06, mde=0.17)]
    # as summary.json gives it back: keys sorted
    entry = dict(diff=0.3, sizing=rows, variance_components={"residual": 0.16, "seed": 0.01, "volume": 0.16})
    text = report.sizing_sentence(entry)
    assert "about 8 seeds × 19 lesion volumes" in text and "seed 0.10, volume 0.40, residual 0.40" in text
    assert "out of reach of every projected design, up to 12 seeds × 76" in report.sizing_sentence({**entry, "diff": 0.1})
    assert report.sizing_sentence({**entry, "diff": -0.2}) == ""


def test_paired_matrix_pairs_seed_with_seed_and_broadcasts_zero_filling():
    vals = {("oracle", 0, "a"): 11.0, ("oracle", 1, "a"): 12.0, ("oracle", 0, "b"): 13.0, ("oracle", 1, "b"): 15.0,
            ("unweighted", 0, "a"): 10.0, ("unweighted", 1, "a"): 10.5, ("unweighted", 0, "b"): 12.0,
            ("unweighted", 1, "b"): 14.0, ("oracle", 0, "c"): np.nan, ("oracle", 1, "c"): np.nan,
            ("unweighted", 0, "c"): np.nan, ("unweighted", 1, "c"): np.nan,
            (ZERO_FILLED, ZERO_FILLED_SEED, "a"): 9.0, (ZERO_FILLED, ZERO_FILLED_SEED, "b"): 10.0,
            (ZERO_FILLED, ZERO_FILLED_SEED, "c"): np.nan}
    df = _rows(vals)
    d = stats.paired_matrix(df, "oracle", "unweighted", "roi_psnr", 8)
    assert list(d.columns) == ["a", "b"]  # c has no box: left out
    assert d.to_numpy().tolist() == [[1.0, 1.0], [1.5, 1.0]]
    z = stats.paired_matrix(df, "unweighted", ZERO_FILLED, "roi_psnr", 8)
    assert z.to_numpy().tolist() == [[1.0, 2.0], [1.5, 4.0]]
    entry = stats.comparison(df, "oracle", "unweighted", "roi_psnr", 8, declared_in="preset test")
    assert entry["diff"] == pytest.approx(1.125) and entry["n_volumes"] == 2 and entry["n_seeds"] == 2
    assert entry["declared_in"] == "preset test" and entry["mde"] > 0
    with pytest.raises(DataError, match="no rows"):
        stats.paired_matrix(df, "oracle", "unweighted", "roi_psnr", 4)


def _study(oracle_gain: float, seed=0):
    rng = np.random.default_rng(seed)
    vols = [f"v{k}" for k in range(10)]
    base = {v: rng.normal(20, 2) for v in vols}
    gain = {"unweighted": 0.0, "oracle": oracle_gain, "gradcam": 0.0, "random": 0.0}
    rows = []
    for acc in (4, 8):
        for v in vols:
            rows.append(dict(variant=ZERO_FILLED, seed=ZERO_FILLED_SEED, volume=v, acceleration=acc,
                             psnr=base[v] - 3, roi_psnr=base[v] - 4))
            for arm, g in gain.items():
                for s in range(3):
                    rows.append(dict(variant=arm, seed=s, volume=v, acceleration=acc, psnr=base[v] + rng.normal(0, 0.1),
                                     roi_psnr=base[v] - 2 + g + rng.normal(0, 0.2)))
    return pd.DataFrame(rows)


DECLARED = dict(reference="unweighted", positive_control="oracle", primary="gradcam", metric="roi_psnr",
                acceleration=8, declared_in="preset test")


def test_decisive_summary_tests_in_fixed_sequence():
    out = stats.decisive_summary(_study(1.0), DECLARED, {"oracle": {"alpha": 50.0, "weight_share": 0.2}},
                                 metrics=("psnr", "roi_psnr"))
    pc, primary = out["positive_control"], out["primary"]
    assert pc["variant"] == "oracle" and pc["acceleration"] == 8 and pc["metric"] == "roi_psnr"
    assert pc["significant"] and pc["ci"][0] > 0 and pc["strength"] == {"alpha": 50.0, "weight_share": 0.2}
    assert primary["tested"] and not primary["significant"] and primary["mde"] > 0
    for key in ("diff", "ci", "p", "mde", "interval_method", "n_volumes", "n_seeds", "declared_in"):
        assert key in pc and key in primary
    # U-Net against zero filling: each acceleration, psnr and roi_psnr, 3 seeds
    zf = {(e["acceleration"], e["metric"]): e for e in out["unet_vs_zero_filled"]}
    assert set(zf) == {(4, "psnr"), (4, "roi_psnr"), (8, "psnr"), (8, "roi_psnr")}
    assert zf[(8, "psnr")]["diff"] == pytest.approx(3.0, abs=0.1) and zf[(8, "psnr")]["n_seeds"] == 3
    # every other comparison is exploratory and Holm-adjusted over all m of them
    ex = out["exploratory"]
    assert len(ex) == 3 * 2 * 2 - 2 and all(e["m"] == len(ex) for e in ex)
    assert all(e["p_adjusted"] >= e["p"] for e in ex)
    assert ("oracle", "roi_psnr", 8) not in {(e["variant"], e["metric"], e["acceleration"]) for e in ex}


def test_a_failed_positive_control_stops_the_sequence():
    out = stats.decisive_summary(_study(0.0), DECLARED, metrics=("roi_psnr",))
    assert not out["positive_control"]["significant"]
    assert out["primary"]["tested"] is False and out["primary"]["significant"] is False
    assert out["primary"]["strength"] is None


def test_the_answer_paragraph_is_computed_from_the_confirmatory_entries():
    from mrlib import report

    ok = stats.decisive_summary(_study(1.0), DECLARED, {"oracle": {"alpha": 50.0, "weight_share": 0.2}},
                                metrics=("roi_psnr",))
    text = report.answer_paragraph(ok)
    pc = ok["positive_control"]
    assert "succeeded" in text and f"{pc['diff']:+.2f} [{pc['ci'][0]:+.2f}, {pc['ci'][1]:+.2f}] dB" in text
    assert "α = 50" in text and "20.0%" in text and "minimal detectable effect" in text
    assert "excluded at 95 %" in text and "2 degree(s) of freedom" in text
    failed_summary = stats.decisive_summary(_study(0.0), DECLARED, metrics=("roi_psnr",))
    failed = report.answer_paragraph(failed_summary)
    assert "could not detect an ROI effect" in failed and "not tested" in failed
    sizing = report.sizing_sentence(failed_summary["positive_control"])
    assert len(failed_summary["positive_control"]["sizing"]) == 16 and sizing in failed
    table = report.confirmatory_table(ok)
    assert list(table["comparison"][:2]) == ["positive control", "primary"]
    assert list(table["result"][:2]) == ["significant", "not significant"]


def test_no_lesion_volume_gives_empty_entries_not_an_error():
    df = _study(1.0)
    df["roi_psnr"] = np.nan
    out = stats.decisive_summary(df, DECLARED, metrics=("psnr", "roi_psnr"))
    assert out["positive_control"]["diff"] is None and out["positive_control"]["n_volumes"] == 0
    assert not out["positive_control"]["significant"] and out["primary"]["tested"] is False
    from mrlib import report
    assert "n/a" in report.answer_paragraph(out)


def test_price_of_attention_pairs_each_arms_whole_image_and_roi_difference():
    from mrlib import report, viz

    out = stats.decisive_summary(_study(1.0), DECLARED, {"oracle": {"alpha": 50.0, "weight_share": 0.2}},
                                 metrics=("psnr", "roi_psnr"))
    table = report.price_of_attention(out)
    assert sorted(table["variant"]) == ["gradcam", "oracle", "random"]
    oracle = table.set_index("variant").loc["oracle"]
    assert oracle["d_roi_psnr"] == pytest.approx(out["positive_control"]["diff"]) and oracle["alpha"] == 50.0
    assert oracle["psnr_low"] <= oracle["d_psnr"] <= oracle["psnr_high"]
    fig = viz.price_figure(table, 8)
    assert len(fig.axes[0].texts) == 3


def test_the_first_page_gets_the_runs_answer_or_says_why_not(tmp_path):
    from mrlib import report
    from mrlib.pipeline import write_answer
    from mrlib.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    assert "no confirmatory result" in write_answer(rd).read_text()
    summary = stats.decisive_summary(_study(1.0), DECLARED, metrics=("roi_psnr",))
    rd.write_evaluation(_study(1.0), summary)
    assert write_answer(rd).read_text() == report.answer_paragraph(rd.read_evaluation()[1]) + "\n"


def test_the_declaration_is_checked_against_the_preset(tmp_path):
    from mrlib.pipeline import claim_run_dir, declaration, declared_comparisons, flat_parameters, preset_parameters
    from mrlib.rundir import RunDir

    params = flat_parameters(preset_parameters("default"))
    current = {k: params[k] for k in ("primary", "positive_control", "primary_metric", "primary_acceleration")}
    rd = RunDir(tmp_path / "run")
    claim_run_dir(rd, "default", params, ["01_data"])
    declared, problems = declared_comparisons(rd, current, "default")
    assert problems == [] and declared["positive_control"] == "oracle[alpha=16]"
    assert declared["primary"] == "gradcam[alpha=16,weight_rule=matched,cam_method=layercam]" and declared["acceleration"] == 8
    assert declared["declared_in"] == "preset default, cohort seed 1"
    # chapter 6 asked for another acceleration than the run declared: refused, and said why
    declared, problems = declared_comparisons(rd, {**current, "primary_acceleration": 4}, "default")
    assert declared is None and "primary_acceleration" in problems[0]
    # a run started with another strength than its preset declares
    other = RunDir(tmp_path / "other")
    claim_run_dir(other, "default", {**params, "alpha": 50.0}, ["01_data"])
    declared, problems = declared_comparisons(other, current, "default")
    assert declared is None and any("alpha" in p and "50.0" in p for p in problems)
    # a run on another cohort than the declared one (seed 0 is the pilot that chose alpha)
    pilot = RunDir(tmp_path / "pilot")
    claim_run_dir(pilot, "default", {**params, "seed": 0}, ["01_data"])
    declared, problems = declared_comparisons(pilot, current, "default")
    assert declared is None and any("cohort seed 0" in p for p in problems)
    study = flat_parameters(preset_parameters("study"))
    assert declaration("study", study)["declared_in"].startswith("preset study, cohort seed 0: the pilot cohort")
