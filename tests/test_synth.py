"""Tests of the synthetic knee generator and the file-format writers (small sizes)."""

from __future__ import annotations

import contextlib
import io
import re
import pickle
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pandas as pd
import pytest

import fastmri
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform, to_tensor

from mrlib.data import synth, twins, writers
from mrlib.data.annotations import COLUMNS, flip_y
from mrlib.errors import DataError, ParameterError
from mrlib.presets import get_preset

N = 64
SMALL = dict(image_size=N, n_slices=4, n_train=2, n_val=1, n_test=1,
             kneemri_exams=40, kneemri_slices=6, kneemri_size=64, n_coils=4)


class _NumpyOnly(pickle.Unpickler):
    """The restricted unpickler a kneeMRI reader uses: numpy arrays and nothing else."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in {"_reconstruct", "ndarray", "dtype"}:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # Python 3 protocol-2 bytes (latin1)
            return lambda text, encoding: text.encode("latin1")
        raise pickle.UnpicklingError(f"forbidden {module}.{name}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.generate(out, synth.SynthConfig(**SMALL), seed=3, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def volumes():
    """Volumes with lesions, each with its lesion-free twin (same subject, same noise)."""
    cfg = synth.SynthConfig(image_size=N, n_slices=6)
    out = []
    for i in range(12):
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(11, 0, 0, i))
        if vol.lesions:
            twin = synth.make_fastmri_volume(cfg, synth.subject_rng(11, 0, 0, i), render_lesions=False)
            out.append((vol, twin))
    assert len(out) >= 5
    return out


def test_kspace_shape():
    assert synth.kspace_shape(320) == (640, 368)
    assert synth.kspace_shape(128) == (256, 148)
    assert synth.kspace_shape(64) == (128, 74)


def test_config_validation():
    with pytest.raises(ParameterError, match="image_size"):
        synth.SynthConfig(image_size=10)
    with pytest.raises(ParameterError, match="noise"):
        synth.SynthConfig(noise=-0.1)
    with pytest.raises(ParameterError, match="n_train"):
        synth.SynthConfig(n_train=1.5)
    from mrlib.presets import PRESETS

    for name, preset in PRESETS.items():
        if preset["synth"] is not None:
            synth.SynthConfig(**preset["synth"])


def test_layout_and_summary(dataset):
    out, summary = dataset
    assert summary["counts"] == {"train": 2, "val": 1, "test": 1}
    for split, n in summary["counts"].items():
        assert len(list((out / "fastmri" / f"singlecoil_{split}").glob("*.h5"))) == n
    assert (out / "synth.json").is_file()
    assert not list(out.rglob("*.part"))
    assert summary["kneemri_exams"] == 40


def test_slicedataset_reads_singlecoil(dataset):
    out, _ = dataset
    root = out / "fastmri" / "singlecoil_train"
    ds = SliceDataset(root, "singlecoil", transform=UnetDataTransform("singlecoil"),
                      use_dataset_cache=False)
    assert len(ds) == 2 * SMALL["n_slices"]
    sample = ds[0]
    assert tuple(sample.image.shape) == (N, N)
    assert tuple(sample.target.shape) == (N, N)
    raw = SliceDataset(root, "singlecoil", use_dataset_cache=False)
    kspace, _, target, attrs, fname, _ = raw[1]
    rows, pe = synth.kspace_shape(N)
    assert kspace.shape == (rows, pe) and kspace.dtype == np.complex64
    assert attrs["recon_size"] == (N, N, 1) and attrs["encoding_size"] == (rows, pe, 1)
    col_energy = np.abs(kspace).sum(axis=0)
    zero = np.nonzero(col_energy == 0)[0]
    left, right = attrs["padding_left"], attrs["padding_right"]
    assert left > 0 and right < pe
    assert set(zero) == set(range(left)) | set(range(right, pe))
    assert attrs["acquisition"] in synth.ACQUISITIONS
    assert isinstance(attrs["patient_id"], str)
    with h5py.File(root / fname, "r") as hf:
        volume = hf["reconstruction_esc"][()]
        header = ET.fromstring(hf["ismrmrd_header"][()])
    assert header.tag == "{http://www.ismrm.org/ISMRMRD}ismrmrdHeader"
    assert attrs["max"] == pytest.approx(float(volume.max()))
    assert attrs["norm"] == pytest.approx(float(np.linalg.norm(volume)), rel=1e-5)


def test_target_is_ifft_of_kspace(dataset):
    out, _ = dataset
    f = sorted((out / "fastmri" / "singlecoil_val").glob("*.h5"))[0]
    with h5py.File(f, "r") as hf:
        kspace, target = hf["kspace"][()], hf["reconstruction_esc"][()]
    assert target.dtype == np.float32
    image = fastmri.ifft2c(to_tensor(kspace))
    image = fastmri.complex_abs(fastmri.data.transforms.complex_center_crop(image, (N, N)))
    np.testing.assert_allclose(target, image.numpy(), rtol=1e-5, atol=1e-6 * target.max())


def test_evaluation_twins_carry_their_kspace(dataset):
    """The val and test twins hold the k-space of the same subject, noise and coils without
    the lesion: its inverse FFT is the twin, and it differs from the volume's k-space only
    by the lesion. Training twins, read only as images, do not carry it."""
    out, _ = dataset
    found = [(split, stem, path) for split in ("singlecoil_val", "singlecoil_test")
             for stem, path in twins.find_twins(out, split).items()]
    training = twins.find_twins(out, "singlecoil_train")
    assert found and training and all(twins.read_twin(p).kspace is None for p in training.values())
    for split, stem, path in found:
        tw = twins.read_twin(path)
        with h5py.File(out / "fastmri" / split / f"{stem}.h5", "r") as hf:
            kspace = hf["kspace"][()]
        assert tw.kspace.shape == kspace.shape and tw.kspace.dtype == np.complex64
        image = fastmri.complex_abs(fastmri.data.transforms.complex_center_crop(
            fastmri.ifft2c(to_tensor(tw.kspace)), (N, N))).numpy()
        np.testing.assert_allclose(tw.twin, image, rtol=1e-5, atol=1e-6 * tw.twin.max())
        assert not np.array_equal(tw.kspace, kspace)  # the lesion is in the volume's k-space only


def test_multicoil_rss(tmp_path):
    cfg = synth.SynthConfig(image_size=N, n_slices=2, n_coils=4)
    vol = synth.make_fastmri_volume(cfg, synth.subject_rng(0, 0, 0, 0), multicoil=True)
    rows, pe = synth.kspace_shape(N)
    assert vol.kspace.shape == (2, 4, rows, pe)
    path = writers.write_fastmri_h5(tmp_path / "multicoil_val" / "file1.h5", vol.kspace,
                                    vol.target, vol.attrs, vol.header, multicoil=True)
    with h5py.File(path, "r") as hf:
        kspace, target = hf["kspace"][()], hf["reconstruction_rss"][()]
    image = fastmri.complex_abs(fastmri.data.transforms.complex_center_crop(
        fastmri.ifft2c(to_tensor(kspace)), (N, N)))
    np.testing.assert_allclose(target, fastmri.rss(image, dim=1).numpy(), rtol=1e-5,
                               atol=1e-6 * target.max())
    ds = SliceDataset(tmp_path / "multicoil_val", "multicoil",
                      transform=UnetDataTransform("multicoil"), use_dataset_cache=False)
    assert tuple(ds[0].image.shape) == (N, N)


def test_determinism():
    cfg = synth.SynthConfig(image_size=N, n_slices=2)
    a = synth.make_fastmri_volume(cfg, synth.subject_rng(5, 0, 0, 1))
    b = synth.make_fastmri_volume(cfg, synth.subject_rng(5, 0, 0, 1))
    c = synth.make_fastmri_volume(cfg, synth.subject_rng(6, 0, 0, 1))
    assert a.kspace.tobytes() == b.kspace.tobytes()
    assert a.header == b.header and a.attrs == b.attrs
    assert a.kspace.tobytes() != c.kspace.tobytes()
    va, ra = synth.make_kneemri_exam(cfg, synth.subject_rng(5, 1, 0, 0))
    vb, rb = synth.make_kneemri_exam(cfg, synth.subject_rng(5, 1, 0, 0))
    assert va.tobytes() == vb.tobytes() and ra == rb


def test_boxes_cover_masks_and_lesions_visible(dataset, volumes):
    out, summary = dataset
    boxes = pd.read_csv(out / "annotations" / "knee.csv")
    assert tuple(boxes.columns) == COLUMNS
    assert len(boxes) == summary["n_boxes"] > 0
    assert set(boxes["study_level"]) == {"No"}
    assert set(boxes["label"]) <= set(synth.LABELS.values())
    for fname, group in boxes.groupby("file"):
        matches = list(out.glob(f"fastmri/*/{fname}.h5"))
        assert len(matches) == 1
        with h5py.File(matches[0], "r") as hf:
            n_slices = hf["kspace"].shape[0]
        assert group["slice"].between(0, n_slices - 1).all()

    # the same boxes, from masks, on volumes with a lesion-free twin
    for vol, twin in volumes:
        rows = synth.boxes_from_masks("f", vol.lesions, N)
        for lesion in vol.lesions:
            assert lesion.mask.dtype == bool and lesion.mask.shape == vol.target.shape
        for row in rows:
            s = row["slice"]
            y = flip_y(row["y"], row["height"], N)
            box = np.zeros((N, N), bool)
            box[y:y + row["height"], row["x"]:row["x"] + row["width"]] = True
            lesion_masks = [l.mask[s] for l in vol.lesions if l.label == row["label"]]
            assert any(not (m & ~box).any() and m.any() for m in lesion_masks)
        for lesion in vol.lesions:
            m = lesion.mask
            diff = np.abs(vol.target[m] - twin.target[m]).mean()
            assert diff > 0.08 * vol.target.max(), (lesion.label, diff / vol.target.max())
    # and the tear/edema/defect is brighter than the healthy tissue there on PDFS
    brighter = [(v.target[l.mask] - t.target[l.mask]).mean() > 0
                for v, t in volumes if v.acquisition == "CORPDFS_FBK" for l in v.lesions]
    assert brighter and all(brighter)


def test_lesion_areas(volumes):
    labels = set()
    min_area = {kind.label: kind.min_area for kind in synth.LESION_KINDS.values()}
    for vol, _ in volumes:
        assert 0 <= len(vol.lesions) <= 3
        for lesion in vol.lesions:
            labels.add(lesion.label)
            area = lesion.mask.mean(axis=(1, 2))
            area = area[area > 0]
            assert len(area) >= 1
            assert (area >= min_area[lesion.label]).all() and (area <= 0.02).all(), (lesion.label, area)
    assert len(labels) >= 3
    assert min_area["Meniscus Tear"] < 0.002  # tears are thin lines, kept although small


def test_negatives_twins_and_contrast():
    """A share of subjects has no lesion; a twin differs from its target only where a lesion was
    painted; the contrast range scales how much it differs."""
    free = [len(synth.make_fastmri_volume(synth.SynthConfig(image_size=64, n_slices=4), synth.subject_rng(5, 0, 0, i)).lesions) == 0
            for i in range(30)]
    assert 0.15 <= np.mean(free) <= 0.6
    assert not any(len(synth.make_fastmri_volume(synth.SynthConfig(image_size=64, n_slices=4, lesion_free_fraction=1.0),
                                                 synth.subject_rng(5, 0, 0, i)).lesions) for i in range(5))
    diffs = {}
    for contrast in (0.3, 0.9):
        cfg = synth.SynthConfig(image_size=64, n_slices=6, lesion_free_fraction=0.0, lesion_contrast=(contrast, contrast))
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(5, 0, 0, 1), twin=True)
        assert vol.lesions and vol.twin.shape == vol.target.shape and vol.noise_sigma > 0
        lesion = np.any([les.mask for les in vol.lesions], axis=0)
        d = np.abs(vol.target - vol.twin)
        assert d[lesion].mean() > 20 * d[~lesion].mean()  # the same noise: the difference is the lesions
        diffs[contrast] = d[lesion].mean()
    assert diffs[0.9] > 2 * diffs[0.3]


def test_kneemri(dataset):
    out, summary = dataset
    meta = pd.read_csv(out / "kneemri" / "metadata.csv")
    assert list(meta.columns) == list(writers.KNEEMRI_COLUMNS)
    assert len(meta) == 40 and meta["examId"].is_unique
    assert set(meta["aclDiagnosis"]) == {0, 1, 2}
    assert set(meta["kneeLR"]) <= {0, 1}
    for row in meta.head(8).itertuples():
        with open(out / "kneemri" / row.volumeFilename, "rb") as f:
            vol = _NumpyOnly(io.BytesIO(f.read())).load()
        assert type(vol) is np.ndarray and vol.dtype == np.uint16
        assert vol.shape == (SMALL["kneemri_slices"], 64, 64)
        assert vol.max() <= 4095 and vol.max() > 1000
        assert 0 <= row.roiZ and row.roiZ + row.roiDepth <= vol.shape[0]
        assert row.roiX + row.roiWidth <= 64 and row.roiY + row.roiHeight <= 64
    # the ROI holds the ACL: rendered ACL mask inside the box
    cfg = synth.SynthConfig(kneemri_slices=6, kneemri_size=64)
    for i in range(3):
        rng = synth.subject_rng(3, 1, 0, i)
        vol, row = synth.make_kneemri_exam(cfg, rng)
        assert row["roiDepth"] >= 1 and row["roiWidth"] >= 5 and row["roiHeight"] >= 5
        z0 = row["roiZ"]
        # central slices: the ROI is within the middle half of the slices
        assert cfg.kneemri_slices // 4 <= z0 + row["roiDepth"] / 2 <= 3 * cfg.kneemri_slices // 4


def test_kneemri_tear_visible():
    """A torn ACL, painted at full contrast, makes the ROI brighter (PDFS fluid); the default
    contrast range makes it subtle on purpose (chapter 3's one-feature baseline measures how)."""
    cfg = synth.SynthConfig(kneemri_slices=8, kneemri_size=64, kneemri_contrast=(1.0, 1.0))
    means = {0: [], 1: [], 2: []}
    for i in range(24):
        vol, row = synth.make_kneemri_exam(cfg, synth.subject_rng(1, 1, 0, i))
        roi = vol[row["roiZ"]:row["roiZ"] + row["roiDepth"], row["roiY"]:row["roiY"] + row["roiHeight"],
                  row["roiX"]:row["roiX"] + row["roiWidth"]].astype(float)
        means[row["aclDiagnosis"]].append(roi.mean() / vol.max())
    assert means[0] and means[2]
    assert np.mean(means[2]) > 1.25 * np.mean(means[0])
    assert np.mean(means[1]) > np.mean(means[0])


def test_undersampling_degrades_lesions(volumes):
    mask_func = RandomMaskFunc([0.08], [4], seed=0)
    ratios = []
    for vol, _ in volumes:
        for lesion in vol.lesions:
            s = int(np.argmax(lesion.mask.sum(axis=(1, 2))))
            k = to_tensor(vol.kspace[s])
            mask, _ = mask_func(k.shape, seed=s)
            zf = fastmri.complex_abs(fastmri.data.transforms.complex_center_crop(
                fastmri.ifft2c(k * mask), (N, N))).numpy()
            err = np.abs(zf - vol.target[s])
            rr, cc = np.nonzero(lesion.mask[s])
            box = err[rr.min():rr.max() + 1, cc.min():cc.max() + 1]
            ratios.append(box.mean() / err.mean())
    assert np.mean(ratios) > 1.0, ratios


def test_writers_reject_bad_input(tmp_path):
    with pytest.raises(DataError, match="kspace"):
        writers.write_fastmri_h5(tmp_path / "a.h5", np.zeros((2, 8, 8), np.float32),
                                 np.zeros((2, 4, 4), np.float32), {}, b"")
    k = np.full((1, 8, 8), np.nan, np.complex64)
    with pytest.raises(DataError, match="NaN"):
        writers.write_fastmri_h5(tmp_path / "a.h5", k, np.zeros((1, 4, 4), np.float32),
                                 dict(acquisition="x", max=1.0, norm=1.0, patient_id="p"), b"")
    assert not list(tmp_path.iterdir())
    with pytest.raises(DataError):
        writers.write_pck(tmp_path / "a.pck", np.zeros((4, 4), np.uint16))


def test_the_twin_baselines_darkening_table_matches_the_generator():
    """Every lesion of a drawn cohort moves its box's mean, against the twin, the way
    ``classifier.DARKENING`` says: down for marrow edema on PD, up otherwise."""
    from mrlib.classifier import DARKENING, box_feature

    cfg = synth.SynthConfig(image_size=64, n_slices=6, lesion_free_fraction=0.0, lesion_contrast=(0.9, 1.0))
    seen = set()
    for i in range(40):
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(3, 0, 0, i), twin=True)
        for les in vol.lesions:
            s = int(np.argmax(les.mask.sum(axis=(1, 2))))
            rr, cc = np.nonzero(les.mask[s])
            box = (cc.min(), rr.min(), cc.max() - cc.min() + 1, rr.max() - rr.min() + 1)
            shift = box_feature(vol.target[s], box) - box_feature(vol.twin[s], box)
            darkens = (les.label, vol.acquisition) in DARKENING
            assert (shift < 0) == darkens, (les.label, vol.acquisition, shift)
            seen.add((les.label, vol.acquisition))
    assert ("Bone- Subchondral edema", "CORPD_FBK") in seen and ("Bone- Subchondral edema", "CORPDFS_FBK") in seen


def test_volumes_drawn_in_parallel_are_byte_identical_to_sequential(tmp_path):
    cfg = synth.SynthConfig(image_size=32, n_slices=3, n_train=3, n_val=1, n_test=2, kneemri_exams=2,
                            kneemri_slices=3, kneemri_size=32, n_coils=2, mrnet_train=2, mrnet_valid=2,
                            mrnet_slices=(20, 21))
    for workers in (1, 2):
        synth.generate(tmp_path / f"w{workers}", cfg, seed=4, progress=False, layout="real", workers=workers)
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*") if p.is_file())
    assert len(files) > 10 and len([f for f in files if f.suffix == ".npy"]) == 12
    for rel in files:
        if rel.name == "synth.json":  # holds the seconds taken
            continue
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel


def test_a_small_cohort_is_drawn_without_starting_worker_processes(tmp_path, monkeypatch):
    """``workers=0`` means one process per core, except for cohorts so small that starting
    the workers (each imports torch) would take longer than drawing them here."""
    asked = []

    class Stop(Exception):
        pass

    @contextlib.contextmanager
    def recording(func, items, workers=0):
        asked.append(workers)
        if workers != 1:
            raise Stop  # a pool would start here: do not draw the large cohort
        yield map(func, items)

    monkeypatch.setattr(synth, "parallel_map", recording)
    small = synth.SynthConfig(image_size=32, n_slices=1, n_train=1, n_val=0, n_test=0, kneemri_exams=1,
                              kneemri_slices=1, kneemri_size=32)
    assert synth.grid_points(small) < synth.POOL_MIN_POINTS
    synth.generate(tmp_path / "small", small, progress=False)
    large = synth.SynthConfig(**get_preset("default")["synth"])
    assert synth.grid_points(large) >= synth.POOL_MIN_POINTS
    with pytest.raises(Stop):
        synth.generate(tmp_path / "large", large, progress=False)
    with pytest.raises(Stop):  # asked for, a pool is used whatever the size
        synth.generate(tmp_path / "asked", small, progress=False, workers=2)
    assert asked == [1, 0, 2]


def test_the_render_does_not_depend_on_its_block_size(monkeypatch):
    """The renderer works through blocks of rows (``CHUNK_POINTS`` grid points at a time);
    every value is elementwise arithmetic, so any block size gives the same bytes."""
    cfg = synth.SynthConfig(image_size=48, n_slices=4, kneemri_slices=4, kneemri_size=48)

    def draw():
        vol = synth.make_fastmri_volume(cfg, synth.subject_rng(3, 0, 0, 1), twin=True)
        exam, _ = synth.make_kneemri_exam(cfg, synth.subject_rng(3, 1, 0, 1))
        return [vol.kspace, vol.target, vol.twin, exam, *[les.mask for les in vol.lesions]]

    whole = draw()
    monkeypatch.setattr(synth, "CHUNK_POINTS", 1000)  # a few rows per block
    for a, b in zip(whole, draw(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_the_generators_fft_is_fastmris_to_the_bit():
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((2, 3, 10, 8)) + 1j * rng.standard_normal((2, 3, 10, 8))).astype(np.complex64)
    kspace = synth._fft2c(image)
    assert kspace.dtype == np.complex64
    assert kspace.tobytes() == T.tensor_to_complex_np(fastmri.fft2c(T.to_tensor(image))).tobytes()
    target = synth._ifft_crop(kspace, 6)
    expected = fastmri.rss(fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), (6, 6))), 1)
    assert target.shape == (2, 6, 6) and target.tobytes() == expected.numpy().tobytes()


# ------------------------------------------------------------------------- MRNet-v1.0
MRNET = dict(image_size=32, n_slices=1, n_train=1, n_val=0, n_test=0, kneemri_exams=0,
             mrnet_train=6, mrnet_valid=4, mrnet_slices=(20, 26))


@pytest.fixture(scope="module")
def mrnet_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("mrnet")
    summary = synth.generate(out, synth.SynthConfig(**MRNET), seed=2, progress=False, workers=1)
    return out / "MRNet-v1.0", summary


def test_the_mrnet_tree_has_the_real_layout(mrnet_tree):
    from mrlib.data import mrnet
    from mrlib.data.check import check_data_dir

    root, summary = mrnet_tree
    assert summary["mrnet_exams"] == {"train": 6, "valid": 4}
    ids = {"train": [f"{i:04d}" for i in range(6)], "valid": [f"{i:04d}" for i in range(6, 10)]}  # valid follows train
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["train", "valid"] + [f"{s}-{t}.csv" for s in ("train", "valid") for t in ("abnormal", "acl", "meniscus")])
    slices = set()
    for split, exam_ids in ids.items():
        for plane in ("axial", "coronal", "sagittal"):
            assert sorted(p.name for p in (root / split / plane).iterdir()) == [f"{e}.npy" for e in exam_ids]
            for e in exam_ids:
                x = np.load(root / split / plane / f"{e}.npy", allow_pickle=False)
                assert x.dtype == np.uint8 and x.shape[1:] == (256, 256) and 20 <= x.shape[0] <= 26, (split, plane, e)
                assert x.max() == 255 and (x == 0).mean() < 0.9  # scaled to uint8's range, not blank
                slices.add(x.shape[0])
        for task in ("abnormal", "acl", "meniscus"):
            lines = (root / f"{split}-{task}.csv").read_text().splitlines()
            assert [line.split(",")[0] for line in lines] == exam_ids  # header-less "0000,1" lines
            assert all(re.fullmatch(r"\d{4},[01]", line) for line in lines), lines
            labels = mrnet.read_labels(root, split, task)
            assert summary["mrnet_labels"][split][task] == labels.sum()
        meniscus = mrnet.read_labels(root, split, "meniscus")
        assert meniscus.sum() == len(meniscus) // 2  # both classes in every split
        abnormal = mrnet.read_labels(root, split, "abnormal")
        assert (abnormal >= meniscus).all() and (abnormal >= mrnet.read_labels(root, split, "acl")).all()
    assert len(slices) > 2, "the slice counts should vary between exams and planes"
    report = check_data_dir(root.parent)
    assert report.ok, report.problems
    assert report.found["mrnet"]["splits"]["valid"]["planes"] == {"axial": 4, "coronal": 4, "sagittal": 4}


def test_an_mrnet_meniscus_label_is_a_tear_in_its_coronal_series():
    cfg = synth.SynthConfig(**{**MRNET, "mrnet_slices": (20, 20)})
    for i in range(4):
        torn = i % 2 == 0
        exam = synth.make_mrnet_exam(cfg, synth.subject_rng(9, 3, 0, i), meniscus=torn, acl=False)
        tears = [les for les in exam.lesions if les.label == synth.LABELS["meniscus"]]
        assert exam.labels["meniscus"] == int(torn) and len(tears) == int(torn)
        for tear in tears:
            assert tear.mask.shape == exam.series["coronal"].shape and tear.mask.any()
            assert tear.mask.any(axis=(1, 2)).sum() <= 4, "a tear crosses a few coronal slices, not the knee"
    a, b = (synth.make_mrnet_exam(cfg, synth.subject_rng(9, 3, 0, 1), meniscus=False, acl=True) for _ in range(2))
    assert all(a.series[p].tobytes() == b.series[p].tobytes() for p in a.series) and a.labels == b.labels
    assert a.series["coronal"].tobytes() != exam.series["coronal"].tobytes()


def test_mrnet_config_validation():
    with pytest.raises(ParameterError, match="mrnet_train"):
        synth.SynthConfig(mrnet_train=4, mrnet_valid=0)
    with pytest.raises(ParameterError, match="mrnet_slices"):
        synth.SynthConfig(mrnet_slices=(30, 20))
