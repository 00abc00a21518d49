"""Device choice and seeding: the two things every notebook sets up first."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ParameterError


def pick_device(device: str = "auto") -> torch.device:
    """Return the device to compute on: CUDA, then MPS, then CPU for ``"auto"``.

    A device that is asked for by name but is not there is an error, not a silent
    fall-back to the CPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
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
    return dev


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch from one integer and return a NumPy generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


#: Set to "1" by the runner for the notebook kernels it starts: papermill saves a notebook
#: progress bar as it was first drawn, so the book would show every bar frozen at 0 %.
HEADLESS_ENV = "MRLIB_HEADLESS"


def progress_bar(iterable=None, progress: bool = True, **kwargs):
    """A ``tqdm.auto`` bar, hidden when ``progress`` is False or in a headless papermill run."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress or os.environ.get(HEADLESS_ENV) == "1", **kwargs)
