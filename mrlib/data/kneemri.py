"""kneeMRI (Stajduhar et al. 2017): pickled volumes and ``metadata.csv``.

Each exam is one ``.pck`` file holding a pickled numpy volume indexed ``[z, y, x]`` with
12-bit integer values; the real files are Python-2 pickles. A pickle runs whatever
callables it names, so :func:`load_pck` never calls ``pickle.load`` unrestricted: its
unpickler resolves only the few numpy globals that rebuild an ndarray and refuses
everything else before it can run.

``metadata.csv`` has one row per exam: ``examId, seriesNo, aclDiagnosis (0 healthy,
1 partial tear, 2 complete tear), kneeLR, roiX, roiY, roiZ, roiHeight, roiWidth,
roiDepth, volumeFilename``. The ROI spans ``x in [roiX, roiX+roiWidth)``, ``y in [roiY,
roiY+roiHeight)``, ``z in [roiZ, roiZ+roiDepth)``.
"""

from __future__ import annotations

import codecs
import io
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..errors import DataError, ParameterError
from .tables import integer_column, read_csv

REQUIRED_COLUMNS = (
    "examId",
    "seriesNo",
    "aclDiagnosis",
    "kneeLR",
    "roiX",
    "roiY",
    "roiZ",
    "roiHeight",
    "roiWidth",
    "roiDepth",
    "volumeFilename",
)
INTEGER_COLUMNS = REQUIRED_COLUMNS[:-1]
ACL_LABELS = {0: "healthy", 1: "partial tear", 2: "complete tear"}


class _Refused(pickle.UnpicklingError):
    """The pickle is well formed but asks for something a volume never needs."""


_DTYPE_KINDS = "biufc"  # bool, int, uint, float, complex: plain numbers only


def _checked_dtype(dt: Any, what: str = "dtype") -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.kind not in _DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f"{what} {dt!r} is not a plain numeric dtype")
    return dt


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise _Refused(f"array shape {shape!r} is not a tuple of sizes")
    return shape


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def _safe_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` for a plain numeric type code only, always a fresh copy."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if type(spec) is not str or len(spec) > 8:
        raise _Refused(f"dtype spec {spec!r} is not a type code")
    try:
        dt = np.dtype(spec)
    except TypeError as exc:
        raise _Refused(f"dtype spec {spec!r}: {exc}") from None
    _checked_dtype(dt)
    return np.dtype(spec, align=False, copy=True)  # a copy: BUILD may set its byte order


def _safe_reconstruct(subtype: Any, shape: Any, code: Any) -> np.ndarray:
    """``_reconstruct(ndarray, (0,), b"b")``: the empty array that BUILD then fills."""
    if subtype is not np.ndarray or shape != (0,) or code not in (b"b", "b"):
        raise _Refused("_reconstruct is allowed only as _reconstruct(numpy.ndarray, (0,), b'b')")
    return np.ndarray((0,), np.uint8)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy._core.numeric._frombuffer`` (protocol-5 pickles), with every argument checked."""
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused("_frombuffer needs an in-band byte buffer")
    dtype, shape = _checked_dtype(dtype), _checked_shape(shape)
    if order not in ("C", "F") or len(buf) != _nbytes(shape, dtype):
        raise _Refused(f"_frombuffer: {len(buf)} bytes do not make an array {shape} of {dtype}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy(order="K")


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode(str, "latin1")``: how Python 3 writes bytes in protocols 0-2."""
    if type(obj) is not str or type(encoding) is not str or codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"_codecs.encode with {encoding!r} is not allowed")
    return obj.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how Python 3 writes empty bytes in protocols 0-2."""
    if args:
        raise _Refused("bytes() with arguments is not allowed")
    return b""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled ndarray needs, under numpy 1.x and 2.x module names.

    Each maps to a checked stand-in, never to the numpy function itself.
    """
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _safe_dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _safe_reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = _safe_frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    allowed[("__builtin__", "bytes")] = allowed[("builtins", "bytes")] = _empty_bytes
    return allowed


_CALLABLES = (_safe_dtype, _safe_reconstruct, _safe_frombuffer, _latin1_encode, _empty_bytes)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    - ``find_class`` resolves only the globals of :func:`_numpy_globals`; any other global
      (``os.system``, ``builtins.eval``, ...) raises :class:`DataError` before it is called,
      and the numpy ones resolve to checked stand-ins.
    - REDUCE may call only those stand-ins; NEWOBJ/OBJ/INST are refused.
    - BUILD (``__setstate__``) runs only on a fresh ``numpy.dtype`` with the canonical
      state of a plain numeric type, or on a fresh ``ndarray`` with a checked shape, dtype
      and a data buffer of exactly the right length. numpy's own ``__setstate__`` is not
      safe on arbitrary input (a crafted dtype state can crash the interpreter), so it is
      never given one.

    It builds on the pure-Python ``pickle._Unpickler`` because the C unpickler's opcodes
    cannot be overridden.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, where: Path):
        super().__init__(file, encoding="latin1")
        self.where = where
        self._size = len(file.getbuffer())
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise DataError(
                self.where,
                f"refused to unpickle global '{module}.{name}': a .pck may only hold a numpy array",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent ids are not allowed")

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in _CALLABLES) or type(args) is not tuple:
            raise _Refused(f"calling {func!r} is not allowed")
        self.stack[-1] = func(*args)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            if not (
                type(state) is tuple
                and len(state) == 8
                and state[0] == 3
                and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, inst.flags)
            ):
                raise _Refused(f"unsupported dtype state {state!r}")
            inst.__setstate__((3, state[1], None, None, None, -1, -1, inst.flags))
            _checked_dtype(inst)
        elif type(inst) is np.ndarray and inst.shape == (0,) and inst.dtype == np.uint8:
            if type(state) is not tuple or len(state) not in (4, 5):
                raise _Refused("unsupported ndarray state")
            shape, dtype, fortran, data = state[-4:]
            if len(state) == 5 and state[0] != 1:
                raise _Refused(f"unsupported ndarray state version {state[0]!r}")
            shape, dtype = _checked_shape(shape), _checked_dtype(dtype)
            if type(data) not in (bytes, str) or fortran not in (0, 1):
                raise _Refused("ndarray state holds no raw data buffer")
            if len(data) != _nbytes(shape, dtype):
                raise _Refused(f"{len(data)} bytes do not make an array {shape} of {dtype}")
            inst.__setstate__((1, shape, dtype, bool(fortran), data))
        else:
            raise _Refused(f"setting the state of a {type(inst).__name__} is not allowed")

    def _load_bytearray8(self) -> None:
        # the pure-Python unpickler allocates the announced length before reading it
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n) if n <= self._size else b""
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated (BYTEARRAY8)")
        self.append(bytearray(data))

    def _refuse(self) -> None:
        raise _Refused("object-creating opcodes (NEWOBJ/OBJ/INST) are not allowed")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST):
        dispatch[_op[0]] = _refuse
    del _op


def load_pck(path: str | Path) -> np.ndarray:
    """Load one kneeMRI volume with the restricted unpickler.

    Returns:
        The volume as stored, an ndarray of rank 3 ``[z, y, x]`` with a numeric dtype.

    Raises:
        DataError: missing file, truncated or garbage pickle, a refused global, or a
            result that is not a numeric rank-3 ndarray.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "volume file does not exist")
    try:
        # in memory: a length field in the file can then never make a read allocate more
        obj = RestrictedUnpickler(io.BytesIO(path.read_bytes()), path).load()
    except DataError:
        raise
    except _Refused as exc:
        raise DataError(path, f"refused to unpickle: {exc}; a .pck may only hold a numpy array of numbers") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, MemoryError, ...
        raise DataError(path, f"not a valid pickled volume (truncated or garbage: {type(exc).__name__}: {exc})") from None
    if type(obj) is not np.ndarray:
        raise DataError(path, f"holds a {type(obj).__name__}, not a numpy array")
    if obj.ndim != 3:
        raise DataError(path, f"volume has rank {obj.ndim} (shape {obj.shape}); expected [z, y, x]")
    if obj.dtype.kind not in "iuf":
        raise DataError(path, f"volume has dtype {obj.dtype}; expected integers or floats")
    if 0 in obj.shape:
        raise DataError(path, f"volume is empty (shape {obj.shape})")
    return obj


def _csv_path(path_or_dir: str | Path) -> Path:
    p = Path(path_or_dir)
    return p / "metadata.csv" if p.is_dir() else p


def _volume_index(root: Path) -> dict[str, Path]:
    """``.pck`` files under ``root`` by name (real kneeMRI puts them in vol01..vol08)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*.pck")):
        index.setdefault(p.name, p)
    return index


def metadata_problems(
    df: pd.DataFrame, csv_path: Path, check_files: bool = True
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Validate a raw ``metadata.csv`` table; collect every problem.

    Returns:
        ``(df, problems)``: the table with integer columns, an added ``volumePath``
        column (the resolved volume file, or None) and, with ``check_files``, a
        ``volumeShape`` column ([z, y, x] or None), and ``(where, problem)`` pairs.
    """
    problems: list[tuple[str, str]] = []
    where = str(csv_path)
    df = df.rename(columns=lambda c: str(c).strip())
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        return df, [(where, f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))})")]
    if len(df) == 0:
        return df, [(where, "has no exam rows")]
    df = df.copy()
    line = pd.Series(np.arange(len(df)) + 2, index=df.index)  # CSV line numbers
    bad_rows: set = set()
    for col in INTEGER_COLUMNS:
        raw = df[col]
        values, bad = integer_column(raw)
        for i in df.index[bad]:
            problems.append((where, f"line {line[i]}: {col} is {raw[i]!r}, not an integer"))
            bad_rows.add(i)
        df[col] = values
    ok = ~df.index.isin(list(bad_rows))
    for i in df.index[ok & ~df["aclDiagnosis"].isin([0, 1, 2])]:
        problems.append((where, f"line {line[i]}: aclDiagnosis is {df.at[i, 'aclDiagnosis']}, expected 0, 1 or 2"))
    for col in ("roiX", "roiY", "roiZ"):
        for i in df.index[ok & (df[col] < 0)]:
            problems.append((where, f"line {line[i]}: {col} is negative ({df.at[i, col]})"))
    for col in ("roiHeight", "roiWidth", "roiDepth"):
        for i in df.index[ok & (df[col] <= 0)]:
            problems.append((where, f"line {line[i]}: {col} is {df.at[i, col]}, expected a positive size"))
    df["volumeFilename"] = df["volumeFilename"].fillna("").astype(str).str.strip()

    root = csv_path.parent
    index: dict[str, Path] | None = None
    paths: list[Path | None] = []
    shapes: list[tuple | None] = []
    for i, name in zip(df.index, df["volumeFilename"]):
        if not name:
            paths.append(None)
            shapes.append(None)
            problems.append((where, f"line {line[i]}: volumeFilename is empty"))
            continue
        p = root / name
        if not p.is_file():
            if index is None:
                index = _volume_index(root)
            p = index.get(Path(name).name)
        paths.append(p)
        shapes.append(None)
        if not check_files:
            continue
        if p is None:
            problems.append((where, f"line {line[i]}: volume file {name!r} not found under {root}"))
            continue
        if i in bad_rows:
            continue
        try:
            vol = load_pck(p)
        except DataError as exc:
            problems.append((exc.where, exc.problem))
            continue
        z, y, x = shapes[-1] = vol.shape
        r = df.loc[i]
        if r.roiZ + r.roiDepth > z or r.roiY + r.roiHeight > y or r.roiX + r.roiWidth > x:
            problems.append(
                (
                    where,
                    f"line {line[i]}: ROI x {r.roiX}+{r.roiWidth}, y {r.roiY}+{r.roiHeight}, "
                    f"z {r.roiZ}+{r.roiDepth} lies outside volume {name} of shape [z, y, x] = {vol.shape}",
                )
            )
    df["volumePath"] = paths
    if check_files:
        df["volumeShape"] = shapes
    return df, problems


def read_metadata(path_or_dir: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Read and validate kneeMRI ``metadata.csv``.

    Args:
        path_or_dir: the CSV, or the directory holding ``metadata.csv`` and the volumes.
        check_files: also load every volume: it must exist, unpickle safely and contain
            its ROI.

    Returns:
        The table with integer columns and ``volumePath`` (resolved file path).

    Raises:
        DataError: the first problem found, with a count of the others.
    """
    csv_path = _csv_path(path_or_dir)
    df, problems = metadata_problems(read_csv(csv_path, "metadata file"), csv_path, check_files)
    if problems:
        where, what = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(where, what + more)
    return df


TASKS: dict[str, Callable[[pd.Series], int]] = {
    "acl": lambda r: int(r.aclDiagnosis > 0),  # any tear
    "acl_complete": lambda r: int(r.aclDiagnosis == 2),
    "acl3": lambda r: int(r.aclDiagnosis),  # 0 healthy, 1 partial, 2 complete
}


class KneeMRIDataset(torch.utils.data.Dataset):
    """kneeMRI exams as ``(volume, label, roi)``.

    Args:
        path_or_dir: ``metadata.csv`` or its directory.
        task: ``"acl"`` (default: aclDiagnosis > 0), ``"acl_complete"`` (== 2),
            ``"acl3"`` (0/1/2), or a callable from a metadata row to an int label.
        transform: optional callable applied to the volume tensor.
        check_files: validate every volume up front (see :func:`read_metadata`).
        metadata: an already read (and possibly subset) table to use instead.

    Items:
        ``volume``: float32 tensor ``(z, y, x)``; ``label``: int; ``roi``: dict with
        ``x, y, z, width, height, depth`` (ints).
    """

    def __init__(
        self,
        path_or_dir: str | Path,
        task: str | Callable[[pd.Series], int] = "acl",
        transform: Callable | None = None,
        check_files: bool = True,
        metadata: pd.DataFrame | None = None,
    ):
        if isinstance(task, str):
            if task not in TASKS:
                raise ParameterError("task", f"unknown task {task!r}; use one of {', '.join(TASKS)} or a callable")
            self.label_fn = TASKS[task]
        elif callable(task):
            self.label_fn = task
        else:
            raise ParameterError("task", "must be a task name or a callable")
        self.df = read_metadata(path_or_dir, check_files=check_files) if metadata is None else metadata
        self.df = self.df.reset_index(drop=True)
        self.transform = transform
        self.labels = [int(self.label_fn(r)) for _, r in self.df.iterrows()]

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, dict]:
        r = self.df.iloc[i]
        if r.volumePath is None:
            raise DataError(r.volumeFilename, "volume file not found")
        vol = torch.from_numpy(load_pck(r.volumePath).astype(np.float32, copy=False))
        if self.transform is not None:
            vol = self.transform(vol)
        roi = {
            "x": int(r.roiX),
            "y": int(r.roiY),
            "z": int(r.roiZ),
            "width": int(r.roiWidth),
            "height": int(r.roiHeight),
            "depth": int(r.roiDepth),
        }
        return vol, self.labels[i], roi
