"""Bad input, tried systematically with hypothesis (adds to tests/test_bad_input.py).

Every loader and the command line, fed random or broken input, either returns what it
promises or raises the project's own error (a :class:`mrlib.errors.MrlibError` naming the
file or parameter): never a library exception, never a hang, never a half-written output.

Covered here: fastMRI+ annotation CSVs (garbage cells, missing/extra columns, boxes
outside the image), kneeMRI ``metadata.csv`` values (NaN, Inf, huge, negative, text),
``.pck`` volumes of any dtype/rank with NaN/Inf (and ``prepare_exam`` after them),
MRNet-v1.0 ``.npy`` exams (dtypes, ranks, absurd announced sizes), Grad-CAM heatmap files,
and ``python -m mrlib run -p name=value`` with random names and values.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import string
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mrlib.errors import DataError
from mrlib.rundir import RunDir

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])

# cells a CSV may hold: good numbers, edge numbers, text, blanks, injection-looking strings
CELL = st.one_of(
    st.integers(-5, 400).map(str),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "9" * 30, "-0", "3.5", "1e3", "0x10",
                     "None", "null", "=cmd|' /C calc'!A0", "\x00", "é", "1,2", '"', "\n"]),
    st.text(string.printable, max_size=8),
)


def _beyond_int64(cell: str) -> bool:
    try:
        return not abs(float(cell.strip())) < 2**62
    except ValueError:
        return False


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


# --------------------------------------------------------------------------- fastMRI+ boxes

BOX_HEADER = ["file", "slice", "study_level", "x", "y", "width", "height", "label"]


@st.composite
def box_csvs(draw):
    header = list(BOX_HEADER)
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    if draw(st.integers(0, 5)) == 0:  # a missing column
        header.remove(draw(st.sampled_from(header)))
    if draw(st.integers(0, 4)) == 0:  # an extra garbage column
        header.append(draw(st.sampled_from(["", "x", "extra", "Unnamed: 0"])))
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        good = {"file": "file1000000", "slice": str(draw(st.integers(0, 3))),
                "study_level": draw(st.sampled_from(["No", "Yes", "no", ""])),
                "x": str(draw(st.integers(0, 70))), "y": str(draw(st.integers(0, 70))),
                "width": str(draw(st.integers(0, 70))), "height": str(draw(st.integers(0, 70))),
                "label": "Meniscus Tear"}
        row = [good.get(h, "") for h in header]
        if draw(st.booleans()):  # break one cell
            row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        rows.append(row)
    return header, rows


#: A well-formed annotation file: it must be read, every property test tries it first.
VALID_BOXES = (list(BOX_HEADER), [["file1000000", "1", "No", "10", "12", "8", "6", "Meniscus Tear"]])


@FAST
@example(spec=VALID_BOXES, shape=(64, 64))
@given(spec=box_csvs(), shape=st.tuples(st.integers(1, 80), st.integers(1, 80)))
def test_annotation_csv_is_read_or_refused(spec, shape):
    from mrlib.data.annotations import BOX_COLUMNS, check_boxes_in_image, read_boxes

    # inf / 1e400: a known bug, test_annotation_with_an_infinite_coordinate
    assume(not any(_beyond_int64(cell) for row in spec[1] for cell in row))
    valid = (spec, shape) == (VALID_BOXES, (64, 64))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "knee.csv"
        _write_csv(p, *spec)
        try:
            df = read_boxes(p, image_height=shape[0])
        except DataError as exc:
            assert not valid, f"a valid annotation file was refused: {exc}"
            assert exc.where == str(p)
            return
        assert list(df.columns) == list(BOX_COLUMNS)
        if valid:  # the box as written, its row flipped into image coordinates
            assert df[["file", "slice", "x", "width", "height"]].values.tolist() == [["file1000000", 1, 10, 8, 6]]
            assert df.y.tolist() == [64 - 12 - 6]
        assert (df.slice >= 0).all() and (df[["width", "height"]] >= 1).all().all()  # zero-size boxes dropped
        # clipped to the rows [0, H) and to x >= 0 (the width is unknown to read_boxes here)
        assert ((df.x >= 0) & (df.y >= 0) & (df.y + df.height <= shape[0])).all()
        try:
            check_boxes_in_image(df, shape, p)
        except DataError as exc:
            assert exc.where == str(p) and "lies outside" in exc.problem
        else:  # every box really is inside
            assert ((df.x >= 0) & (df.y >= 0) & (df.x + df.width <= shape[1]) & (df.y + df.height <= shape[0])).all()


def test_box_outside_the_image_is_named(tmp_path):
    from mrlib.data.annotations import check_boxes_in_image, read_boxes

    p = tmp_path / "knee.csv"
    _write_csv(p, BOX_HEADER, [["file1000000", "1", "No", "60", "2", "10", "5", "Meniscus Tear"]])
    df = read_boxes(p, image_height=64)
    with pytest.raises(DataError, match=r"knee\.csv: line 2: box x=60 .* of file1000000 slice 1 lies outside the 64x64"):
        check_boxes_in_image(df, (64, 64), p)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400"])
def test_annotation_with_an_infinite_coordinate(tmp_path, value):
    from mrlib.data.annotations import read_boxes

    p = tmp_path / "knee.csv"
    _write_csv(p, BOX_HEADER, [["file1000000", "1", "No", value, "2", "10", "5", "Meniscus Tear"]])
    with pytest.raises(DataError, match=r"knee\.csv: line 2: x"):
        read_boxes(p, image_height=64)


# --------------------------------------------------------------------------- kneeMRI metadata

KNEE_COLUMNS = ["examId", "seriesNo", "aclDiagnosis", "kneeLR", "roiX", "roiY", "roiZ", "roiHeight", "roiWidth",
                "roiDepth", "volumeFilename"]


@st.composite
def knee_csvs(draw):
    header = list(KNEE_COLUMNS)
    if draw(st.integers(0, 5)) == 0:
        header.remove(draw(st.sampled_from(header)))
    rows = []
    for i in range(draw(st.integers(1, 3))):
        good = dict(zip(KNEE_COLUMNS, [str(i), "1", str(draw(st.integers(0, 2))), "0", "2", "2", "1", "3", "3",
                                       "1", f"vol{i}.pck"]))
        row = [good.get(h, "") for h in header]
        for _ in range(draw(st.integers(0, 2))):
            row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        rows.append(row)
    return header, rows


#: A well-formed kneeMRI metadata file (the strategy's row before any cell is broken).
VALID_KNEE = (list(KNEE_COLUMNS), [["0", "1", "1", "0", "2", "2", "1", "3", "3", "1", "vol0.pck"]])


@FAST
@example(spec=VALID_KNEE)
@given(spec=knee_csvs())
def test_kneemri_metadata_is_read_or_refused(spec):
    from mrlib.data import kneemri

    # numbers beyond int64 (inf, 1e400, 30 digits): a known bug, test_kneemri_roi_overflowing_int64_is_refused
    assume(not any(_beyond_int64(cell) for row in spec[1] for cell in row))
    valid = spec == VALID_KNEE
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "metadata.csv"
        _write_csv(p, *spec)
        for i in range(3):  # real volumes [z, y, x] = (2, 6, 6) for the ROI checks
            (Path(d) / f"vol{i}.pck").write_bytes(pickle.dumps(np.ones((2, 6, 6), np.int16), protocol=2))
        try:
            df = kneemri.read_metadata(p)
        except DataError as exc:
            assert not valid, f"a valid metadata file was refused: {exc}"
            assert exc.where.startswith(d), exc
            return
        if valid:
            assert len(df) == 1 and df.aclDiagnosis.tolist() == [1] and df.roiWidth.tolist() == [3]
        assert set(df.aclDiagnosis) <= {0, 1, 2}
        for col in ("roiX", "roiY", "roiZ"):
            assert (df[col] >= 0).all(), (col, df[col].tolist())
        for col in ("roiHeight", "roiWidth", "roiDepth"):
            assert (df[col] > 0).all(), (col, df[col].tolist())
        assert ((df.roiZ + df.roiDepth <= 2) & (df.roiY + df.roiHeight <= 6) & (df.roiX + df.roiWidth <= 6)).all()


@pytest.mark.parametrize("value", ["inf", "1e400", "-inf", "9" * 30])
def test_kneemri_roi_overflowing_int64_is_refused(tmp_path, value):
    """An ROI coordinate that is not a representable integer is a DataError, not a wrapped int64."""
    from mrlib.data import kneemri

    row = ["1", "1", "0", "0", value, "2", "1", "3", "3", "1", "vol0.pck"]
    _write_csv(tmp_path / "metadata.csv", KNEE_COLUMNS, [row])
    (tmp_path / "vol0.pck").write_bytes(pickle.dumps(np.ones((2, 6, 6), np.int16), protocol=2))
    with pytest.raises(DataError, match=r"metadata\.csv: .*roiX"):
        kneemri.read_metadata(tmp_path / "metadata.csv")


# --------------------------------------------------------------------------- .pck volumes

DTYPES = st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32,
                          np.float64, np.complex64, np.bool_])


@FAST
@example(dtype=np.int16, shape=[2, 5, 5], poison=None, protocol=2)  # kneeMRI's own kind: must be read
@given(dtype=DTYPES, shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       poison=st.sampled_from([None, np.nan, np.inf, -np.inf]), protocol=st.sampled_from([2, 4, 5]))
def test_pck_volume_then_prepare_exam(dtype, shape, poison, protocol):
    from mrlib.classifier import prepare_exam
    from mrlib.data import kneemri

    valid = (dtype, shape, poison, protocol) == (np.int16, [2, 5, 5], None, 2)
    arr = np.zeros(shape, dtype)
    if poison is not None and arr.size and np.issubdtype(dtype, np.floating):
        arr.flat[arr.size // 2] = poison
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.pck"
        p.write_bytes(pickle.dumps(arr, protocol=protocol))
        try:
            vol = kneemri.load_pck(p)
        except DataError as exc:
            assert not valid, f"a valid volume was refused: {exc}"
            assert exc.where == str(p)
            return
        assert vol.ndim == 3 and vol.size > 0
        if valid:
            np.testing.assert_array_equal(vol, arr)
        try:
            x = prepare_exam(vol, where=str(p), size=32)
        except DataError as exc:
            assert exc.where == str(p) and (poison is not None)
            return
        assert bool(np.isfinite(x.numpy()).all())
        if valid:
            assert tuple(x.shape) == (2, 3, 32, 32)


# --------------------------------------------------------------------------- MRNet-v1.0 .npy


def _mrnet_root(d: Path) -> Path:
    root = d / "MRNet-v1.0"
    (root / "train" / "sagittal").mkdir(parents=True)
    return root


@FAST
@example(dtype=np.uint8, shape=[2, 4, 4], fortran=False)  # MRNet-v1.0's own kind: must be read
@given(dtype=DTYPES, shape=st.lists(st.integers(0, 4), min_size=0, max_size=4), fortran=st.booleans())
def test_npy_exam_is_uint8_rank3_or_refused(dtype, shape, fortran):
    from mrlib.data import mrnet

    valid = (dtype, shape, fortran) == (np.uint8, [2, 4, 4], False)
    with tempfile.TemporaryDirectory() as d:
        root = _mrnet_root(Path(d))
        arr = np.zeros(shape, dtype)
        if arr.size:
            arr.flat[:] = np.arange(arr.size) % 2  # not all zeros: the values must come through
        np.save(root / "train" / "sagittal" / "0000.npy", np.asfortranarray(arr) if fortran else arr)
        try:
            exam = mrnet.load_exam(root, "train", "sagittal", "0000")
        except DataError as exc:
            assert not valid, f"a valid exam was refused: {exc}"
            assert "0000.npy" in exc.where
            return
        assert exam.dtype == np.uint8 and exam.ndim == 3 and exam.size
        if valid:
            np.testing.assert_array_equal(exam, arr)


@pytest.mark.parametrize("shape", [(10**9, 256, 256), (2**62, 1, 1), (3, -1, 256)])
def test_npy_exam_with_an_absurd_announced_shape(tmp_path, shape):
    """A header that announces far more data than the file holds: refused, nothing huge allocated."""
    from mrlib.data import mrnet

    root = _mrnet_root(tmp_path)
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    path = root / "train" / "sagittal" / "0000.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header) if shape[1] >= 0 else f.write(
            b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (3, -1, 256), }" + b" " * 49
            + b"\n")
        f.write(b"\x00" * 1024)
    with pytest.raises(DataError) as exc:
        mrnet.load_exam(root, "train", "sagittal", "0000")
    assert exc.value.where == str(path)


# --------------------------------------------------------------------------- heatmap files


def _heatmap_file(path: Path, maps: np.ndarray, scores: np.ndarray | None = None, stem="file1000000") -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group(f"gradcam/{stem}")
        g.create_dataset("maps", data=maps)
        g.create_dataset("scores", data=np.zeros(maps.shape[0] if maps.ndim else 1, np.float32)
                         if scores is None else scores)
        f.attrs["methods"] = json.dumps(["gradcam"])
        f.attrs["image_shapes"] = json.dumps({stem: [int(s) for s in maps.shape]})
    return path


@FAST
@example(shape=[2, 3, 3], dtype=np.float32, expect=None, method="gradcam", stem="file1000000")
@example(shape=[2, 3, 3], dtype=np.float32, expect=(2, 3, 3), method="GradCAM ", stem="file1000000.h5")
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int16, np.uint8]),
       expect=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))),
       method=st.sampled_from(["gradcam", "GradCAM ", "layercam"]), stem=st.sampled_from(["file1000000",
                                                                                           "file1000000.h5", "x"]))
def test_heatmap_file_is_read_or_refused(shape, dtype, expect, method, stem):
    from mrlib.cam import read_heatmaps

    # a rank-3 numeric map of a file stem the file holds, of the expected geometry, is read
    valid = len(shape) == 3 and stem.removesuffix(".h5") == "file1000000" and method.strip().lower() == "gradcam" \
        and expect in (None, tuple(shape))
    values = (np.arange(int(np.prod(shape))) % 3).reshape(shape).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        p = _heatmap_file(Path(d) / "heatmaps.h5", values)
        kw = dict(n_slices=expect[0], shape=expect[1:]) if expect else {}
        try:
            maps, scores = read_heatmaps(p, method, stem, **kw)
        except DataError as exc:
            assert not valid, f"a valid heatmap file was refused: {exc}"
            assert exc.where == str(p)
            return
        assert valid, "an invalid heatmap request was accepted"
        assert maps.dtype == np.float32 and maps.ndim == 3 and scores.shape == (maps.shape[0],)
        np.testing.assert_array_equal(maps, values.astype(np.float32))
        if expect:
            assert maps.shape == expect


@pytest.mark.parametrize("maps", [
    pytest.param(np.void(b"\x80\x04not numbers"), id="opaque"),
    pytest.param(np.zeros((1, 2, 2), dtype=[("a", "f4"), ("b", "i4")]), id="compound"),
    pytest.param(np.array([[[b"a", b"b"]]]), id="bytes"),
])
def test_heatmap_maps_of_a_non_numeric_dtype(tmp_path, maps):
    from mrlib.cam import read_heatmaps

    p = tmp_path / "heatmaps.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("gradcam/file1000000")
        g.create_dataset("maps", data=maps)
        g.create_dataset("scores", data=np.zeros(1, np.float32))
    with pytest.raises(DataError, match=r"heatmaps\.h5: "):
        read_heatmaps(p, "gradcam", "file1000000")


def test_heatmap_maps_that_is_a_group(tmp_path):
    from mrlib.cam import read_heatmaps

    p = tmp_path / "heatmaps.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("gradcam/file1000000")
        g.create_group("maps")
        g.create_dataset("scores", data=np.zeros(1, np.float32))
    with pytest.raises(DataError, match=r"heatmaps\.h5: "):
        read_heatmaps(p, "gradcam", "file1000000")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_heatmap_maps_with_nan_or_inf(tmp_path, bad):
    from mrlib.cam import read_heatmaps

    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, 2, 2] = bad
    p = _heatmap_file(tmp_path / "heatmaps.h5", maps)
    with pytest.raises(DataError, match=r"heatmaps\.h5: .*(NaN|Inf)"):
        read_heatmaps(p, "gradcam", "file1000000")


def test_heatmap_info_with_a_deeply_nested_attribute(tmp_path):
    from mrlib.cam import heatmap_info

    p = tmp_path / "heatmaps.h5"
    with h5py.File(p, "w") as f:
        f.attrs["methods"] = "[" * 100_000
        f.attrs["image_shapes"] = "{}"
    with pytest.raises(DataError, match=r"heatmaps\.h5: "):
        heatmap_info(p)


def test_failed_heatmaps_leave_no_half_written_file(tmp_path):
    """A bad volume in the middle of compute_heatmaps: no heatmaps.h5, no temporary file."""
    import torch

    from mrlib.cam import compute_heatmaps
    from mrlib.models import MRNet

    torch.manual_seed(0)
    bad = np.ones((2, 64, 64), np.float32)
    bad[1, 3, 3] = np.nan
    out = tmp_path / "gradcam" / "heatmaps.h5"
    vols = [("file1", np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)), ("file2", bad)]
    with pytest.raises(DataError, match="file2: holds NaN or Inf"):
        compute_heatmaps(MRNet(), vols, ["gradcam"], out, progress=False, input_size=64)
    assert not out.exists() and list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def fast_cli(tmp_path_factory):
    """``main()`` in-process, in a scratch working directory; notebooks are inspected once,
    and running one is replaced by a marker exception."""
    import functools
    import os

    import mrlib.pipeline as pl

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("fuzz_cwd"))

    class Reached(Exception):
        pass

    saved = pl.declared_parameters, pl._execute
    pl.declared_parameters = functools.lru_cache(maxsize=None)(pl.declared_parameters)

    def execute(*a, **k):
        raise Reached

    pl._execute = execute
    try:
        yield Reached
    finally:
        pl.declared_parameters, pl._execute = saved
        os.chdir(cwd)


# run_dir, data_dir and preset are set by --run-dir, --data and --preset: -p refuses them
NAMES = st.one_of(st.sampled_from(["seed", "unet_epochs", "alpha", "variants", "accelerations", "interactive",
                                   "pretrained", "device", "mrnet_lr", "methods", "run_dir", "data_dir", "preset"]),
                  st.text(string.ascii_letters + string.digits + "_-. ", min_size=0, max_size=10))
VALUES = st.one_of(st.sampled_from(["1", "-1", "1.5", "True", "None", "[4, 8]", "['a']", "{'a': 1}", "(1,",
                                    "__import__('os').system('touch PWNED')", "1e999", "nan", "", "=", "'x'"]),
                   st.text(string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=12))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preset=st.sampled_from(["smoke", "default", "bogus", "fastmri", ""]), name=NAMES, value=VALUES,
       sep=st.sampled_from(["=", "==", " = ", ""]))
def test_run_parameters_are_checked_before_anything_runs(fast_cli, tmp_path_factory, capsys, preset, name, value, sep):
    from mrlib.__main__ import main

    capsys.readouterr()  # the fixture lives across examples: drop what earlier ones printed
    run_dir = tmp_path_factory.mktemp("fuzz_run") / "run"
    try:
        code = main(["run", "--preset", preset, "--run-dir", str(run_dir), "--quiet", "-p", f"{name}{sep}{value}"])
    except fast_cli:
        assert RunDir(run_dir).stamp.is_file()  # a valid request: the stamp is written, then notebooks run
        return
    except SystemExit as exc:  # argparse's own usage error
        assert exc.code == 2
        return
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert not RunDir(run_dir).stamp.exists() and not RunDir(run_dir).default_data.exists()
    assert not Path("PWNED").exists()


@pytest.mark.parametrize("argv, where", [
    (["run", "--preset", "nope"], "--preset"),
    (["run", "--preset", "fastmri"], "--data"),
    (["run", "--preset", "smoke", "-p", "seeds=0"], "parameter seeds"),
    (["run", "--preset", "smoke", "-p", "unet_lr=fast"], "parameter unet_lr"),
    (["run", "--preset", "smoke", "-p", "interactive=1"], "parameter interactive"),
    (["run", "--preset", "smoke", "-p", "no_such_thing=1"], "-p no_such_thing"),
    (["run", "--preset", "smoke", "-p", "9lives=1"], "-p 9lives=1"),
    (["run", "--preset", "smoke", "-p", "run_dir=elsewhere"], "-p run_dir"),
    (["run", "--preset", "smoke", "-p", "data_dir=elsewhere"], "-p data_dir"),
    (["run", "--preset", "smoke", "-p", "preset=full"], "-p preset"),
    (["synth", "--preset", "nope", "--data", "x"], "--preset"),
    (["params", "--preset", "smoke", "-p", "seed=x"], "parameter seed"),
    (["train", "--variant", "nope"], "variants"),
])
def test_cli_errors_name_what_is_wrong(fast_cli, tmp_path, capsys, argv, where):
    from mrlib.__main__ import main

    argv = [*argv, "--run-dir", str(tmp_path / "run")] if argv[0] in ("run", "train") else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {where}"), err
    assert not (tmp_path / "run").exists()
