"""The run directory contract: a stamp, refusal of other parameters, --force."""

import json

import pytest

from mrlib.errors import MrlibError
from mrlib.pipeline import claim_run_dir
from mrlib.rundir import RunDir


def test_new_directory_is_stamped(tmp_path):
    rd = RunDir(tmp_path / "run")
    stamp = claim_run_dir(rd, "smoke", {"seed": 0}, ["01_data"])
    assert stamp == {"preset": "smoke", "data": "", "parameters": {"seed": 0}, "finished": []}
    assert rd.stamp == tmp_path / "run" / "run.json"  # the layout the README documents
    assert json.loads(rd.stamp.read_text()) == stamp == rd.read_stamp()


def test_paths_are_left_out_of_the_stamp_and_data_is_recorded(tmp_path):
    rd = RunDir(tmp_path / "run")
    data = tmp_path / "data"
    data.mkdir()
    stamp = claim_run_dir(rd, "smoke", {"seed": 0, "run_dir": "x", "data_dir": "y"}, ["01_data"], data_dir=data)
    assert stamp["parameters"] == {"seed": 0}
    assert stamp["data"] == str(data.resolve())
    with pytest.raises(MrlibError, match="another parameters --data"):
        claim_run_dir(rd, "smoke", {"seed": 0}, ["01_data"])


def test_other_parameters_or_preset_are_refused(tmp_path):
    rd = RunDir(tmp_path)
    claim_run_dir(rd, "smoke", {"seed": 0, "unet_lr": 0.001}, ["01_data"])
    with pytest.raises(MrlibError, match="another parameters unet_lr"):
        claim_run_dir(rd, "smoke", {"seed": 0, "unet_lr": 0.01}, ["01_data"])
    with pytest.raises(MrlibError, match="another preset 'smoke'"):
        claim_run_dir(rd, "default", {"seed": 0}, ["01_data"])


def test_unfinished_run_continues_and_finished_run_needs_force(tmp_path):
    rd = RunDir(tmp_path)
    stamp = claim_run_dir(rd, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    stamp["finished"] = ["01_data"]
    rd.write_stamp(stamp)
    rd.manifest_path.write_text("{}")
    again = claim_run_dir(rd, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    assert again["finished"] == ["01_data"] and rd.manifest_path.exists()
    again["finished"] = ["01_data", "02_masking"]
    rd.write_stamp(again)
    with pytest.raises(MrlibError, match="finished run"):
        claim_run_dir(rd, "smoke", {"seed": 0}, ["01_data", "02_masking"])
    fresh = claim_run_dir(rd, "smoke", {"seed": 1}, ["01_data"], force=True)
    assert fresh["finished"] == [] and not rd.manifest_path.exists()
    assert rd.read_stamp()["parameters"] == {"seed": 1}


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(MrlibError, match=f"holds no {RunDir.STAMP}"):
        claim_run_dir(RunDir(tmp_path), "smoke", {}, ["01_data"], force=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
