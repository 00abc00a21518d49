"""Readers of fastMRI HDF5, kneeMRI .pck/metadata.csv, MRNet-v1.0 and fastMRI+ boxes.

Fixture files are built here with h5py/pickle/numpy (no dependency on the synthetic
generator), small enough that the whole module runs in seconds.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.mri_data import AnnotatedSliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from hypothesis import given, settings
from hypothesis import strategies as st

from mrlib.data import annotations as ann
from mrlib.data import kneemri, mrnet
from mrlib.data.check import check_data_dir
from mrlib.data.fastmri_h5 import (
    find_splits,
    list_volumes,
    read_volume,
    slice_dataset,
    validate_h5,
)
from mrlib.errors import DataError, ParameterError

# ---------------------------------------------------------------- fixture builders


def ismrmrd_header(enc=(32, 24, 1), rec=(16, 16, 1)) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{enc[0]}</x><y>{enc[1]}</y><z>{enc[2]}</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{rec[0]}</x><y>{rec[1]}</y><z>{rec[2]}</z></matrixSize></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{enc[1] - 1}</maximum><center>{enc[1] // 2}</center></kspace_encoding_step_1>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>""".encode()


def write_h5(path: Path, n_slices=3, coils=None, rows=32, cols=24, recon=16, target=True, seed=0) -> Path:
    """A tiny fastMRI-format file (single-coil, or multi-coil if ``coils``)."""
    rng = np.random.default_rng(seed)
    shape = (n_slices, rows, cols) if coils is None else (n_slices, coils, rows, cols)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace)
        hf.create_dataset("ismrmrd_header", data=ismrmrd_header((rows, cols, 1), (recon, recon, 1)))
        if target:
            key = "reconstruction_esc" if coils is None else "reconstruction_rss"
            tg = rng.random((n_slices, recon, recon)).astype(np.float32)
            hf.create_dataset(key, data=tg)
            hf.attrs["max"] = float(tg.max())
            hf.attrs["norm"] = float(np.linalg.norm(tg))
        hf.attrs["acquisition"] = "CORPD_FBK"
        hf.attrs["patient_id"] = "abc123"
    return path


KNEE_HEADER = "examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiHeight,roiWidth,roiDepth,volumeFilename\n"


def write_pck(path: Path, vol: np.ndarray, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(vol, protocol=protocol))
    return path


def write_kneemri(d: Path, n=3, shape=(6, 20, 20)) -> Path:
    """``n`` exams with aclDiagnosis 0, 1, 2, ... and ROIs inside their volumes."""
    rows = []
    for i in range(n):
        vol = (np.arange(np.prod(shape)).reshape(shape) % 4096).astype(np.uint16)
        write_pck(d / f"{1000 + i}-1.pck", vol)
        rows.append(f"{1000 + i},1,{i % 3},{i % 2},2,3,1,10,12,4,{1000 + i}-1.pck\n")
    (d / "metadata.csv").write_text(KNEE_HEADER + "".join(rows))
    return d / "metadata.csv"


def python2_pickle(vol: np.ndarray) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: numpy.core globals, data as a py2 str."""
    assert vol.dtype.byteorder in "<=|" and vol.ndim == 3
    data = vol.tobytes()
    dt = vol.dtype.str  # e.g. '<i2'
    import struct

    def short(s: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(s)]) + s

    def k(i: int) -> bytes:  # BININT1
        return b"K" + bytes([i])

    out = b"\x80\x02"
    out += b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
    out += k(0) + b"\x85" + short(b"b") + b"\x87" + b"R"  # _reconstruct(ndarray, (0,), 'b')
    out += b"(" + k(1) + k(vol.shape[0]) + k(vol.shape[1]) + k(vol.shape[2]) + b"\x87"
    out += b"cnumpy\ndtype\n" + short(dt[1:].encode()) + k(0) + k(1) + b"\x87" + b"R"
    out += b"(" + k(3) + short(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + k(0) + b"t" + b"b"
    out += b"\x89" + b"T" + struct.pack("<I", len(data)) + data + b"t" + b"b" + b"."
    return out


# ---------------------------------------------------------------- fastMRI HDF5


def test_validate_h5_describes_single_and_multicoil(tmp_path):
    info = validate_h5(write_h5(tmp_path / "a.h5"))
    assert info.challenge == "singlecoil"
    assert info.n_slices == 3
    assert info.kspace_shape == (3, 32, 24)
    assert info.target_key == "reconstruction_esc"
    assert info.target_shape == (3, 16, 16)
    assert info.acquisition == "CORPD_FBK"
    assert info.recon_size == (16, 16, 1)
    info = validate_h5(write_h5(tmp_path / "b.h5", coils=4))
    assert (info.challenge, info.kspace_shape, info.target_key) == ("multicoil", (3, 4, 32, 24), "reconstruction_rss")


def test_validate_h5_test_split_without_target(tmp_path):
    f = write_h5(tmp_path / "t.h5", target=False)
    with pytest.raises(DataError, match="reconstruction_esc"):
        validate_h5(f)
    info = validate_h5(f, require_target=False)
    assert info.target_key is None and info.target_shape is None


def test_slice_dataset_with_unet_transform(tmp_path):
    split = tmp_path / "fastmri" / "singlecoil_train"
    write_h5(split / "file1.h5", n_slices=3, seed=1)
    write_h5(split / "file2.h5", n_slices=2, seed=2)
    (split / "README.txt").write_text("not a volume")  # fastMRI alone would crash on this
    mask = RandomMaskFunc(center_fractions=[0.25], accelerations=[4], seed=0)
    ds = slice_dataset(split, "singlecoil", transform=UnetDataTransform("singlecoil", mask_func=mask))
    assert isinstance(ds, SliceDataset)
    assert len(ds) == 5
    sample = ds[4]
    assert sample.image.shape == (16, 16)
    assert sample.target.shape == (16, 16)
    assert sample.image.dtype == torch.float32
    assert sample.fname == "file2.h5" and sample.slice_num == 1
    assert sample.max_value == pytest.approx(h5py.File(split / "file2.h5")["reconstruction_esc"][()].max())


def test_slice_dataset_multicoil(tmp_path):
    split = tmp_path / "multicoil_val"
    write_h5(split / "m.h5", n_slices=2, coils=3)
    ds = slice_dataset(split, "multicoil", transform=UnetDataTransform("multicoil"))
    assert len(ds) == 2
    assert ds[0].image.shape == (16, 16)
    with pytest.raises(DataError, match="m.h5.*multicoil k-space"):
        slice_dataset(split, "singlecoil")
    with pytest.raises(ParameterError, match="challenge"):
        slice_dataset(split, "bicoil")
    with pytest.raises(ParameterError, match="cache"):
        slice_dataset(split, "multicoil", use_dataset_cache=True)


def test_slice_dataset_test_split_without_target(tmp_path):
    split = tmp_path / "singlecoil_test"
    write_h5(split / "t.h5", target=False)
    ds = slice_dataset(split, transform=UnetDataTransform("singlecoil"), require_target=False)
    s = ds[0]
    assert s.image.shape == (16, 16)  # cropped to the header's recon size


def test_list_volumes_and_find_splits(tmp_path):
    base = tmp_path / "fastmri"
    write_h5(base / "singlecoil_train" / "b.h5")
    write_h5(base / "singlecoil_train" / "a.h5")
    write_h5(base / "singlecoil_val" / "c.h5")
    assert [p.name for p in list_volumes(base / "singlecoil_train")] == ["a.h5", "b.h5"]
    splits = find_splits(tmp_path)
    assert splits == {"train": base / "singlecoil_train", "val": base / "singlecoil_val"}
    with pytest.raises(DataError, match="multicoil_train"):
        find_splits(tmp_path, "multicoil")


def test_read_volume(tmp_path):
    f = write_h5(tmp_path / "v.h5", n_slices=2)
    kspace, target, attrs = read_volume(f)
    assert kspace.shape == (2, 32, 24) and kspace.dtype == np.complex64
    assert target.shape == (2, 16, 16) and target.dtype == np.float32
    assert attrs["acquisition"] == "CORPD_FBK" and attrs["patient_id"] == "abc123"
    assert attrs["max"] == pytest.approx(float(target.max()))
    assert attrs["recon_size"] == (16, 16, 1)


# ---------------------------------------------------------------- kneeMRI


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", ["<u2", ">i2", ">f4", "<i4"])
def test_pck_round_trip(tmp_path, protocol, dtype):
    vol = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 37 % 4096).astype(dtype)
    f = write_pck(tmp_path / "v.pck", vol, protocol)
    out = kneemri.load_pck(f)
    assert type(out) is np.ndarray
    assert out.dtype.newbyteorder("=") == vol.dtype.newbyteorder("=")
    if protocol == 5:
        assert out.dtype == vol.dtype  # big-endian kept
    assert out.shape == vol.shape
    np.testing.assert_array_equal(out, vol)


def test_pck_python2_pickle(tmp_path):
    vol = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 11 % 4096).astype("<i2")
    raw = python2_pickle(vol)
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw
    p = tmp_path / "py2.pck"
    p.write_bytes(raw)
    out = kneemri.load_pck(p)
    assert out.dtype == np.dtype("<i2")
    np.testing.assert_array_equal(out, vol)


def test_read_metadata_and_dataset(tmp_path):
    csv = write_kneemri(tmp_path / "kneemri", n=3)
    df = kneemri.read_metadata(csv.parent)
    assert list(df["examId"]) == [1000, 1001, 1002]
    assert df["aclDiagnosis"].dtype == np.int64
    assert all(Path(p).is_file() for p in df["volumePath"])
    ds = kneemri.KneeMRIDataset(csv)
    assert len(ds) == 3
    assert ds.labels == [0, 1, 1]  # default task: any ACL tear
    vol, label, roi = ds[2]
    assert vol.dtype == torch.float32 and tuple(vol.shape) == (6, 20, 20)
    assert label == 1
    assert roi == {"x": 2, "y": 3, "z": 1, "width": 12, "height": 10, "depth": 4}
    assert kneemri.KneeMRIDataset(csv, task="acl_complete").labels == [0, 0, 1]
    assert kneemri.KneeMRIDataset(csv, task=lambda r: int(r["kneeLR"])).labels == [0, 1, 0]
    with pytest.raises(ParameterError, match="acl3"):
        kneemri.KneeMRIDataset(csv, task="meniscus")


def test_read_metadata_finds_volumes_in_subfolders(tmp_path):
    d = tmp_path / "kneemri"
    csv = write_kneemri(d, n=2)
    (d / "vol01").mkdir()
    for p in d.glob("*.pck"):
        p.rename(d / "vol01" / p.name)
    df = kneemri.read_metadata(csv)
    assert [Path(p).parent.name for p in df["volumePath"]] == ["vol01", "vol01"]


def test_read_metadata_roi_outside_volume(tmp_path):
    csv = write_kneemri(tmp_path, n=1)
    csv.write_text(KNEE_HEADER + "1000,1,0,0,2,3,4,10,12,4,1000-1.pck\n")  # z 4+4 > 6
    with pytest.raises(DataError, match=r"metadata.csv: line 2: ROI .* outside volume 1000-1.pck"):
        kneemri.read_metadata(csv)
    assert len(kneemri.read_metadata(csv, check_files=False)) == 1


@pytest.mark.parametrize(
    "row, match",
    [
        ("1000,1,3,0,2,3,1,10,12,4,1000-1.pck", "aclDiagnosis is 3"),
        ("1000,1,x,0,2,3,1,10,12,4,1000-1.pck", "aclDiagnosis is 'x', not an integer"),
        ("1000,1,0,0,2.5,3,1,10,12,4,1000-1.pck", "roiX is '2.5', not an integer"),
        ("1000,1,0,0,2,3,1,-10,12,4,1000-1.pck", "roiHeight is -10"),
        ("1000,1,0,0,2,3,1,10,12,4,nothere.pck", "'nothere.pck' not found"),
    ],
)
def test_read_metadata_bad_rows(tmp_path, row, match):
    csv = write_kneemri(tmp_path, n=1)
    csv.write_text(KNEE_HEADER + row + "\n")
    with pytest.raises(DataError, match=match) as exc:
        kneemri.read_metadata(csv)
    assert "metadata.csv" in str(exc.value)


# ---------------------------------------------------------------- MRNet


def write_mrnet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, ids in (("train", [0, 1, 2]), ("valid", [3])):
        for plane in mrnet.PLANES:
            (root / split / plane).mkdir(parents=True)
            for e in ids:
                np.save(root / split / plane / f"{e:04d}.npy", rng.integers(0, 255, (2 + e, 8, 8), dtype=np.uint8))
        for t, task in enumerate(mrnet.TASKS):
            (root / f"{split}-{task}.csv").write_text("".join(f"{e:04d},{(e + t) % 2}\n" for e in ids))
    return root


def test_mrnet_labels_and_exams(tmp_path):
    root = write_mrnet(tmp_path / "MRNet-v1.0")
    lab = mrnet.read_labels(root, "train", "acl")
    assert list(lab.index) == ["0000", "0001", "0002"]
    assert list(lab) == [1, 0, 1]
    x = mrnet.load_exam(root, "train", "sagittal", 2)
    assert x.shape == (4, 8, 8) and x.dtype == np.uint8
    assert mrnet.load_exam(root, "valid", "axial", "0003").shape == (5, 8, 8)
    assert mrnet.list_exams(root, "train", "coronal") == ["0000", "0001", "0002"]
    assert mrnet.find_root(tmp_path) == root
    with pytest.raises(ParameterError, match="abnormal, acl, meniscus"):
        mrnet.read_labels(root, "train", "tumour")
    with pytest.raises(ParameterError, match="axial, coronal, sagittal"):
        mrnet.load_exam(root, "train", "oblique", 0)
    with pytest.raises(ParameterError, match="train, valid"):
        mrnet.load_exam(root, "test", "axial", 0)


def test_mrnet_bad_files(tmp_path):
    root = write_mrnet(tmp_path / "mrnet")
    with pytest.raises(DataError, match="0009.npy: exam file does not exist"):
        mrnet.load_exam(root, "train", "axial", 9)
    np.save(root / "train" / "axial" / "0000.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="0000.npy: exam has dtype float32"):
        mrnet.load_exam(root, "train", "axial", 0)
    np.save(root / "train" / "axial" / "0001.npy", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="0001.npy: exam has rank 2"):
        mrnet.load_exam(root, "train", "axial", 1)
    np.save(root / "train" / "axial" / "0002.npy", np.array([[[{"a": 1}]]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="0002.npy: refused"):
        mrnet.load_exam(root, "train", "axial", 2)
    (root / "valid-acl.csv").write_text("0003,7\n")
    with pytest.raises(DataError, match="valid-acl.csv: line 1: label '7'"):
        mrnet.read_labels(root, "valid", "acl")


# ---------------------------------------------------------------- fastMRI+ annotations

ANN_HEADER = "file,slice,study_level,x,y,width,height,label\n"


@settings(max_examples=40, deadline=None)
@given(
    H=st.integers(8, 400),
    data=st.data(),
)
def test_annotation_flip_round_trip(H, data):
    h = data.draw(st.integers(1, H))
    y_img = data.draw(st.integers(0, H - h))
    x, w = data.draw(st.integers(0, 50)), data.draw(st.integers(1, 50))
    y_csv = ann.flip_y(y_img, h, H)
    assert 0 <= y_csv <= H - h
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "knee.csv"
        p.write_text(ANN_HEADER + f"file1000001,7,No,{x},{y_csv},{w},{h},Meniscus Tear\n")
        df = ann.read_boxes(p, image_height=H)
    assert ann.boxes_for(df, "file1000001.h5", 7) == [(x, y_img, w, h, "Meniscus Tear")]
    assert ann.boxes_for(df, "file1000001", 6) == []


def test_annotations_agree_with_fastmri(tmp_path):
    p = tmp_path / "knee.csv"
    p.write_text(
        ANN_HEADER
        + "file1000001,12,No,120,90,40,25,Bone- Subchondral edema\n"
        + "file1000001,,Yes,,,,,Artifact\n"
        + "file1000002,3,No,10,200,30,60,ACL High Grade Sprain\n"
    )
    df = ann.read_boxes(p, image_height=320)
    assert len(df) == 2 and df.attrs["n_study_level"] == 1
    assert df.attrs["study_level_labels"] == ["artifact"]  # canonical spelling
    csv = pd.read_csv(p)
    for i, (_, row) in enumerate(csv[csv.study_level == "No"].iterrows()):
        a = AnnotatedSliceDataset.get_annotation(None, row, 320)
        got = df.iloc[i]
        assert (got.file, got.slice, got.x, got.y, got.width, got.height, got.label) == (
            a["fname"], a["slice"], a["x"], a["y"], a["width"], a["height"], a["label"]
        )
    assert ann.boxes_for(df, "file1000001", 12) == [(120, 320 - 90 - 25, 40, 25, "Bone- Subchondral edema")]


def test_annotation_bad_inputs(tmp_path):
    p = tmp_path / "knee.csv"
    p.write_text("file,slice,x,y,width,label\nf,1,1,1,1,a\n")
    with pytest.raises(DataError, match="knee.csv: missing column.*study_level.*height"):
        ann.read_boxes(p)
    p.write_text(ANN_HEADER + "f,1,No,1,1,1,1,a\nf,2,No,abc,1,1,1,a\n")
    with pytest.raises(DataError, match="knee.csv: line 3: x is 'abc'"):
        ann.read_boxes(p)
    p.write_text(ANN_HEADER + "f,-1,No,1,1,4,1,a\n")
    with pytest.raises(DataError, match="knee.csv: line 2: slice is negative"):
        ann.read_boxes(p)
    p.write_text(ANN_HEADER + "f,1,No,1,1,-4,1,a\n")  # a negative width is a degenerate box, dropped
    assert ann.read_boxes(p).attrs["n_degenerate"] == 1
    p.write_text(ANN_HEADER + "f,1,No,1,1,1,1,a\nf,1,No,300,10,30,10,b\n")
    df = ann.read_boxes(p, image_height=320)
    ann.check_boxes_in_image(df.iloc[:1], (320, 320), p)
    with pytest.raises(DataError, match=r"knee.csv: line 3: box x=300 .* outside the 320x320 image"):
        ann.check_boxes_in_image(df, (320, 320), p)


# ---------------------------------------------------------------- check-data


def test_check_data_dir_good_and_bad(tmp_path):
    write_h5(tmp_path / "fastmri" / "singlecoil_train" / "good.h5", n_slices=3)
    bad = write_h5(tmp_path / "fastmri" / "singlecoil_train" / "bad.h5", n_slices=2)
    with h5py.File(bad, "a") as hf:
        hf["kspace"][1, 0, 0] = np.nan
    write_h5(tmp_path / "fastmri" / "singlecoil_test" / "t.h5", n_slices=2, target=False)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "knee.csv").write_text(
        ANN_HEADER + "good,1,No,2,3,4,5,Meniscus Tear\ngood,9,No,2,3,4,5,Meniscus Tear\n"
        + "good,0,No,12,3,9,5,Meniscus Tear\n"  # partly outside the 16x16 image: clipped, no problem
    )
    write_kneemri(tmp_path / "kneemri", n=3)
    (tmp_path / "kneemri" / "1002-1.pck").write_bytes(b"\x80\x02garbage")
    write_mrnet(tmp_path / "MRNet-v1.0")

    report = check_data_dir(tmp_path)
    assert not report.ok
    train = report.found["fastmri"]["singlecoil_train"]
    assert (train["files"], train["bad_files"], train["slices"]) == (1, 1, 3)
    assert train["kspace_shapes"] == {"32x24": 1} and train["acquisitions"] == {"CORPD_FBK": 1}
    assert report.found["fastmri"]["singlecoil_test"]["files"] == 1
    assert report.found["annotations"]["boxes"] == 3 and report.found["annotations"]["clipped"] == 1
    assert report.found["kneemri"]["exams"] == 3
    assert report.found["kneemri"]["labels"] == {"0": 1, "1": 1, "2": 1}
    assert report.found["mrnet"]["splits"]["train"]["planes"]["axial"] == 3
    wheres = [w for w, _ in report.problems]
    assert len(report.problems) == 3, report.problems
    assert any(w.endswith("bad.h5") and "NaN" in what for w, what in report.problems)
    assert any(w.endswith("knee.csv") and "slice 9" in what for w, what in report.problems)
    assert any(w.endswith("1002-1.pck") for w in wheres)
    text = report.format()
    assert "singlecoil_train: 1 file(s) ok, 1 bad, 3 slice(s)" in text
    assert "bad.h5" in text and "1002-1.pck" in text and "3 problem(s)" in text

    shallow = check_data_dir(tmp_path, deep=False)  # no NaN scan, no volume loading
    assert shallow.found["fastmri"]["singlecoil_train"]["files"] == 2
    assert len(shallow.problems) == 1


def test_check_data_dir_clean(tmp_path):
    write_h5(tmp_path / "fastmri" / "multicoil_val" / "m.h5", coils=2)
    report = check_data_dir(tmp_path)
    assert report.ok, report.problems
    # what was found, not only that nothing was wrong
    assert report.found["fastmri"]["multicoil_val"] == {
        "files": 1, "bad_files": 0, "slices": 3, "kspace_shapes": {"2x32x24": 1}, "target_shapes": {"16x16": 1},
        "acquisitions": {"CORPD_FBK": 1}}
    text = report.format()
    assert "multicoil_val: 1 file(s) ok, 3 slice(s)" in text
    assert "no problems found" in text


def _partial_copy(root: Path) -> Path:
    """Two validation files, three kneeMRI exams, MRNet with 3 training and 1 validation exam."""
    write_h5(root / "fastmri" / "singlecoil_val" / "a.h5", n_slices=2)
    write_h5(root / "fastmri" / "singlecoil_val" / "b.h5", n_slices=2, seed=1)
    write_kneemri(root / "kneemri", n=3)
    write_mrnet(root / "MRNet-v1.0")
    return root


def test_check_data_warns_for_each_split_with_fewer_files_than_the_real_download(tmp_path, capsys):
    from mrlib.__main__ import main

    data = _partial_copy(tmp_path)
    report = check_data_dir(data)
    assert report.ok, report.problems  # a warning is not a problem
    short = {c.label: (c.found, c.expected) for c in report.counts if c.short}
    assert short == {"fastmri/singlecoil_val": (2, 199), "kneemri/metadata.csv": (3, 917),
                     "mrnet/train": (3, 1130), "mrnet/valid": (1, 120)}
    text = report.format()
    assert "fastmri/singlecoil_val: 2 of 199 files" in text
    assert "warning: fastmri/singlecoil_val: 2 files, fewer than the 199 of the real download" in text
    assert "warning: mrnet/train: 3 exams, fewer than the 1130" in text
    assert len(report.warnings) == 4 and text.rstrip().endswith("no problems found")

    assert main(["check-data", str(data), "--quick"]) == 0  # the exit status stays that of valid data
    out = capsys.readouterr().out
    assert "warning: kneemri/metadata.csv: 3 exams, fewer than the 917" in out
    assert "problem" not in out.replace("no problems found", "")


def test_check_data_does_not_warn_when_a_split_holds_what_the_real_download_holds(tmp_path, monkeypatch):
    from mrlib.data import expected

    data = _partial_copy(tmp_path)
    rows = {("fastmri", "singlecoil_val"): 2, ("kneemri", "metadata.csv"): 3, ("mrnet", "train"): 3}
    monkeypatch.setattr(expected, "EXPECTED", tuple(
        e._replace(count=rows[e.dataset, e.split]) for e in expected.EXPECTED if (e.dataset, e.split) in rows))
    report = check_data_dir(data)
    assert report.ok and report.warnings == []
    text = report.format()
    assert "warning" not in text
    assert "fastmri/singlecoil_val: 2 of 2 files" in text and "mrnet/train: 3 of 3 exams" in text
    # a split the table has no checked count for is reported without one, and never warned about
    assert "mrnet/valid: 1 item(s) (no checked count for the real download)" in text
    # one file more than the real download is no warning either
    write_h5(data / "fastmri" / "singlecoil_val" / "c.h5", n_slices=2, seed=2)
    assert check_data_dir(data, deep=False).warnings == []
