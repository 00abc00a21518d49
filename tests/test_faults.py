"""Faults: a run killed with SIGKILL and started again ends where an uninterrupted run ends.

* Training-loop level (fast): a child process trains a tiny U-Net / MRNet with
  :func:`mrlib.unet.train_unet` / :func:`mrlib.classifier.train_mrnet`; it pauses itself
  in the middle of epoch 2 (after epoch 1's checkpoint, after one more optimizer step)
  and is SIGKILLed there, or in the middle of writing a checkpoint. Started again, it
  resumes from the last checkpoint and its weights, history and metrics equal those of an
  uninterrupted run bit for bit.
* Whole run (slow): ``python -m mrlib run`` (smoke, shrunk with ``-p``) is SIGKILLed, with
  its notebook kernel, while MRNet trains; run again, it finishes, its stamp lists
  every notebook, and ``mrlib.compare`` finds no difference from an uninterrupted run
  (the shared ``reference_run``).
* The run directory contract through the command line: a finished run is not overwritten
  without ``--force``; another preset or other parameters are refused, with a clear
  message and exit status 2.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import cli, shrunk_run_args
from mrlib.compare import compare_runs
from mrlib.rundir import NOTEBOOKS, CheckpointDir, RunDir

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# --------------------------------------------------------------------------- helpers

CHILD = textwrap.dedent(
    r'''
    """Train a tiny model; with PAUSE=1 stop (sleep) at a chosen point so the test can SIGKILL it."""
    import io, json, os, sys, time
    from pathlib import Path

    import numpy as np
    import torch

    from mrlib.rundir import CheckpointDir

    torch.set_num_threads(1)
    kind, data, out, pause = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    ckpts = CheckpointDir(out)
    EPOCHS = 3


    def park():
        (out / "PAUSED").write_text(str(os.getpid()))
        time.sleep(600)


    def epochs_done():
        try:
            return len(json.loads(ckpts.history.read_text()))
        except (OSError, ValueError):
            return 0


    class Gate:
        """Called on every training access; parks on the 2nd access once epoch 1 is saved."""
        after = 0

        def __call__(self):
            if pause == "step" and epochs_done() >= 1:
                self.after += 1
                if self.after == 2:
                    park()


    gate = Gate()
    if pause == "save":  # park half-way through writing the 2nd checkpoint's bytes
        real_save, saves = torch.save, []

        def torn_save(obj, f, *a, **k):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            last = Path(f).name.startswith(f".{CheckpointDir.LAST}.")  # the temporary of the last checkpoint
            if last:
                saves.append(f)
            if len(saves) == 2 and last:  # epoch 2's last checkpoint
                Path(f).write_bytes(data[: len(data) // 2])
                park()
            Path(f).write_bytes(data)

        torch.save = torn_save

    from mrlib.runtime import seed_everything

    seed_everything(0)
    if kind == "unet":
        from mrlib.masking import MaskSpec
        from mrlib.models import fastmri_unet
        from mrlib.recon import SliceBank
        from mrlib.unet import train_unet
        from mrlib.variants import GradCAM

        train = SliceBank(sorted((data / "fastmri" / "singlecoil_train").glob("*.h5")))
        val = SliceBank(sorted((data / "fastmri" / "singlecoil_val").glob("*.h5")))
        batch = train.batch
        train.batch = lambda *a, **k: (gate(), batch(*a, **k))[1]
        weights = torch.rand(len(train), *train.crop, generator=torch.Generator().manual_seed(1)) + 0.5
        model = fastmri_unet(chans=4, num_pool_layers=2)
        history = train_unet(model, train, val, MaskSpec(), GradCAM(), ckpts, train_weights=weights,
                             epochs=EPOCHS, batch_size=2, seed=7, progress=False, config={"test": kind})
    else:
        from mrlib.classifier import evaluate_mrnet, stratified_split, train_mrnet
        from mrlib.models import MRNet

        g = torch.Generator().manual_seed(3)
        labels = np.array([0, 1] * 4)
        exams = [torch.randn(3, 3, 64, 64, generator=g) + float(y) for y in labels]

        class GatedExams(list):
            def __getitem__(self, i):
                gate()
                return list.__getitem__(self, i)

        splits = stratified_split(labels, seed=0)
        model = MRNet()
        history = train_mrnet(model, GatedExams(exams), labels, splits, str(out), epochs=EPOCHS, lr=1e-3,
                              seed=5, progress=False)
        from mrlib.train import load_weights

        load_weights(model, ckpts.best)
        metrics, _ = evaluate_mrnet(model, exams, labels, splits["test"], seed=0)
        (out / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
    print("DONE", len(history))
    '''
)


def _child(tmp: Path) -> Path:
    script = tmp / "child_train.py"
    if not script.exists():
        script.write_text(CHILD)
    return script


def _run_child(script: Path, kind: str, data: Path, out: Path) -> None:
    proc = subprocess.run([PY, str(script), kind, str(data), str(out), "none"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE 3" in proc.stdout


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended ({proc.returncode}) before {path.name}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.05)


def _kill_and_resume(script: Path, kind: str, data: Path, out: Path, pause: str) -> None:
    proc = subprocess.Popen([PY, str(script), kind, str(data), str(out), pause],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "PAUSED", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (out / "PAUSED").unlink()
    # what the kill left: epoch 1 complete and loadable, nothing torn under a real name
    ckpts = CheckpointDir(out)
    history = ckpts.read_history()
    assert [h["epoch"] for h in history] == [1] if pause == "step" else [h["epoch"] for h in history] in ([1], [1, 2])
    ckpt = torch.load(ckpts.last, weights_only=True)
    assert ckpt["epoch"] + 1 == len(history)
    if pause == "save":
        assert list(out.glob(f".{CheckpointDir.LAST}.*.part")), "the torn checkpoint should have been a temporary file"
    _run_child(script, kind, data, out)


def _same_training(ref: Path, resumed: Path) -> None:
    assert CheckpointDir(ref).read_history() == CheckpointDir(resumed).read_history()
    for name in (CheckpointDir.LAST, CheckpointDir.BEST):
        a, b = (torch.load(d / name, weights_only=True) for d in (ref, resumed))
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"]
        assert a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), f"{name}: {key} differs after resume"
        assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert compare_runs(ref, resumed) == []


# --------------------------------------------------------------------------- training loop


@pytest.mark.parametrize("kind, pause", [("unet", "step"), ("mrnet", "step"), ("unet", "save")])
def test_killed_training_resumes_to_the_same_weights(tmp_path, tiny_data, kind, pause):
    script = _child(tmp_path)
    ref, resumed = tmp_path / "ref", tmp_path / "killed"
    _run_child(script, kind, tiny_data, ref)
    _kill_and_resume(script, kind, tiny_data, resumed, pause)
    _same_training(ref, resumed)


def test_resume_with_other_parameters_is_refused(tmp_path, tiny_data):
    """A last.pt from other parameters is not silently continued."""
    from mrlib.errors import MrlibError
    from mrlib.masking import MaskSpec
    from mrlib.models import fastmri_unet
    from mrlib.recon import SliceBank
    from mrlib.unet import train_unet
    from mrlib.variants import Unweighted

    bank = SliceBank(sorted((tiny_data / "fastmri" / "singlecoil_train").glob("*.h5")))
    kw = dict(epochs=1, batch_size=6, progress=False)
    ckpts = CheckpointDir(tmp_path)
    train_unet(fastmri_unet(chans=2, num_pool_layers=1), bank, bank, MaskSpec(), Unweighted(), ckpts,
               config={"lr": 1}, **kw)
    with pytest.raises(MrlibError, match=re.escape(f"{ckpts.last}: was written with other parameters")):
        train_unet(fastmri_unet(chans=2, num_pool_layers=1), bank, bank, MaskSpec(), Unweighted(), ckpts,
                   config={"lr": 2}, **kw)


# --------------------------------------------------------------------------- the whole run

def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _epochs(path: Path) -> int:
    try:
        return len(json.loads(path.read_text()))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_killed_cli_run_restarts_and_finishes_like_an_uninterrupted_run(tmp_path, reference_run):
    reference = reference_run
    run_dir = tmp_path / "run"
    rd = RunDir(run_dir)
    proc = cli(*shrunk_run_args(run_dir), background=True)
    deadline = time.monotonic() + 600
    while _epochs(rd.classifier("kneemri").history) < 1:  # MRNet has finished epoch 1 of 2
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "MRNet never wrote its first epoch"
        time.sleep(0.1)
    tree = [proc.pid, *_descendants(proc.pid)]  # the runner and its notebook kernel (own session)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stamp = rd.read_stamp()
    assert "03_mrnet" not in stamp["finished"] and "01_data" in stamp["finished"]
    assert not rd.classifier_metrics("kneemri").exists()

    again = cli(*shrunk_run_args(run_dir))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert sorted(rd.read_stamp()["finished"]) == sorted(NOTEBOOKS)
    assert _epochs(rd.classifier("kneemri").history) == 2
    assert compare_runs(reference, run_dir) == []
    # and the comparison sees a difference where there is one
    assert compare_runs(reference, run_dir, ignore=()) != []

    # a finished run is not overwritten without --force
    before = rd.metrics_csv.stat().st_mtime_ns
    refused = cli(*shrunk_run_args(run_dir))
    assert refused.returncode == 2
    assert f"error: {run_dir}: holds a finished run with these parameters; use --force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert rd.metrics_csv.stat().st_mtime_ns == before


def test_cli_refuses_a_run_dir_of_another_preset_or_parameters(tmp_path):
    """Stops at the stamp, before any notebook runs: fast."""
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    stamp = {"preset": "smoke", "data": "", "parameters": {"seed": 0, "unet_epochs": 2}, "finished": ["01_data"]}
    rd.write_stamp(stamp)
    rd.manifest_path.write_text("{}")
    run_dir = rd.root

    other = cli("run", "--preset", "smoke", "--run-dir", str(run_dir), "-p", "unet_epochs=3", "--quiet")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert f"error: {run_dir}: holds a run with another parameters unet_epochs" in other.stderr

    preset = cli("run", "--preset", "default", "--run-dir", str(run_dir), "--quiet")
    # (the message names the differing parameters when there are any, else the preset)
    assert preset.returncode == 2 and f"error: {run_dir}: holds a run with another " in preset.stderr

    data = cli("run", "--preset", "smoke", "--run-dir", str(run_dir), "--data", str(tmp_path), "--quiet")
    assert data.returncode == 2 and f"error: {run_dir}: holds a run with another parameters --data" in data.stderr

    stranger = tmp_path / "thesis"
    stranger.mkdir()
    (stranger / "chapter1.tex").write_text("precious")
    alien = cli("run", "--preset", "smoke", "--run-dir", str(stranger), "--force", "--quiet")
    assert alien.returncode == 2 and f"holds no {RunDir.STAMP}" in alien.stderr
    assert (stranger / "chapter1.tex").read_text() == "precious"
    assert rd.read_stamp() == stamp  # nothing rewritten
    assert rd.manifest_path.read_text() == "{}"
