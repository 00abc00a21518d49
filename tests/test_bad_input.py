"""Bad input ends in one DataError naming the file and the problem, never a raw traceback.

Also: malicious ``.pck`` payloads are refused before they run, and random bytes never
escape as anything but a DataError.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mrlib.data import kneemri
from mrlib.data.check import check_data_dir
from mrlib.data.fastmri_h5 import list_volumes, slice_dataset, validate_h5
from mrlib.errors import DataError

HEADER = b"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>16</x><y>12</y><z>1</z></matrixSize></encodedSpace>
<reconSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>11</maximum><center>6</center>
</kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"""

KNEE_HEADER = "examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiHeight,roiWidth,roiDepth,volumeFilename\n"


def make_h5(path: Path, kspace=None, target="default", header=HEADER, n=2) -> Path:
    """A small single-coil file; pass arrays/None to break one part."""
    if isinstance(kspace, str) and kspace == "none":
        kspace = None
    elif kspace is None:
        kspace = np.ones((n, 16, 12), np.complex64)
    if isinstance(target, str) and target == "default":
        target = np.ones((n, 8, 8), np.float32)
    with h5py.File(path, "w") as hf:
        if kspace is not None:
            hf.create_dataset("kspace", data=kspace)
        if target is not None:
            hf.create_dataset("reconstruction_esc", data=target)
        if header is not None:
            hf.create_dataset("ismrmrd_header", data=header)
        hf.attrs["acquisition"] = "CORPD_FBK"
    return path


def _nan_kspace():
    k = np.ones((3, 16, 12), np.complex64)
    k[2, 5, 7] = complex(np.nan, 0)
    return k


def _inf_kspace():
    k = np.ones((3, 16, 12), np.complex64)
    k[1, 0, 0] = complex(0, np.inf)
    return k


def _truncated(path: Path) -> None:
    make_h5(path, n=4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_tail(path: Path) -> None:  # superblock and metadata intact, data cut
    with h5py.File(path, "w") as hf:
        hf.create_dataset("ismrmrd_header", data=HEADER)
        hf.create_dataset("reconstruction_esc", data=np.ones((2, 8, 8), np.float32))
        hf.create_dataset("kspace", data=np.ones((2, 16, 12), np.complex64) * 3)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])


H5_CASES = {
    "not_hdf5": (lambda p: p.write_bytes(b"this is not an HDF5 file\n" * 10), "not a readable HDF5 file"),
    "empty_file": (lambda p: p.write_bytes(b""), "not a readable HDF5 file"),
    "truncated": (_truncated, "HDF5"),
    "truncated_tail": (_truncated_tail, "HDF5"),
    "missing_kspace": (lambda p: make_h5(p, kspace="none"), "no 'kspace' dataset"),
    "missing_target": (lambda p: make_h5(p, target=None), "no target 'reconstruction_esc'"),
    "missing_header": (lambda p: make_h5(p, header=None), "no 'ismrmrd_header'"),
    "header_not_xml": (lambda p: make_h5(p, header=b"<ismrmrd"), "ismrmrd_header is not valid XML"),
    "header_wrong_ns": (
        lambda p: make_h5(p, header=HEADER.replace(b"http://www.ismrm.org/ISMRMRD", b"urn:other")),
        "ismrmrd_header lacks encoding/encodedSpace/matrixSize/x",
    ),
    "kspace_rank_2": (lambda p: make_h5(p, kspace=np.ones((16, 12), np.complex64)), "kspace has rank 2"),
    "kspace_rank_5": (lambda p: make_h5(p, kspace=np.ones((2, 1, 1, 16, 12), np.complex64)), "kspace has rank 5"),
    "kspace_complex128": (lambda p: make_h5(p, kspace=np.ones((2, 16, 12), np.complex128)), "dtype complex128; expected complex64"),
    "kspace_float32": (lambda p: make_h5(p, kspace=np.ones((2, 16, 12), np.float32)), "dtype float32; expected complex64"),
    "kspace_empty": (lambda p: make_h5(p, kspace=np.ones((0, 16, 12), np.complex64), target=None), "kspace is empty"),
    "kspace_nan": (lambda p: make_h5(p, kspace=_nan_kspace(), n=3), "kspace slice 2 holds 1 NaN/Inf"),
    "kspace_inf": (lambda p: make_h5(p, kspace=_inf_kspace(), n=3), "kspace slice 1 holds 1 NaN/Inf"),
    "target_nan": (
        lambda p: make_h5(p, target=np.full((2, 8, 8), np.nan, np.float32)),
        "reconstruction_esc slice 0 holds 64 NaN/Inf",
    ),
    "target_slices": (
        lambda p: make_h5(p, target=np.ones((3, 8, 8), np.float32)),
        "reconstruction_esc has 3 slices but kspace has 2",
    ),
    "target_rank": (lambda p: make_h5(p, target=np.ones((2, 8), np.float32)), "reconstruction_esc has rank 2"),
    "target_dtype": (lambda p: make_h5(p, target=np.ones((2, 8, 8), np.int16)), "dtype int16; expected float32"),
    "target_vs_header": (
        lambda p: make_h5(p, target=np.ones((2, 9, 8), np.float32)),
        "images are 9x8 but the header's reconSpace matrixSize is 8x8",
    ),
}


@pytest.mark.parametrize("case", sorted(H5_CASES))
def test_bad_h5(tmp_path, case):
    build, problem = H5_CASES[case]
    path = tmp_path / f"bad_{case}.h5"
    build(path)
    with pytest.raises(DataError) as exc:
        validate_h5(path)
    assert exc.value.where == str(path)
    assert problem in exc.value.problem, str(exc.value)
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", ["missing_kspace", "kspace_nan", "target_slices", "not_hdf5"])
def test_bad_h5_in_slice_dataset(tmp_path, case):
    """The wrapper validates first, so the error names the bad file, not fastMRI internals."""
    make_h5(tmp_path / "a_good.h5")
    bad = tmp_path / "b_bad.h5"
    H5_CASES[case][0](bad)
    with pytest.raises(DataError, match=rf"b_bad\.h5: .*{H5_CASES[case][1][:12]}"):
        slice_dataset(tmp_path)


def test_slice_dataset_without_validation_still_names_file(tmp_path):
    make_h5(tmp_path / "x.h5", header=None)
    with pytest.raises(DataError, match=r"x\.h5: fastmri.data.SliceDataset cannot read it"):
        slice_dataset(tmp_path, validate=False)


def test_nan_check_can_be_skipped(tmp_path):
    p = make_h5(tmp_path / "nan.h5", kspace=_nan_kspace(), n=3)
    assert validate_h5(p, check_finite=False).n_slices == 3


@pytest.mark.parametrize("kind", ["missing", "empty", "only_other_files", "is_a_file"])
def test_bad_directory(tmp_path, kind):
    d = tmp_path / "split"
    if kind == "empty":
        d.mkdir()
    elif kind == "only_other_files":
        d.mkdir()
        (d / "notes.txt").write_text("x")
    elif kind == "is_a_file":
        d.write_text("x")
    for fn in (list_volumes, slice_dataset):
        with pytest.raises(DataError) as exc:
            fn(d)
        assert exc.value.where == str(d)


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "unknown_layout"])
def test_check_data_dir_bad_directory(tmp_path, kind):
    d = tmp_path / "data"
    if kind == "empty":
        d.mkdir()
    elif kind == "file":
        d.write_text("x")
    elif kind == "unknown_layout":
        (d / "something").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        check_data_dir(d)
    assert exc.value.where == str(d)


# ---------------------------------------------------------------- kneeMRI metadata.csv


@pytest.mark.parametrize(
    "text, problem",
    [
        ("examId,seriesNo,aclDiagnosis\n1,1,0\n", "missing column(s) kneeLR, roiX, roiY, roiZ"),
        (KNEE_HEADER.replace("volumeFilename", "file"), "missing column(s) volumeFilename"),
        ("", "metadata file is empty"),
        (KNEE_HEADER, "has no exam rows"),
        ("\xff\xfe\x00garbage", "not a readable CSV (UnicodeDecodeError"),
    ],
)
def test_bad_metadata_csv(tmp_path, text, problem):
    p = tmp_path / "metadata.csv"
    p.write_text(text, encoding="latin1")
    with pytest.raises(DataError) as exc:
        kneemri.read_metadata(p)
    assert exc.value.where == str(p)
    assert problem in exc.value.problem


def test_missing_metadata_csv(tmp_path):
    with pytest.raises(DataError, match=r"metadata.csv: metadata file does not exist"):
        kneemri.read_metadata(tmp_path)


# ---------------------------------------------------------------- .pck payloads


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, object]:
    m = str(marker)
    code = f"open({m!r}, 'w').close()"
    return {
        "os_system": _Payload(os.system, (f"touch {m}",)),
        "subprocess_call": _Payload(subprocess.call, (["touch", m],)),
        "eval": _Payload(eval, (code,)),
        "builtins_exec": _Payload(builtins.exec, (code,)),
        "posix_system_in_dict": {"volume": np.zeros((1, 2, 2)), "x": _Payload(os.system, (f"touch {m}",))},
        "pathlib_touch": _Payload(Path.touch, (marker,)),
        # what a Python-2 era exploit looks like: numpy-looking start, then posix.system
        "raw_posix_system": _Raw(b"cposix\nsystem\n(Vtouch " + m.encode() + b"\ntR."),
    }


class _Raw:
    """Hand-written pickle bytes (e.g. a global that a Python object cannot name)."""

    def __init__(self, data: bytes):
        self.data = data


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize(
    "name",
    ["os_system", "subprocess_call", "eval", "builtins_exec", "posix_system_in_dict", "pathlib_touch", "raw_posix_system"],
)
def test_malicious_pck_is_refused_and_never_runs(tmp_path, name, protocol):
    marker = tmp_path / "PWNED"
    payload = _payloads(marker)[name]
    p = tmp_path / f"evil_{name}.pck"
    p.write_bytes(payload.data if isinstance(payload, _Raw) else pickle.dumps(payload, protocol=protocol))
    assert not marker.exists()
    with pytest.raises(DataError) as exc:
        kneemri.load_pck(p)
    assert exc.value.where == str(p)
    assert "refused to unpickle" in exc.value.problem
    assert not marker.exists()


def test_malicious_pck_names_the_global(tmp_path):
    p = tmp_path / "evil.pck"
    p.write_bytes(pickle.dumps(_Payload(builtins.exec, ("1",)), protocol=4))
    with pytest.raises(DataError, match=r"evil\.pck: refused to unpickle global 'builtins\.exec'"):
        kneemri.load_pck(p)


def test_codecs_encode_only_latin1(tmp_path):
    """_codecs.encode is allowed (protocol-2 bytes) but only in its latin1 form."""
    p = tmp_path / "codec.pck"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x0a\x00\x00\x00zlib_codec\x86R.")
    with pytest.raises(DataError, match=r"codec\.pck: refused to unpickle: _codecs.encode with 'zlib_codec'"):
        kneemri.load_pck(p)


@pytest.mark.parametrize(
    "obj, problem",
    [
        ([1, 2, 3], "holds a list, not a numpy array"),
        ({"a": 1}, "holds a dict"),
        (np.zeros((4, 4), np.int16), "rank 2"),
        (np.zeros((2, 2, 2, 2), np.int16), "rank 4"),
        (np.array([[["a"]]]), "refused to unpickle: dtype dtype('<U1') is not a plain numeric dtype"),
        (np.array([[[1]]], dtype=object), "refused to unpickle: dtype dtype('O')"),
        (np.zeros((2, 2, 2), bool), "dtype bool"),
        (np.zeros((0, 2, 2), np.int16), "empty"),
    ],
)
def test_pck_not_a_volume(tmp_path, obj, problem):
    p = tmp_path / "odd.pck"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError) as exc:
        kneemri.load_pck(p)
    assert exc.value.where == str(p)
    assert problem in exc.value.problem


@pytest.mark.parametrize("cut", [0, 1, 10, 60, -1])
def test_pck_truncated(tmp_path, cut):
    raw = pickle.dumps(np.arange(24, dtype=np.int16).reshape(2, 3, 4), protocol=2)
    p = tmp_path / "trunc.pck"
    p.write_bytes(raw[:cut] if cut >= 0 else raw[:-1])
    # cut inside a GLOBAL opcode, the half-read name is refused; elsewhere it is truncated
    with pytest.raises(DataError, match=r"trunc\.pck: (not a valid pickled volume|refused to unpickle global)"):
        kneemri.load_pck(p)


def test_pck_garbage_and_missing(tmp_path):
    p = tmp_path / "garbage.pck"
    p.write_bytes(b"GIF89a\x00\x01garbage")
    with pytest.raises(DataError, match=r"garbage\.pck: not a valid pickled volume"):
        kneemri.load_pck(p)
    with pytest.raises(DataError, match=r"nothere\.pck: volume file does not exist"):
        kneemri.load_pck(tmp_path / "nothere.pck")


# ---------------------------------------------------------------- random bytes

_VALID_PCK = pickle.dumps(np.arange(8, dtype=np.int16).reshape(2, 2, 2), protocol=2)
_PREFIXES = st.sampled_from([b"", b"\x80\x02", b"\x80\x04\x95", b"\x89HDF\r\n\x1a\n", _VALID_PCK[:40], KNEE_HEADER.encode()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIXES, body=st.binary(max_size=300))
def test_random_bytes_only_raise_data_error(prefix, body):
    data = prefix + body
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, load in (
            ("v.h5", validate_h5),
            ("v.pck", kneemri.load_pck),
            ("metadata.csv", kneemri.read_metadata),
        ):
            p = d / name
            p.write_bytes(data)
            with pytest.raises(DataError) as exc:
                load(p)
            assert exc.value.where.startswith(str(d))


@settings(max_examples=100, deadline=None)
@example(pos=0, byte=_VALID_PCK[0])  # the unchanged pickle: read back as the original array
@example(pos=len(_VALID_PCK) // 2, byte=_VALID_PCK[len(_VALID_PCK) // 2])
@given(pos=st.integers(0, len(_VALID_PCK) - 1), byte=st.integers(0, 255))
def test_mutated_pickle_is_array_or_data_error(pos, byte):
    """A one-byte change of a valid pickle either still gives a rank-3 array or a DataError."""
    data = bytearray(_VALID_PCK)
    data[pos] = byte
    unchanged = bytes(data) == _VALID_PCK
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.pck"
        p.write_bytes(bytes(data))
        try:
            vol = kneemri.load_pck(p)
        except DataError as exc:
            assert not unchanged, f"the valid pickle was refused: {exc}"
            assert exc.where == str(p)
        else:
            assert type(vol) is np.ndarray and vol.ndim == 3
            if unchanged:
                np.testing.assert_array_equal(vol, np.arange(8, dtype=np.int16).reshape(2, 2, 2))
                assert vol.dtype == np.int16


def test_pck_crafted_dtype_state_is_refused(tmp_path):
    """numpy's dtype.__setstate__ crashes the interpreter on this state; it is never called."""
    raw = bytearray(pickle.dumps(np.arange(8, dtype=np.int16).reshape(2, 2, 2), protocol=2))
    pos = raw.index(b"X\x01\x00\x00\x00<") + 6  # the BINPUT after the byte-order field
    raw[pos] = ord("J")  # BININT swallows the next bytes and shifts the state tuple
    p = tmp_path / "dtype_state.pck"
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"dtype_state\.pck: (refused to unpickle|not a valid pickled volume)"):
        kneemri.load_pck(p)


def test_pck_huge_announced_length_is_not_allocated(tmp_path):
    import struct

    p = tmp_path / "bomb.pck"
    p.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 42) + b"x.")  # BYTEARRAY8 of 4 TiB
    with pytest.raises(DataError, match=r"bomb\.pck: not a valid pickled volume .*truncated"):
        kneemri.load_pck(p)
