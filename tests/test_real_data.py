"""The real fastMRI layout: split policies and roles, mixed k-space widths, stored masks,
orientation, and reconstructions that fastMRI's own evaluation scores."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from fastmri.data.transforms import UnetDataTransform

from conftest import cli
from mrlib.data import fastmri_h5, synth
from mrlib.data.annotations import boxes_for, read_boxes
from mrlib.data.check import check_data_dir
from mrlib.data.manifest import build_manifest, classifier_flip, display_flip, role_files
from mrlib.data.splits import FileEntry, assign_roles, policy_problems
from mrlib.errors import DataError
from mrlib.masking import MaskSpec, file_seed
from mrlib.recon import SliceBank, StreamingBank
from mrlib.submission import score_folder, write_folder

CFG = synth.SynthConfig(image_size=64, n_slices=3, n_train=4, n_val=2, n_test=2,
                        kneemri_exams=16, kneemri_slices=6, kneemri_size=64)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A small cohort written exactly as the real downloads are laid out."""
    root = tmp_path_factory.mktemp("real_layout")
    synth.generate(root, CFG, seed=1, progress=False, layout="real")
    return root


def _copy(real, tmp_path):
    shutil.copytree(real, tmp_path / "data")
    return tmp_path / "data"


# ----------------------------------------------------------------------------- the layout itself

def test_real_layout_is_as_the_real_downloads(real):
    widths = {fastmri_h5.validate_h5(p).kspace_shape[-1]
              for s in ("train", "val") for p in fastmri_h5.list_volumes(real / "fastmri" / f"singlecoil_{s}")}
    assert len(widths) > 1  # k-space widths differ between files
    for p in fastmri_h5.list_volumes(real / "fastmri" / "singlecoil_test"):
        info = fastmri_h5.validate_h5(p, require_target=False)
        assert info.target_key is None and info.has_mask and info.acceleration in (4, 8)
        with h5py.File(p) as hf:
            mask, kspace = hf["mask"][()], hf["kspace"][()]
            assert {"acceleration", "num_low_frequency"} <= set(hf.attrs) and "max" not in hf.attrs
        assert not np.abs(kspace[..., ~mask]).any()  # already undersampled
    assert (real / "annotations" / "knee_file_list.csv").read_text().splitlines()[-1] == "Knee data"
    depths = {int(s.split("x")[0]) for s in check_data_dir(real).found["kneemri"]["volume_shapes"]}
    assert len(depths) > 1  # kneeMRI volumes of differing slice counts


# ----------------------------------------------------------------------------- split policies

def test_fastmri_policy_carves_selection_by_patient():
    files = [FileEntry("train", f"f{i}.h5", f"p{i // 2}", True) for i in range(40)]
    files += [FileEntry("val", "v.h5", "q", True), FileEntry("test", "t.h5", "r", False, True)]
    roles = assign_roles(files, "fastmri", 0.25)
    assert roles == assign_roles(list(reversed(files)), "fastmri", 0.25)[::-1]  # order does not matter
    role_of = {a["file"]: a["role"] for a in roles}
    assert role_of["v.h5"] == "evaluation" and role_of["t.h5"] == "inference"
    selected = [f for f in files[:40] if role_of[f.name] == "selection"]
    assert 0 < len(selected) < 40
    for i in range(0, 40, 2):  # the two files of one patient share their role
        assert role_of[f"f{i}.h5"] == role_of[f"f{i + 1}.h5"]
    assert all("hash of patient_id" in a["why"] for a in roles if a["split"] == "train")
    synthetic = {a["file"]: a["role"] for a in assign_roles(files, "synthetic")}
    assert synthetic["f0.h5"] == "train" and synthetic["v.h5"] == "selection" and synthetic["t.h5"] == "evaluation"


def test_small_cohort_still_gets_a_selection_volume():
    files = [FileEntry("train", f"f{i}.h5", None, True) for i in range(3)] + [FileEntry("val", "v.h5", None, True)]
    roles = [a["role"] for a in assign_roles(files, "fastmri", 0.01)]
    assert roles.count("selection") == 1 and roles.count("train") == 2
    problems = policy_problems(files[:1] + files[3:], "fastmri", "singlecoil")
    assert any("selection" in what for _, what in problems)


def test_check_data_and_manifest_refuse_alike(real):
    # the real test split has no target: the synthetic policy, which evaluates on it, cannot run
    report = check_data_dir(real, deep=False, split_policy="synthetic")
    assert not report.ok
    where, what = report.problems[0]
    assert where.endswith(".h5") and "split_policy=synthetic" in what and "evaluation" in what
    with pytest.raises(DataError) as exc:
        build_manifest(real, split_policy="synthetic", deep=False)
    assert exc.value.where == where and exc.value.problem.startswith(what)
    # the fastmri policy runs it, and check-data says so
    assert check_data_dir(real, deep=False, split_policy="fastmri").ok
    verdicts = check_data_dir(real, deep=False).found["split_policies"]["singlecoil"]
    assert verdicts["fastmri"] == "usable" and verdicts["synthetic"].startswith("not usable")
    m = build_manifest(real, split_policy="fastmri", deep=False)
    assert (m["evaluation_split"], m["selection_split"]) == ("val", "train")
    assert {a["role"] for a in m["roles"]} == {"train", "selection", "evaluation", "inference"}
    assert [p.parent.name for p in role_files(m, "inference")] == ["singlecoil_test"] * 2


def test_a_training_file_without_target_is_refused_naming_file_and_policy(real, tmp_path):
    data = _copy(real, tmp_path)
    victim = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_train")[0]
    with h5py.File(victim, "a") as hf:
        del hf["reconstruction_esc"]
    out = cli("check-data", str(data), "--split-policy", "fastmri")
    assert out.returncode == 1
    assert victim.name in out.stdout and "split_policy=fastmri" in out.stdout
    with pytest.raises(DataError, match="split_policy=fastmri") as exc:
        build_manifest(data, split_policy="fastmri")
    assert exc.value.where.endswith(victim.name)


def test_a_stored_mask_that_does_not_match_the_kspace_is_refused(real, tmp_path):
    data = _copy(real, tmp_path)
    victim = fastmri_h5.list_volumes(data / "fastmri" / "singlecoil_test")[0]
    with h5py.File(victim, "a") as hf:
        mask = hf["mask"][()]
        del hf["mask"]
        hf["mask"] = mask[:-2]
    out = cli("check-data", str(data))
    assert out.returncode == 1 and victim.name in out.stdout and "stored mask" in out.stdout
    with pytest.raises(DataError, match="stored mask"):
        build_manifest(data, split_policy="fastmri")


def test_a_split_that_mixes_single_and_multi_coil_files_is_refused(real, tmp_path):
    data = _copy(real, tmp_path)
    cfg = synth.SynthConfig(image_size=64, n_slices=3, n_coils=2)
    vol = synth.make_fastmri_volume(cfg, synth.subject_rng(9, 0, 0, 0), multicoil=True)
    intruder = data / "fastmri" / "singlecoil_train" / "file1009999.h5"
    synth.writers.write_fastmri_h5(intruder, vol.kspace, vol.target, vol.attrs, vol.header, multicoil=True)
    out = cli("check-data", str(data), "--quick")
    assert out.returncode == 1 and intruder.name in out.stdout and "multicoil" in out.stdout
    with pytest.raises(DataError, match="multicoil") as exc:
        build_manifest(data, split_policy="fastmri", deep=False)
    assert exc.value.where.endswith(intruder.name)


def test_a_missing_evaluation_split_is_one_clear_message(real, tmp_path):
    data = _copy(real, tmp_path)
    shutil.rmtree(data / "fastmri" / "singlecoil_val")
    with pytest.raises(DataError, match="evaluation volumes from the val split"):
        build_manifest(data, split_policy="fastmri", deep=False)


# ----------------------------------------------------------------------------- mixed widths

def test_mixed_widths_equal_fastmris_transform_at_each_native_width(real):
    paths = [p for s in ("train", "val") for p in fastmri_h5.list_volumes(real / "fastmri" / f"singlecoil_{s}")]
    bank = SliceBank(paths)
    assert len(bank.shapes) > 1
    spec = MaskSpec("random", (4,), (0.08,))
    transform = UnetDataTransform("singlecoil", spec.mask_func(), use_seed=True)
    order = np.random.default_rng(0).permutation(len(bank))  # batches mix the widths
    seeds = [file_seed(f"{bank.files[i]}.h5") for i in order]
    got = bank.batch(order, spec.mask_func(), seeds)
    for pos, i in enumerate(order):
        kspace, target, attrs = fastmri_h5.read_volume(paths[[p.stem for p in paths].index(bank.files[i])])
        s = int(bank.slice_nums[i])
        ref = transform(kspace[s], None, target[s], attrs, f"{bank.files[i]}.h5", s)
        torch.testing.assert_close(got.image[pos], ref.image, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.target[pos], ref.target, rtol=1e-4, atol=1e-4)
        assert got.fname[pos] == bank.files[i]
    stream = StreamingBank(paths)
    again = stream.batch(order, spec.mask_func(), seeds)
    torch.testing.assert_close(again.image, got.image)
    torch.testing.assert_close(again.target, got.target)


# ----------------------------------------------------------------------------- orientation

def _knee_model(cfg, rng, pe):
    """The subject ``make_fastmri_volume`` draws from ``rng``, from the knee model itself on
    its grid (superior at row 0): femur and tibia masks and the texture-free image ``(S, N, N)``."""
    contrast = "PDFS" if synth.ACQUISITIONS[int(rng.integers(2))] == "CORPDFS_FBK" else "PD"
    subj = synth._draw_subject(rng, contrast)
    zs = synth.slice_positions(cfg, rng)
    n = cfg.image_size
    u, v, w = synth._grid("coronal", len(zs), 2 * n, pe, synth.FOV_MM / n, zs)
    x, y, z = synth._model_coords(subj, u, v, w, "coronal")
    tex = [np.zeros(x.shape, np.float32)] * 3
    fields = synth._render_anatomy(subj.knee, x, y, z, synth._SIGNAL[contrast], 0.5, tex)
    crop = np.s_[:, n // 2: n // 2 + n, (pe - n) // 2: (pe - n) // 2 + n]
    return fields.sdf["fem"][crop] < 0, fields.sdf["tib"][crop] < 0, fields.image[crop]


def test_stored_upside_down_boxes_cover_masks_and_femur_is_up_when_displayed(tmp_path):
    cfg = synth.SynthConfig(image_size=64, n_slices=4, n_train=3, n_val=0, n_test=0, kneemri_exams=0)
    synth.generate(tmp_path, cfg, seed=5, progress=False, layout="real")
    boxes = read_boxes(tmp_path / "annotations" / "knee.csv", image_height=64)  # un-flipped to array rows
    checked = 0
    for i, path in enumerate(fastmri_h5.list_volumes(tmp_path / "fastmri" / "singlecoil_train")):
        pe = fastmri_h5.validate_h5(path).kspace_shape[-1]
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(5, 0, 0, i), pe=pe)
        for lesion in vol.lesions:  # masks in the stored array's rows
            for s in np.flatnonzero(lesion.mask.any(axis=(1, 2))):
                rr, cc = np.nonzero(lesion.mask[s])
                want = (cc.min(), rr.min(), cc.max() - cc.min() + 1, rr.max() - rr.min() + 1)
                assert want in [b[:4] for b in boxes_for(boxes, path.stem, int(s))]
                checked += 1
        # displayed (flipped up/down), the stored target has the femur above the tibia
        femur, tibia, model = _knee_model(cfg, synth.subject_rng(5, 0, 0, i), pe)
        rows = np.arange(cfg.image_size)[None, :, None]
        assert (rows * femur).sum() / femur.sum() < (rows * tibia).sum() / tibia.sum()  # the model: femur up
        target = fastmri_h5.read_volume(path)[1]
        displayed = np.corrcoef(target[:, ::-1].ravel(), model.ravel())[0, 1]
        as_stored = np.corrcoef(target.ravel(), model.ravel())[0, 1]
        assert displayed > 0.7 and displayed > as_stored + 0.2, (displayed, as_stored)
    assert checked > 0


def test_manifest_records_the_flip_as_a_property_of_the_source(real):
    m = build_manifest(real, split_policy="fastmri", deep=False)
    assert display_flip(m, "fastmri") and not display_flip(m, "kneemri")
    assert classifier_flip(m, "kneemri")  # the kneeMRI classifier sees fastMRI slices turned the right way up


def test_lesion_labels_are_fastmri_plus_labels(real):
    from mrlib.data.manifest import manifest_boxes
    from mrlib.errors import ParameterError

    m = build_manifest(real, split_policy="fastmri", deep=False, lesion_labels=["  meniscus   TEAR"])
    assert m["lesion_labels"] == ["Meniscus Tear"]
    assert set(manifest_boxes(m).label) == {"Meniscus Tear"}
    with pytest.raises(ParameterError, match="Meniscal Tear"):  # a typo would drop every box
        build_manifest(real, split_policy="fastmri", deep=False, lesion_labels=["Meniscal Tear"])


# ----------------------------------------------------------------------------- submission layout

def test_write_folder_is_atomic_and_score_folder_needs_every_volume(real, tmp_path):
    targets = fastmri_h5.list_volumes(real / "fastmri" / "singlecoil_val")
    recons = {p.stem: fastmri_h5.read_volume(p)[1] * 0.9 for p in targets}
    folder = write_folder(tmp_path / "recon" / "4x", recons)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in targets)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    with h5py.File(folder / targets[0].name) as hf:
        assert hf["reconstruction"].dtype == np.float32 and hf["reconstruction"].compression == "gzip"
    scores = score_folder(folder, targets)
    assert 0 < scores["NMSE"] < 0.05 and scores["PSNR"] > 20
    (folder / targets[0].name).unlink()
    with pytest.raises(DataError, match=f"lacks 1 of the {len(targets)}.*{targets[0].name}"):
        score_folder(folder, targets)
    with pytest.raises(DataError, match="a reconstruction is"):
        write_folder(tmp_path / "bad", {"x": np.zeros((3, 3))})
    assert not (tmp_path / "bad").exists()
    # replacing: a failure halfway leaves the old folder whole; a success replaces it as a whole
    first = write_folder(tmp_path / "recon" / "8x", {"a": np.ones((2, 4, 4)), "b": np.ones((2, 4, 4))})
    with pytest.raises(DataError):
        write_folder(first, {"c": np.zeros((2, 4, 4)), "d": np.zeros(3)})
    assert sorted(p.name for p in first.iterdir()) == ["a.h5", "b.h5"]
    write_folder(first, {"c": np.zeros((2, 4, 4))})
    assert sorted(p.name for p in first.iterdir()) == ["c.h5"]
    assert sorted(p.name for p in first.parent.iterdir()) == ["4x", "8x"]  # no temporary left behind
    assert oct(first.stat().st_mode & 0o777) == oct(0o755)


def test_figures_turn_the_radiological_way_up():
    import matplotlib.pyplot as plt

    from mrlib import viz

    image = np.arange(16.0).reshape(4, 4)
    try:
        viz.set_display_flip(True)
        fig = viz.image_grid([image, image], boxes=[[(0, 0, 2, 1, "")], []])
        assert not any(ax.yaxis_inverted() for ax in fig.axes)  # row 0 at the bottom: flipped up/down
        fig = viz.image_grid([image], flip_ud=False)  # a source stored as viewed (kneeMRI)
        assert fig.axes[0].yaxis_inverted()
        viz.set_display_flip(False)
        assert viz.image_grid([image]).axes[0].yaxis_inverted()  # imshow's default: row 0 at the top
    finally:
        viz.set_display_flip(False)
        plt.close("all")


# ----------------------------------------------------------------------------- the whole chain

@pytest.fixture(scope="module")
def real_multicoil(tmp_path_factory):
    """The same cohort as :func:`real`, multi-coil (``multicoil_{train,val,test}``)."""
    root = tmp_path_factory.mktemp("real_layout_mc")
    synth.generate(root, CFG, seed=1, multicoil=True, progress=False, layout="real")
    return root


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_whole_chain_on_the_real_layout_with_the_fastmri_preset(challenge, request, tmp_path):
    """``book --preset fastmri --data DATA`` on the real layout, with only epochs, seeds, sizes
    and the variant list overridden: every chapter runs, the book builds, chapter 6 scores
    the val split and reconstructs the test split, and fastMRI's own evaluation of the
    written reconstructions equals ``metrics.csv``. Multi-coil (``-p challenge=multicoil``)
    too: the U-Net's input is the root-sum-of-squares of the zero-filled coil images, the
    target and the scores are against ``reconstruction_rss``."""
    import pandas as pd

    from mrlib.evaluate import score_saved
    from mrlib.rundir import RunDir

    real = request.getfixturevalue("real" if challenge == "singlecoil" else "real_multicoil")
    run_dir = tmp_path / "run"
    overrides = ["mrnet_epochs=1", "unet_epochs=1", "seeds=[0]", "chans=4", "pools=2", "mrnet_input_size=64",
                 "variants=['unweighted','gradcam','oracle']", f"challenge={challenge}"]
    command = "book" if challenge == "singlecoil" else "run"  # the book's build is the same either way
    out = cli(command, "--preset", "fastmri", "--data", str(real), "--run-dir", str(run_dir), "--quiet",
              *[a for p in overrides for a in ("-p", p)], timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rd = RunDir(run_dir)
    assert rd.book_html.is_file() == (command == "book")
    manifest = rd.read_manifest()
    assert manifest["challenge"] == challenge
    val = {p.stem for p in fastmri_h5.list_volumes(real / "fastmri" / f"{challenge}_val")}
    metrics = pd.read_csv(rd.metrics_csv)
    assert set(metrics.volume) == val  # metrics on val only
    tests = fastmri_h5.list_volumes(real / "fastmri" / f"{challenge}_test")
    for variant in ("unweighted", "gradcam", "oracle"):  # every variant reconstructs the test split
        written = {f.name for v, _, _, folder in rd.reconstruction_folders("test") if v == variant
                   for f in folder.iterdir()}
        assert written == {p.name for p in tests}, variant
    from mrlib.evaluate import load_run, read_runs
    from mrlib.recon import reconstruct_kspace

    model = load_run(rd, read_runs(rd, ["unweighted"])[0], "cpu")
    for p in tests:  # each into its own acceleration's folder, reconstructed with the file's stored mask
        acc = fastmri_h5.validate_h5(p, require_target=False).acceleration
        with h5py.File(rd.reconstructions("test", "unweighted", 0, acc) / p.name) as hf:
            written = hf["reconstruction"][()]
        kspace = torch.view_as_real(torch.from_numpy(fastmri_h5.read_volume(p)[0]))
        assert kspace.ndim == (5 if challenge == "multicoil" else 4)
        mask = torch.from_numpy(fastmri_h5.read_stored_mask(p)).float().reshape(1, 1, -1, 1)
        want, _ = reconstruct_kspace(model, kspace, mask.expand(kspace.shape[0], -1, -1, -1), (64, 64))
        np.testing.assert_allclose(written, want, rtol=1e-5, atol=1e-6)
    scores = score_saved(rd)
    assert set(scores.variant) == {"unweighted", "gradcam"} and len(scores) == 4  # 2 variants x 2 accelerations
    ours = metrics.groupby(["variant", "seed", "acceleration"])[["nmse", "psnr", "ssim"]].mean()
    for row in scores.itertuples():
        for m in ("nmse", "psnr", "ssim"):
            assert getattr(row, m) == pytest.approx(ours.loc[(row.variant, row.seed, row.acceleration), m], rel=1e-4)
    assert manifest["evaluation_split"] == "val" and manifest["annotation_counts"]["missing_file"] == 1
