"""Security: no pickle is ever loaded unrestricted, and nothing reaches the network unasked.

* Malicious pickles (payloads that call ``os.system``, ``subprocess.call``, ``eval``,
  ``builtins.exec``) inside torch checkpoints, ``.pck`` volumes (also through
  ``check-data``), ``.npy`` exams, fastMRI's dataset cache and HDF5 files: loading ends
  in the project's error (or, for HDF5, never unpickles) and the payload never runs: its
  marker file is never created.
* A static scan (``ast``) of ``mrlib/**/*.py`` and the notebooks' code cells for
  unrestricted unpickling, ``torch.load`` without ``weights_only=True``,
  ``allow_pickle=True``, ``use_dataset_cache=True`` and network access outside the
  pretrained-weights path in ``mrlib/models.py``.
* ``MRNet(pretrained=True)`` offline gives one clear message.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import pickle
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrlib.errors import MrlibError
from mrlib.rundir import CheckpointDir

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    m = str(marker)
    code = f"open({m!r}, 'w').close()"
    return {
        "os_system": Payload(os.system, (f"touch {m}",)),
        "subprocess": Payload(subprocess.call, (["touch", m],)),
        "eval": Payload(eval, (code,)),
        "builtins_exec": Payload(builtins.exec, (code,)),
    }


PAYLOADS = ["os_system", "subprocess", "eval", "builtins_exec"]


def _check_payloads_work(tmp_path):
    """The payloads are real: unpickled unrestricted, each creates its marker."""
    for name in PAYLOADS:
        marker = tmp_path / f"armed_{name}"
        pickle.loads(pickle.dumps(payloads(marker)[name]))  # noqa: S301 - the point of the test
        assert marker.exists(), name
        marker.unlink()


def test_the_payloads_are_armed(tmp_path):
    _check_payloads_work(tmp_path)


# --------------------------------------------------------------------------- checkpoints


def _evil_checkpoint(path: Path, payload, zipfile: bool = True) -> Path:
    state = {"model": {"weight": torch.zeros(1, 1)}, "epoch": 0, "history": [], "config": {}, "evil": payload}
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    return path


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_malicious_checkpoint_never_runs(tmp_path, name, zipfile):
    from mrlib.train import load_checkpoint, load_weights

    marker = tmp_path / "PWNED"
    ckpt = _evil_checkpoint(CheckpointDir(tmp_path).last, payloads(marker)[name], zipfile)
    with pytest.raises(MrlibError) as exc:
        load_checkpoint(ckpt)
    assert exc.value.where == str(ckpt) and "not a readable weights-only checkpoint" in exc.value.problem
    with pytest.raises(MrlibError, match=re.escape(f"{ckpt}: not a readable weights-only checkpoint")):
        load_weights(torch.nn.Linear(1, 1, bias=False), ckpt)
    assert not marker.exists()


def test_malicious_last_checkpoint_is_not_resumed(tmp_path):
    """``fit(resume=True)`` loads the last checkpoint through the same weights-only path."""
    from mrlib.train import fit

    marker = tmp_path / "PWNED"
    ckpts = CheckpointDir(tmp_path)
    _evil_checkpoint(ckpts.last, payloads(marker)["os_system"])
    model = torch.nn.Linear(1, 1)
    with pytest.raises(MrlibError, match=re.escape(f"{ckpts.last}: not a readable weights-only checkpoint")):
        fit(model, lambda e: [], lambda m, b: m(b).sum(), lambda m: {"val_loss": 0.0},
            torch.optim.SGD(model.parameters(), lr=0.1), 1, ckpts, progress=False)
    assert not marker.exists()


def test_a_plain_pickle_named_pt_is_refused(tmp_path):
    from mrlib.train import load_checkpoint

    marker = tmp_path / "PWNED"
    p = CheckpointDir(tmp_path).best
    p.write_bytes(pickle.dumps({"model": payloads(marker)["eval"]}, protocol=2))
    with pytest.raises(MrlibError, match=re.escape(f"{p}: not a readable weights-only checkpoint")):
        load_checkpoint(p)
    assert not marker.exists()


# --------------------------------------------------------------------------- .pck, .npy, cache


@pytest.mark.parametrize("name", PAYLOADS)
def test_malicious_pck_through_check_data_cli(tmp_path, name):
    """A poisoned kneeMRI volume in a data directory: check-data fails, naming it; nothing runs."""
    from mrlib.data.synth import SynthConfig, generate

    data = tmp_path / "data"
    generate(data, SynthConfig(image_size=32, n_slices=1, n_train=1, n_val=0, n_test=0, kneemri_exams=2,
                               kneemri_slices=2, kneemri_size=32, n_coils=1), progress=False)
    victim = sorted((data / "kneemri").glob("*.pck"))[0]
    marker = tmp_path / "PWNED"
    victim.write_bytes(pickle.dumps(payloads(marker)[name], protocol=2))
    proc = subprocess.run([sys.executable, "-m", "mrlib", "check-data", str(data)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert victim.name in proc.stdout + proc.stderr and "refused to unpickle" in proc.stdout + proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_malicious_npy_exam_never_runs(tmp_path, name):
    from mrlib.data import mrnet

    marker = tmp_path / "PWNED"
    p = tmp_path / "0000.npy"
    np.save(p, np.array([payloads(marker)[name]], dtype=object), allow_pickle=True)
    with pytest.raises(MrlibError) as exc:
        _load_exam_file(mrnet, p)
    assert "0000.npy" in str(exc.value)
    assert not marker.exists()


def _load_exam_file(mrnet, path: Path):
    """MRNet-v1.0 layout: ROOT/train/sagittal/0000.npy."""
    root = path.parent / "MRNet-v1.0"
    (root / "train" / "sagittal").mkdir(parents=True)
    target = root / "train" / "sagittal" / "0000.npy"
    path.rename(target)
    return mrnet.load_exam(root, "train", "sagittal", "0000")


def test_fastmri_dataset_cache_is_never_read_or_written(tmp_path, monkeypatch):
    from mrlib.data.fastmri_h5 import slice_dataset
    from mrlib.data.synth import SynthConfig, generate
    from mrlib.errors import ParameterError

    generate(tmp_path / "data", SynthConfig(image_size=32, n_slices=2, n_train=1, n_val=0, n_test=0,
                                            kneemri_exams=0, n_coils=1), progress=False)
    split = tmp_path / "data" / "fastmri" / "singlecoil_train"
    marker = tmp_path / "PWNED"
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "dataset_cache.pkl"  # fastMRI's default name, in the working directory
    cache.write_bytes(pickle.dumps(payloads(marker)["os_system"]))
    before = cache.read_bytes()
    for flag in (True, 1, "yes"):
        with pytest.raises(ParameterError, match="use_dataset_cache"):
            slice_dataset(split, use_dataset_cache=flag)
    ds = slice_dataset(split, dataset_cache_file=cache)
    assert len(ds) == 2
    assert not marker.exists() and cache.read_bytes() == before


# --------------------------------------------------------------------------- HDF5


def _pickle_blob(marker: Path) -> np.void:
    return np.void(pickle.dumps(payloads(marker)["os_system"]))


def test_pickled_bytes_in_a_heatmap_file_never_run(tmp_path):
    """h5py never unpickles; a heatmap file holding pickle bytes is refused or read as numbers."""
    from mrlib.cam import heatmap_info, read_heatmaps

    marker = tmp_path / "PWNED"
    p = tmp_path / "heatmaps.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("gradcam/file1000000")
        g.create_dataset("maps", data=_pickle_blob(marker))
        g.create_dataset("scores", data=_pickle_blob(marker))
        f.attrs["methods"] = _pickle_blob(marker)
        f.attrs["image_shapes"] = _pickle_blob(marker)
    with pytest.raises(MrlibError, match=r"heatmaps\.h5: not a heatmap file"):
        heatmap_info(p)
    with pytest.raises(Exception):  # see test_fuzz.py: today a ValueError, not a DataError
        read_heatmaps(p, "gradcam", "file1000000")
    assert not marker.exists()


def test_pickled_bytes_in_a_fastmri_file_never_run(tmp_path):
    from mrlib.data.fastmri_h5 import validate_h5

    marker = tmp_path / "PWNED"
    p = tmp_path / "file1.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=_pickle_blob(marker))
        f.create_dataset("ismrmrd_header", data=_pickle_blob(marker))
        f.create_dataset("reconstruction_esc", data=_pickle_blob(marker))
        f.attrs["max"] = _pickle_blob(marker)
    with pytest.raises(MrlibError) as exc:
        validate_h5(p)
    assert exc.value.where == str(p)
    assert not marker.exists()


# --------------------------------------------------------------------------- static scan

#: Where network access is allowed: MRNet(pretrained=True) fetching torchvision's weights.
NETWORK_ALLOWED = {"mrlib/models.py"}
#: Where an Unpickler may be subclassed: the restricted one.
UNPICKLER_ALLOWED = {"mrlib/data/kneemri.py"}
NETWORK_MODULES = ("requests", "urllib", "http.client", "httpx", "aiohttp", "socket", "ftplib", "smtplib")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw_true(call: ast.Call, name: str) -> bool | None:
    """True/False if ``name=<constant>`` is given, None if absent or not a constant."""
    for kw in call.keywords:
        if kw.arg == name:
            return bool(kw.value.value) if isinstance(kw.value, ast.Constant) else None
    return None


def scan(source: str, rel: str) -> list[str]:
    """The unsafe patterns in one Python source, as ``rel:line: what`` lines."""
    problems = []
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: cannot parse ({exc.msg})"]

    def bad(node, what):
        problems.append(f"{rel}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if rel not in NETWORK_ALLOWED and any(name == m or name.startswith(m + ".") for m in NETWORK_MODULES):
                    bad(node, f"imports {name} (network) outside the pretrained-weights path")
            if isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
                for a in node.names:
                    if a.name in ("load", "loads", "Unpickler", "_Unpickler") and rel not in UNPICKLER_ALLOWED:
                        bad(node, f"imports {node.module}.{a.name}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if _dotted(base).split(".")[-1] in ("Unpickler", "_Unpickler") and rel not in UNPICKLER_ALLOWED:
                    bad(node, f"subclasses {_dotted(base)} outside the restricted unpickler")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        if head in PICKLE_MODULES and last in ("load", "loads", "Unpickler", "_Unpickler"):
            bad(node, f"{name}(...) unpickles unrestricted")
        if last in ("read_pickle",) or name in ("torch.hub.load", "yaml.unsafe_load"):
            bad(node, f"{name}(...) runs arbitrary code")
        if name == "yaml.load" and "Safe" not in ast.unparse(node):
            bad(node, "yaml.load without a SafeLoader")
        if name.endswith("torch.load"):
            if _kw_true(node, "weights_only") is not True:
                bad(node, f"{name}(...) without weights_only=True")
        if _kw_true(node, "allow_pickle") is True:
            bad(node, f"{name}(..., allow_pickle=True)")
        if _kw_true(node, "use_dataset_cache") is True:
            bad(node, f"{name}(..., use_dataset_cache=True)")
        if rel not in NETWORK_ALLOWED and (name.startswith(("torch.hub.", "requests.", "urllib.", "socket."))
                                           or last in ("load_state_dict_from_url", "download_url_to_file", "urlopen")):
            bad(node, f"{name}(...) reaches the network outside the pretrained-weights path")
    return problems


def _sources() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "mrlib").rglob("*.py")):
        out.append((path.relative_to(ROOT).as_posix(), path.read_text()))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for i, c in enumerate(cells):
            if c["cell_type"] == "code":  # IPython magics and shell lines become ``pass``
                lines = [line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!"))
                         else line for line in "".join(c["source"]).splitlines()]
                out.append((f"{nb.relative_to(ROOT).as_posix()} cell {i}", "\n".join(lines)))
    return out


def test_the_scanner_finds_what_it_looks_for():
    planted = """
import pickle, urllib.request
from pickle import loads
import numpy as np, torch
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
pickle.load(open("x", "rb"))
np.load("x.npy", allow_pickle=True)
SliceDataset(root, use_dataset_cache=True)
urllib.request.urlopen("http://example.com")
torch.hub.load_state_dict_from_url("http://example.com/w.pt")
class U(pickle.Unpickler):
    pass
"""
    found = scan(planted, "mrlib/evil.py")
    for what in ("imports urllib.request", "imports pickle.loads", "torch.load(...) without weights_only=True",
                 "pickle.load(...) unpickles", "allow_pickle=True", "use_dataset_cache=True", "urlopen",
                 "load_state_dict_from_url", "subclasses pickle.Unpickler"):
        assert any(what in line for line in found), (what, found)
    assert sum("without weights_only=True" in line for line in found) == 2
    assert scan('torch.load(p, map_location="cpu", weights_only=True)\n', "mrlib/ok.py") == []


def test_no_unsafe_loading_or_network_in_the_package_and_notebooks():
    sources = _sources()
    assert any(rel == "mrlib/train.py" for rel, _ in sources) and any(".ipynb cell" in rel for rel, _ in sources)
    problems = [line for rel, text in sources for line in scan(text, rel)]
    assert problems == []


# --------------------------------------------------------------------------- pretrained, offline


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No cached weights (a fresh TORCH_HOME), every download and every socket refused."""
    import socket

    import torch.hub
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("network is blocked in this test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)

    def no_socket(*a, **k):
        raise OSError("network is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", no_socket)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    return calls


def test_pretrained_mrnet_offline_gives_a_clear_message(no_network):
    from mrlib.models import MRNet

    with pytest.raises(MrlibError) as exc:
        MRNet(pretrained=True)
    assert exc.value.where == "pretrained"
    assert "could not fetch ImageNet AlexNet weights" in exc.value.problem
    assert "pretrained=False" in exc.value.problem
    assert no_network and "alexnet" in no_network[0]


def test_mrnet_from_scratch_needs_no_network(no_network):
    from mrlib.models import MRNet

    model = MRNet(pretrained=False)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (1,)
    assert no_network == []
