"""Device choice and seeding: the two things every notebook sets up first; and the CPU
threads (one OpenBLAS thread for numpy and scipy, set when this module is imported)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import multiprocessing
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, so that limit_openblas_threads reaches it)
import torch
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from .errors import ParameterError


def limit_openblas_threads() -> None:
    """Give numpy's and scipy's OpenBLAS one thread for this process, unless
    ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` (which OpenBLAS also reads) is set.

    mrlib's numpy work is small (a volume's ``np.linalg.norm`` in fastMRI's NMSE is one
    BLAS dot product), but OpenBLAS runs it on a thread per core and its threads then
    spin, waiting for more, on the cores torch's OpenMP threads need next: on 2 cores a
    torch operation after such a call waited up to 40 ms for its second thread, and
    chapter 6 of ``default`` took about a third longer. torch's own BLAS (MKL on x86, an
    OpenBLAS in ``torch.libs`` on some other platforms) keeps its threads.
    """
    if "OPENBLAS_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if not _inside_torch(lib.filepath):
            lib.set_num_threads(1)


def _inside_torch(path: str) -> bool:
    """Whether the shared library at ``path`` is torch's own (under ``torch/`` or ``torch.libs/``)."""
    packages = Path(torch.__file__).resolve().parent.parent
    try:
        return Path(path).resolve().relative_to(packages).parts[0] in ("torch", "torch.libs")
    except (ValueError, IndexError):  # elsewhere, or on another drive
        return False


limit_openblas_threads()


def pick_device(device: str = "auto") -> torch.device:
    """Return the device to compute on: CUDA, then MPS, then CPU for ``"auto"``.

    A device that is asked for by name but is not there is an error, not a silent
    fall-back to the CPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return canonical_device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ParameterError("device", f"{device!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ParameterError("device", f"{device!r} was asked for but this machine has no such CUDA device")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError("device", "'mps' was asked for but is not available here")
    return canonical_device(dev)


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` as the tensors placed on it report it: ``cuda`` becomes ``cuda:N``, N the
    current CUDA device. ``torch.device("cuda") != torch.device("cuda:0")``, so code that
    asks ``tensor.device != device`` needs the indexed form (a bank on ``cuda`` otherwise
    takes its own device-resident tensors for host ones)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


PRECISIONS = ("auto", "bf16", "fp32")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training (its steps and its validation) runs under bf16 autocast: ``auto``
    on CUDA only, ``bf16`` everywhere (on a CPU with AMX about twice as fast for the
    U-Net; its numbers then match only on the same kind of CPU), ``fp32`` never."""
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch from one integer and return a NumPy generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _worker_init() -> None:
    """A :func:`parallel_map` worker: one torch thread, and freed memory kept for reuse."""
    torch.set_num_threads(1)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Tell glibc's allocator (Linux) to reuse freed memory rather than return it to the
    kernel: by default a large array is mapped afresh on every allocation and unmapped when
    freed, and the kernel zeroes each page again. Workers drawing fastMRI-sized volumes
    spent most of their system time so (``benchmarks/bench_synth.py --preset full``: 138 s
    of system time before, 41 s after, on 2 cores). The process then keeps its peak memory
    until it exits. Returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (m_mmap_threshold, 1 << 30), (m_trim_threshold, (1 << 31) - 1), (m_top_pad, 256 << 20)))


@contextlib.contextmanager
def parallel_map(func, items, workers: int = 0):
    """``func`` over ``items``, the results in order, in ``workers`` processes (0: one per
    available core; 1: here, in this process).

    ``func`` must be a module-level function (``functools.partial`` of one is fine): the
    workers are spawned, not forked, because a fork of a process whose torch or OpenMP
    threads have run can deadlock. Each worker uses one torch thread and keeps its freed
    memory for reuse (:func:`keep_freed_memory`). At most two results
    per worker wait to be consumed, so memory stays bounded however many items there are.
    Use as ``with parallel_map(f, xs) as results: for r in results: ...``.
    """
    items = list(items)
    n = min(available_cores() if workers == 0 else int(workers), len(items))
    if n <= 1:
        yield map(func, items)
        return
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init) as pool:
        def results():
            rest = iter(items)
            pending = deque(pool.submit(func, item) for item in itertools.islice(rest, 2 * n))
            while pending:
                yield pending.popleft().result()
                pending.extend(pool.submit(func, item) for item in itertools.islice(rest, 1))
        yield results()


#: Set to "1" by the runner for the notebook kernels it starts: papermill saves a notebook
#: progress bar as it was first drawn, so the book would show every bar frozen at 0 %.
HEADLESS_ENV = "MRLIB_HEADLESS"


def progress_bar(iterable=None, progress: bool = True, **kwargs):
    """A ``tqdm.auto`` bar, hidden when ``progress`` is False or the console is plain
    (:func:`plain_console`: a headless papermill run, a log)."""
    return tqdm(iterable, disable=not progress or plain_console(), **kwargs)


def plain_console() -> bool:
    """True where progress must be plain lines: inside the runner's headless kernels, or in
    a command whose stderr is not a terminal (a log file, CI). A live notebook (Colab,
    JupyterLab) keeps its bars."""
    if os.environ.get(HEADLESS_ENV) == "1":
        return True
    return not _in_kernel() and not (sys.__stderr__ and sys.__stderr__.isatty())


def _in_kernel() -> bool:
    """Whether this process is a running Jupyter kernel (a notebook), not a command that
    merely imported IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class Heartbeat:
    """Plain progress lines for a log: at most one every ``every`` seconds, and the last.

    Writes to the process's real stderr (``sys.__stderr__``): inside a papermill kernel
    that is the runner's console, not the notebook, so the book stays clean while the
    person running it sees the training advance.

    Example line: ``[U-Net oracle] epoch 3/10: train_loss 0.0123, val_mse 0.0101; 42 s left``.
    """

    def __init__(self, desc: str, total: int, every: float = 10.0, start: int = 0, stream=None):
        self.desc, self.total, self.every = desc, int(total), float(every)
        self.stream = stream or sys.__stderr__
        self.t0 = time.perf_counter()
        self.start = int(start)
        self.last = -math.inf

    def update(self, done: int, **values: float) -> bool:
        """Report that ``done`` of ``total`` steps are finished; return whether a line was written."""
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return False
        self.last = now
        rate = (now - self.t0) / max(done - self.start, 1)
        left = rate * (self.total - done)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        self.stream.write(f"[{self.desc}] epoch {done}/{self.total}: {shown}; {left:.0f} s left\n")
        self.stream.flush()
        return True
