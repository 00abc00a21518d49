"""Shared fixtures: small synthetic data, and the smoke runs the chain tests share.

The chain runs go through the command line exactly as a user runs them; each run writes
only into its own run directory (its executed notebooks and its book included), so no
test touches the checkout and none needs to move the project root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One torch (OpenMP) thread per process, set before anything imports torch so that the
# chains, kernels and CLI calls the tests start inherit it. The suite runs on two workers
# and the smoke pair runs two chains at once: with torch's default of a thread per core,
# three or four processes share two cores, and OpenMP threads spin at every barrier while
# waiting for a descheduled sibling. Two concurrent smoke chains took 144 s each so, and
# 57 s each with one thread. Runs the tests compare are all made with this one setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from mrlib.rundir import NOTEBOOKS, RunDir  # noqa: E402  (after the thread setting)

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent

#: The smoke chain, shrunk further, for the tests that run it more than once.
SHRUNK = ["variants=['unweighted','gradcam']", "methods=['gradcam']", "mrnet_epochs=2", "unet_epochs=2"]


def cli(*args: str, cwd: Path | None = None, background: bool = False, timeout: int = 900, env=None):
    """``python -m mrlib ARGS`` in a subprocess (stdout not a terminal: the plain console)."""
    cmd = [PY, "-m", "mrlib", *args]
    env = {**os.environ, **(env or {})}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def shrunk_run_args(run_dir: Path, *extra: str, command: str = "run") -> list[str]:
    """``run`` arguments of the shrunk smoke chain into ``run_dir``."""
    return [command, "--preset", "smoke", "--run-dir", str(run_dir), "--quiet",
            *[a for p in SHRUNK for a in ("-p", p)], *extra]


def finished(run_dir: Path) -> bool:
    stamp = RunDir(run_dir).stamp
    return stamp.is_file() and set(json.loads(stamp.read_text()).get("finished", [])) == set(NOTEBOOKS)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    """Keep the tests that share an expensive fixture on one pytest-xdist worker.

    The suite runs on two workers (``-n 2 --dist loadgroup`` in pyproject.toml); a session
    or module fixture is made once per worker that needs it. So every test that reads the
    shared smoke runs (:func:`smoke_pair`) is one group, and every module with a
    module-scoped fixture (a cohort, a trained model) is one group; the other tests go
    wherever a worker is free.
    """
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if "smoke_pair" in info.names_closure:
            group = "smoke_pair"
        elif any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            group = item.module.__name__
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


class SmokeRun:
    """A finished run and what its command printed (stdout and stderr, interleaved)."""

    def __init__(self, run_dir: Path, log: str):
        self.path = run_dir
        self.rd = RunDir(run_dir)
        self.log = log


@pytest.fixture(scope="session")
def smoke_pair(tmp_path_factory) -> tuple[SmokeRun, SmokeRun]:
    """Two ``mrlib book`` runs started at the same time into two run directories: ``a`` the
    full smoke chain, ``b`` the shrunk one (:data:`SHRUNK`, the uninterrupted reference of
    the killed-run test), each with its book; made once per session and shared."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker makes it: the groups of the hook above hold
        claim = tmp_path_factory.getbasetemp().parent / "smoke_pair.worker"
        try:
            claim.open("x").write(os.environ["PYTEST_XDIST_WORKER"])
        except FileExistsError:
            pytest.fail(f"the shared smoke runs are made a second time, on another worker than {claim.read_text()}: "
                        "pytest-xdist's --dist loadgroup lost its groups (pytest-dev/pytest-xdist#1386)")
    base = tmp_path_factory.getbasetemp() / "smoke_pair"
    base.mkdir(exist_ok=True)
    args = {"a": ["book", "--preset", "smoke", "--run-dir", str(base / "a")],
            "b": [a for a in shrunk_run_args(base / "b", command="book") if a != "--quiet"]}
    procs = {name: cli(*cmd, background=True) for name, cmd in args.items()}
    logs = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=1800)
        logs[name] = out
        assert proc.returncode == 0, out[-6000:]
        (base / f"{name}.log").write_text(out)
    return SmokeRun(base / "a", logs["a"]), SmokeRun(base / "b", logs["b"])


@pytest.fixture(scope="session")
def smoke_run(smoke_pair) -> SmokeRun:
    """The shared finished smoke run (with its book)."""
    return smoke_pair[0]


@pytest.fixture(scope="session")
def reference_run(smoke_pair) -> Path:
    """The uninterrupted shrunk smoke run (``smoke_pair``'s ``b``)."""
    return smoke_pair[1].path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """The smoke preset's synthetic cohorts (single-coil), generated once."""
    from mrlib.data.synth import SynthConfig, generate
    from mrlib.presets import get_preset

    data = tmp_path_factory.getbasetemp() / "synth_smoke"
    if not (data / "synth.json").is_file():
        generate(data, SynthConfig(**get_preset("smoke")["synth"]), seed=0, progress=False)
    return data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny single-coil cohort (32 x 32 images, 3 slices, 3 training and 1 validation
    volumes, no kneeMRI): for the training-loop, fault and distributed tests."""
    from mrlib.data.synth import SynthConfig, generate

    out = tmp_path_factory.getbasetemp() / "tiny_data"
    if not (out / "synth.json").is_file():
        generate(out, SynthConfig(image_size=32, n_slices=3, n_train=3, n_val=1, n_test=0, kneemri_exams=0,
                                  kneemri_slices=1, kneemri_size=32, n_coils=1), seed=0, progress=False)
    return out
