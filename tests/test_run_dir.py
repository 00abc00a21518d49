"""The run directory contract: a stamp, refusal of other parameters, --force."""

import json

import pytest

from mrlib.errors import MrlibError
from mrlib.pipeline import RUN_STAMP, claim_run_dir


def test_new_directory_is_stamped(tmp_path):
    run = tmp_path / "run"
    stamp = claim_run_dir(run, "smoke", {"seed": 0}, ["01_data"])
    assert stamp == {"preset": "smoke", "parameters": {"seed": 0}, "finished": []}
    assert json.loads((run / RUN_STAMP).read_text()) == stamp


def test_other_parameters_or_preset_are_refused(tmp_path):
    claim_run_dir(tmp_path, "smoke", {"seed": 0, "unet_lr": 0.001}, ["01_data"])
    with pytest.raises(MrlibError, match="another parameters unet_lr"):
        claim_run_dir(tmp_path, "smoke", {"seed": 0, "unet_lr": 0.01}, ["01_data"])
    with pytest.raises(MrlibError, match="another preset 'smoke'"):
        claim_run_dir(tmp_path, "default", {"seed": 0}, ["01_data"])


def test_unfinished_run_continues_and_finished_run_needs_force(tmp_path):
    stamp = claim_run_dir(tmp_path, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    stamp["finished"] = ["01_data"]
    (tmp_path / RUN_STAMP).write_text(json.dumps(stamp))
    (tmp_path / "manifest.json").write_text("{}")
    again = claim_run_dir(tmp_path, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    assert again["finished"] == ["01_data"] and (tmp_path / "manifest.json").exists()
    again["finished"] = ["01_data", "02_masking"]
    (tmp_path / RUN_STAMP).write_text(json.dumps(again))
    with pytest.raises(MrlibError, match="finished run"):
        claim_run_dir(tmp_path, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    fresh = claim_run_dir(tmp_path, "smoke", {"seed": 1}, ["01_data"], force=True)
    assert fresh["finished"] == [] and not (tmp_path / "manifest.json").exists()


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(MrlibError, match="holds no run.json"):
        claim_run_dir(tmp_path, "smoke", {}, ["01_data"], force=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
