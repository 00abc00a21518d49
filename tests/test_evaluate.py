"""Evaluation: fastMRI metrics, ROI metrics that read only the boxes, statistics, end to end."""

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from fastmri import evaluate as fm_eval
from scipy import stats
from scipy.stats import wilcoxon
from skimage.metrics import structural_similarity

from mrlib import evaluate as ev
from mrlib.data import manifest as mf
from mrlib.data import synth
from mrlib.errors import DataError, MrlibError, ParameterError
from mrlib.masking import MaskSpec
from mrlib.metrics import ROI_METRICS, SSIM_WINDOW, ZERO_FILLED, roi_metrics, volume_metrics
from mrlib.models import build_unet
from mrlib.report import ablation_table, comparison_sentences
from mrlib.rundir import RunDir
from mrlib.stats import NO_ROI, summarize
from mrlib.train import save_checkpoint

RNG = np.random.default_rng(0)


def _volume(shape=(3, 40, 48)):
    gt = np.abs(RNG.normal(1.0, 0.3, shape)) + 0.1
    return gt, gt + RNG.normal(0, 0.05, shape)


# ----------------------------------------------------------------------------- metrics

def test_volume_metrics_equal_fastmri_evaluate():
    gt, pred = _volume()
    got = volume_metrics(gt, pred)
    assert got["nmse"] == pytest.approx(float(fm_eval.nmse(gt, pred)), rel=1e-12)
    assert got["psnr"] == pytest.approx(float(fm_eval.psnr(gt, pred)), rel=1e-12)
    assert got["ssim"] == pytest.approx(float(fm_eval.ssim(gt, pred)[0]), rel=1e-12)
    # one box covering every slice entirely gives the volume's NMSE and PSNR
    whole = {s: [(0, 0, gt.shape[2], gt.shape[1], "all")] for s in range(gt.shape[0])}
    roi = roi_metrics(gt, pred, whole)
    assert roi["roi_nmse"] == pytest.approx(got["nmse"], rel=1e-12)
    assert roi["roi_psnr"] == pytest.approx(got["psnr"], rel=1e-12)
    assert roi["roi_ssim"] == pytest.approx(np.mean([_ssim_map(gt, pred, s, gt.max()).mean() for s in range(gt.shape[0])]))


def _ssim_map(gt, pred, s, maxval):
    return structural_similarity(gt[s], pred[s], data_range=maxval, full=True)[1]


def test_roi_metrics_are_fastmri_on_the_box_pixels():
    gt, pred = _volume()
    boxes = {0: [(5, 6, 10, 8, "a")], 2: [(20, 10, 9, 12, "b"), (30, 25, 8, 8, "c")]}
    got = roi_metrics(gt, pred, boxes, maxval=gt.max())
    m = np.zeros(gt.shape, bool)
    m[0, 6:14, 5:15] = m[2, 10:22, 20:29] = m[2, 25:33, 30:38] = True
    assert got["roi_nmse"] == pytest.approx(float(fm_eval.nmse(gt[m], pred[m])))
    assert got["roi_psnr"] == pytest.approx(float(fm_eval.psnr(gt[m], pred[m], gt.max())))
    # SSIM: the whole slice's map (7 x 7 windows), averaged over the box pixels of the volume
    want = np.concatenate([_ssim_map(gt, pred, 0, gt.max())[m[0]], _ssim_map(gt, pred, 2, gt.max())[m[2]]]).mean()
    assert got["roi_ssim"] == pytest.approx(want)


@pytest.mark.filterwarnings("ignore:divide by zero")  # ROI-PSNR of an exact match is inf
def test_roi_ssim_reads_the_box_and_a_three_pixel_margin():
    gt, pred = _volume()
    box = (14, 12, 8, 5)  # interior, 8 x 5: on its crop SSIM would have only two 7 x 7 windows
    near = np.zeros(gt.shape, bool)
    near[1, 12 - 3:12 + 5 + 3, 14 - 3:14 + 8 + 3] = True  # the box dilated by 3 px
    same = np.where(near, gt, pred + 5.0)  # equal to the target there, anything elsewhere
    assert roi_metrics(gt, same, {1: [box]})["roi_ssim"] == pytest.approx(1.0, abs=1e-12)
    one = same.copy()
    one[1, 14, 17] += 0.5 * gt.max()  # one pixel inside the box
    assert roi_metrics(gt, one, {1: [box]})["roi_ssim"] < 0.99
    outer = same.copy()
    outer[1, 12 - 4, 14] += 0.5 * gt.max()  # one pixel just beyond the margin: not read
    assert roi_metrics(gt, outer, {1: [box]})["roi_ssim"] == pytest.approx(1.0, abs=1e-12)


def test_roi_metrics_read_only_the_boxes():
    gt, pred = _volume()
    boxes = {1: [(10, 12, 9, 7, "a")], 2: [(3, 30, 4, 3, "small")]}
    base = roi_metrics(gt, pred, boxes)
    read = np.zeros(gt.shape, bool)
    read[1, 12 - 3:19 + 3, 10 - 3:19 + 3] = True  # each box and SSIM's 3-pixel margin
    read[2, 30 - 3:33 + 3, 3 - 3:7 + 3] = True
    outside = pred.copy()
    outside[~read] = 1000.0  # scipy's running-sum filter lets far values move the last digits only
    assert roi_metrics(gt, outside, boxes) == pytest.approx(base, rel=1e-9)
    inside = pred.copy()
    inside[1, 14, 12] += 1.0  # one pixel inside a box
    changed = roi_metrics(gt, inside, boxes)
    assert all(changed[k] != base[k] for k in ROI_METRICS)
    # the PSNR data range is the whole volume's max, not the box's
    scaled = roi_metrics(gt, pred, boxes, maxval=2 * gt.max())
    assert scaled["roi_psnr"] == pytest.approx(base["roi_psnr"] + 20 * np.log10(2))


def test_roi_ssim_needs_an_image_as_large_as_its_window():
    gt, pred = _volume()
    with pytest.raises(DataError, match="smaller than SSIM"):
        roi_metrics(gt[:, :6, :6], pred[:, :6, :6], {0: [(1, 1, 2, 2)]})
    assert SSIM_WINDOW == 7  # skimage's default window, which fastMRI's SSIM uses


def test_volume_without_boxes_gives_nan_and_the_summary_says_so(capsys):
    gt, pred = _volume()
    assert all(np.isnan(v) for v in roi_metrics(gt, pred, {}).values())
    assert all(np.isnan(v) for v in roi_metrics(gt, pred, {0: [(100, 100, 5, 5)]}).values())  # outside the image
    df = _table(n_volumes=3, with_roi=False)
    summary = summarize(df)
    assert summary["roi"] == NO_ROI
    assert NO_ROI in capsys.readouterr().out
    assert not any(m.startswith("roi_") for m in summary["metrics"])
    assert all("roi_psnr" not in g for g in summary["groups"])
    assert "roi_psnr" not in " ".join(ablation_table(summary).columns)
    # some volumes with boxes: the ROI means skip the others, and the summary names them
    df.loc[df.volume != "v0", "roi_psnr"] = 30.0
    summary = summarize(df)
    assert "2 of 3" in summary["roi"] and "v0" in summary["roi"]
    assert summary["groups"][0]["roi_psnr"]["mean"] == 30.0


# -------------------------------------------------------------------------- statistics

def _table(n_volumes=8, seeds=(0, 1), with_roi=True):
    rows = []
    rng = np.random.default_rng(1)
    base = {f"v{i}": 25 + rng.normal(0, 2) for i in range(n_volumes)}
    for acc in (4, 8):
        for vol, psnr in base.items():
            rows.append(dict(variant=ZERO_FILLED, acceleration=acc, seed=-1, volume=vol, psnr=psnr - 5))
            for seed in seeds:
                jitter = rng.normal(0, 0.1)  # the same seed jitter in both variants, cancelled by pairing
                rows.append(dict(variant="unweighted", acceleration=acc, seed=seed, volume=vol, psnr=psnr + jitter))
                rows.append(dict(variant="gradcam", acceleration=acc, seed=seed, volume=vol, psnr=psnr + jitter + 1.0))
    df = pd.DataFrame(rows)
    for m in ("nmse", "ssim", "seconds"):
        df[m] = 0.5
    for m in ROI_METRICS:
        df[m] = df["psnr"] if with_roi else np.nan
    return df[[c for c in ev.COLUMNS if c not in ("lesion_fidelity", "diagnostic_auc")]]  # real data has no twins


def test_summarize_known_answer():
    df = _table(n_volumes=8)
    s = summarize(df, reference="unweighted")
    c = {(x["variant"], x["acceleration"], x["metric"]): x for x in s["comparisons"]}
    g = c[("gradcam", 4, "psnr")]
    assert g["mean_diff"] == pytest.approx(1.0, abs=1e-9)
    assert g["low"] == pytest.approx(1.0, abs=1e-6) and g["high"] == pytest.approx(1.0, abs=1e-6)
    assert g["p_wilcoxon"] == pytest.approx(wilcoxon(np.ones(8)).pvalue) == pytest.approx(2 / 2 ** 8)
    assert g["excludes_zero"] and g["n_volumes"] == 8 and g["note"] == ""
    # identical metrics: all-zero differences, p = 1, the interval is [0, 0]
    same = c[("gradcam", 8, "ssim")]
    assert same["mean_diff"] == 0 and same["p_wilcoxon"] == 1.0 and "all differences are zero" in same["note"]
    assert not same["excludes_zero"]
    # the zero-filled baseline (seed -1) pairs with the reference by volume
    assert c[("zero-filled", 4, "psnr")]["mean_diff"] == pytest.approx(-5.0, abs=0.2)
    # group statistics: a t-interval over volumes of the per-volume means across seeds
    grp = {(x["variant"], x["acceleration"]): x for x in s["groups"]}
    per_vol = df[(df.variant == "gradcam") & (df.acceleration == 4)].groupby("volume").psnr.mean()
    half = stats.t.ppf(0.975, 7) * per_vol.std(ddof=1) / np.sqrt(8)
    got = grp[("gradcam", 4)]
    assert got["psnr"]["mean"] == pytest.approx(per_vol.mean())
    assert got["psnr"]["low"] == pytest.approx(per_vol.mean() - half)
    assert got["n_volumes"] == 8 and got["n_seeds"] == 2 and got["seconds_per_volume"] == 0.5
    assert grp[("zero-filled", 4)]["n_seeds"] == 1 and grp[("zero-filled", 4)]["psnr"]["seed_sd"] is None
    json.dumps(s, allow_nan=False)  # JSON-ready: no NaN
    # the book's table and sentences
    table = ablation_table(s)
    assert list(table.variant[:3]) == ["zero-filled", "unweighted", "gradcam"]
    row = table[(table.variant == "gradcam") & (table.acceleration == "4x")].iloc[0]
    assert row["Δ psnr vs unweighted"].startswith("+1.00 [+1.00, +1.00], p=0.008")
    assert table[table.variant == "unweighted"]["Δ psnr vs unweighted"].eq("reference").all()
    sentences = comparison_sentences(s, metrics=["psnr"])
    assert len(sentences) == 2 and "excludes 0: gradcam is better" in sentences[0]


def test_summarize_few_volumes_says_little_power():
    s = summarize(_table(n_volumes=3))
    c = next(x for x in s["comparisons"] if x["variant"] == "gradcam" and x["metric"] == "psnr")
    assert "little power" in c["note"] and c["p_wilcoxon"] == pytest.approx(0.25)
    one = summarize(_table(n_volumes=1))
    c = next(x for x in one["comparisons"] if x["variant"] == "gradcam" and x["metric"] == "psnr")
    assert c["low"] is None and "no interval" in comparison_sentences(one, ["psnr"])[0]


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data, rd = root / "data", RunDir(root / "run")
    cfg = synth.SynthConfig(image_size=64, n_slices=3, n_train=1, n_val=1, n_test=2,
                            kneemri_exams=4, kneemri_slices=4, kneemri_size=64)
    synth.generate(data, cfg, seed=0, progress=False)
    rd.write_manifest(mf.build_manifest(data))
    rd.write_mask_spec(MaskSpec("random", (4, 8), (0.08, 0.04)), seed=0)
    for variant, seed in (("unweighted", 0), ("unweighted", 1), ("gradcam", 0)):
        config = dict(variant=variant, seed=seed, model="unet", chans=4, pools=1, loss="mse",
                      weight_rule="linear", alpha=4.0, threshold=0.5, cam_method="gradcam", unet_epochs=1,
                      unet_lr=1e-3)
        ckpts = rd.unet_run(variant, seed)
        torch.manual_seed(seed)
        save_checkpoint(ckpts.best, {"model": build_unet("unet", chans=4, num_pool_layers=1).state_dict()})
        ckpts.write_config(config)
        ckpts.write_history([dict(epoch=1, train_loss=0.5, val_loss=0.4, val_mse=0.3, lr=1e-3)])
        rd.register_run(config)
    return rd.root


def test_evaluate_end_to_end(run_dir):
    df = ev.evaluate(run_dir, device="cpu", batch_size=2, progress=False)
    assert list(df.columns) == list(ev.COLUMNS)
    # (zero-filled + 3 runs) x 2 accelerations x 2 volumes
    assert len(df) == (1 + 3) * 2 * 2
    assert not df.duplicated(["variant", "acceleration", "seed", "volume"]).any()
    assert set(df.variant) == {"zero-filled", "unweighted", "gradcam"}
    assert set(df[df.variant == "zero-filled"].seed) == {-1}
    assert set(df.acceleration) == {4, 8} and df.volume.nunique() == 2
    assert df[["nmse", "psnr", "ssim", "seconds"]].notna().all().all() and (df.seconds > 0).all()
    assert df[list(ROI_METRICS)].notna().all().all()  # both synthetic test volumes hold lesions
    # zero-filled beats an untrained network, and 4x beats 8x for zero-filled
    zf = df[df.variant == "zero-filled"].groupby("acceleration").psnr.mean()
    assert zf[4] > zf[8]
    # filters
    only = ev.evaluate(run_dir, variants=["gradcam"], device="cpu", progress=False)
    assert set(only.variant) == {"zero-filled", "gradcam"} and len(only) == 2 * 2 * 2
    # summary, files, tables: what notebook 06 and `mrlib evaluate` compute and write
    rd = RunDir(run_dir)
    df2, summary = ev.evaluate_run(rd, device="cpu", batch_size=2, progress=False)
    pd.testing.assert_frame_equal(df2.drop(columns="seconds"), df.drop(columns="seconds"))
    assert summary == json.loads(json.dumps(summarize(df2)))
    back, s2 = rd.read_evaluation()
    assert list(back.columns) == list(ev.COLUMNS) and len(back) == len(df)
    pd.testing.assert_frame_equal(back, df2, check_exact=False, rtol=1e-12)
    assert s2 == summary
    assert s2["roi"].startswith("ROI metrics over the 2 of 2")
    assert not list(rd.metrics_csv.parent.glob("*.part"))
    table = ablation_table(s2)
    assert len(table) == 3 * 2 and "roi_ssim" in table.columns
    losses = ev.final_losses(run_dir)
    assert list(losses.variant) == ["unweighted", "unweighted", "gradcam"] and losses.val_mse.eq(0.3).all()
    target, recons, boxes = ev.volume_reconstructions(run_dir, df.volume.iloc[0], 4, device="cpu")
    assert list(recons) == ["zero-filled", "unweighted", "gradcam"] and target.shape == recons["gradcam"].shape
    assert boxes
    zf_row = df[(df.variant == ZERO_FILLED) & (df.acceleration == 4) & (df.volume == df.volume.iloc[0])].iloc[0]
    assert volume_metrics(target, recons[ZERO_FILLED])["psnr"] == pytest.approx(zf_row.psnr)


def test_evaluate_bad_inputs(run_dir, tmp_path):
    with pytest.raises(ParameterError, match="'dcgan'.*trained: unweighted, gradcam"):  # the registry's order
        ev.evaluate(run_dir, variants=["dcgan"], progress=False)
    with pytest.raises(ParameterError, match="seeds"):
        ev.evaluate(run_dir, seeds=[7], progress=False)
    bad = RunDir(tmp_path / "run")
    shutil.copytree(run_dir, bad.root)
    # a checkpoint of another model (the report's U-Net) under a fastMRI U-Net config
    best = bad.unet_run("gradcam", 0).best
    save_checkpoint(best, {"model": build_unet("seed").state_dict()})
    with pytest.raises(MrlibError, match=f"{best.name}.*does not fit Unet"):
        ev.evaluate(bad, device="cpu", progress=False)
    best.unlink()
    with pytest.raises(DataError, match="checkpoint of run gradcam/seed0 is missing"):
        ev.evaluate(bad, device="cpu", progress=False)
    bad.masking_path.unlink()
    with pytest.raises(DataError, match=f"{bad.masking_path.name}.*02_masking"):
        ev.evaluate(bad, variants=["unweighted"], device="cpu", progress=False)
    bad.registry.unlink()
    with pytest.raises(DataError, match=f"{bad.registry.name}.*05_weighted_unet"):
        ev.evaluate(bad, progress=False)
    bad.manifest_path.unlink()
    with pytest.raises(DataError, match=f"{bad.manifest_path.name}.*01_data"):
        bad.read_manifest()


def test_the_diagnostic_auc_tells_lesion_slices_from_their_twins():
    from mrlib.metrics import diagnostic_auc
    assert diagnostic_auc([2.0, 3.0], [0.0, 1.0]) == 1.0  # every lesion slice above every twin slice
    assert diagnostic_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert diagnostic_auc([1.0, 1.0], [1.0, 1.0]) == 0.5  # the lesion is gone: ties count half
    assert diagnostic_auc([3.0, 0.5], [1.0, 0.0]) == 0.75  # 3 of the 4 pairs ordered
    assert np.isnan(diagnostic_auc([], []))
    with pytest.raises(DataError, match="twin slices"):
        diagnostic_auc([1.0, 2.0], [0.0])


def test_lesion_fidelity_is_the_share_of_the_lesion_that_survives():
    from mrlib.metrics import lesion_fidelity

    twin = np.abs(RNG.normal(1.0, 0.2, (2, 12, 12)))
    mask = np.zeros(twin.shape, bool)
    mask[1, 3:7, 4:9] = True
    gt = twin + 0.8 * mask
    assert lesion_fidelity(gt, gt, twin, mask) == pytest.approx(1.0)
    assert lesion_fidelity(gt, twin, twin, mask) == pytest.approx(0.0)  # the lesion is gone
    assert lesion_fidelity(gt, twin + 0.4 * mask, twin, mask) == pytest.approx(0.5)
    outside = gt + 3.0 * ~mask  # what happens outside the lesion does not count
    assert lesion_fidelity(gt, outside, twin, mask) == pytest.approx(1.0)
    assert np.isnan(lesion_fidelity(twin, twin, twin, mask))  # no lesion signal
    with pytest.raises(DataError, match="shapes differ"):
        lesion_fidelity(gt, gt[:1], twin, mask)


def test_roi_breakdown_by_acquisition_and_kind_counts_and_pairs_volumes():
    rows, kinds = [], []
    vols = {"a": "CORPD_FBK", "b": "CORPD_FBK", "c": "CORPDFS_FBK"}
    for v in vols:  # zero filling: deterministic, one row per volume, 2 dB below the U-Net
        rows.append(dict(variant="zero-filled", acceleration=8, seed=-1, volume=v,
                         roi_psnr={"a": 18.0, "b": 20.0, "c": 16.0}[v]))
    for v, (variant, gain) in itertools.product(vols, (("unweighted", 0.0), ("oracle", 1.0))):
        for seed in (0, 1):
            base = {"a": 20.0, "b": 22.0, "c": 18.0}[v] + 0.1 * seed
            rows.append(dict(variant=variant, acceleration=8, seed=seed, volume=v, roi_psnr=base + gain))
            # volume c holds a second kind, on which the oracle gains 3 dB
            kinds.append(dict(variant=variant, acceleration=8, seed=seed, volume=v, kind="BME", roi_psnr=base + gain))
            if v == "c":
                kinds.append(dict(variant=variant, acceleration=8, seed=seed, volume=v, kind="Meniscus Tear",
                                  roi_psnr=base + 3 * gain))
    both = ev.roi_breakdown(pd.DataFrame(rows), pd.DataFrame(kinds), vols)
    unet = both[both.variant == "unweighted"].set_index("group")
    assert set(unet.reference) == {"zero-filled"}
    assert unet.loc["acquisition: CORPD_FBK", "diff"] == pytest.approx(2.05)  # zero filling pairs with every seed
    table = both[both.variant == "oracle"].set_index("group")
    assert list(table.index) == ["acquisition: CORPDFS_FBK", "acquisition: CORPD_FBK", "kind: BME", "kind: Meniscus Tear"]
    assert list(table.n_volumes) == [1, 2, 3, 1] and set(table.n_seeds) == {2}
    assert table.loc["kind: Meniscus Tear", "diff"] == pytest.approx(3.0)
    assert table.loc["acquisition: CORPD_FBK", "diff"] == pytest.approx(1.0)
    assert table.loc["acquisition: CORPD_FBK", "mean"] == pytest.approx(22.05)


def test_a_full_key_picks_its_own_runs_and_a_name_the_runs_it_resolves_to(tmp_path):
    from mrlib.evaluate import first_seeds, read_runs
    from mrlib.rundir import RunDir

    matched = "gradcam[alpha=16,weight_rule=matched,cam_method=layercam]"
    rd = RunDir(tmp_path / "run")
    common = dict(alpha=16.0, weight_rule="matched", cam_method="layercam", threshold=0.5, gate=False)
    for seed in (0, 1):
        rd.register_run(dict(variant=matched, seed=seed, roi_source="fastmri", **common))
        rd.register_run(dict(variant=matched[:-1] + ",roi_source=kneemri]", seed=seed, roi_source="kneemri", **common))
    # the kneemri arm resolves to its own key under its own parameters, yet the full key is not its name
    assert [r["roi_source"] for r in read_runs(rd, [matched])] == ["fastmri", "fastmri"]
    assert first_seeds(rd.read_registry(), [matched]) == {(matched, 0)}
    # a bare name still names every run it becomes under that run's parameters
    assert len(read_runs(rd, ["gradcam"])) == 4
