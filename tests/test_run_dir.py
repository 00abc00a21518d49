"""The run directory contract: a stamp, refusal of other parameters, --force."""

import json

import pytest

from mrlib.errors import DataError, MrlibError, ParameterError
from mrlib.masking import MaskSpec
from mrlib.pipeline import claim_run_dir
from mrlib.rundir import CheckpointDir, RunDir


def test_new_directory_is_stamped(tmp_path):
    rd = RunDir(tmp_path / "run")
    stamp = claim_run_dir(rd, "smoke", {"seed": 0, "alpha": 50.0, "primary": "gradcam"}, ["01_data"])
    assert stamp == {"preset": "smoke", "data": "", "parameters": {"seed": 0, "alpha": 50.0, "primary": "gradcam"},
                     "declared": {"alpha": 50.0, "primary": "gradcam", "declared_in": "preset smoke, cohort seed 0"}, "finished": []}
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


def test_manifest_paths_are_stored_relative_and_resolved_on_read(tmp_path):
    """A run directory that holds its data can be moved and still reads its manifest."""
    rd = RunDir(tmp_path / "a")
    data = rd.default_data
    split = data / "fastmri" / "singlecoil_val"
    split.mkdir(parents=True)
    (split / "file1.h5").write_bytes(b"")
    (data / "annotations").mkdir()
    (data / "annotations" / "knee.csv").write_text("")
    rd.write_manifest({"data_dir": str(data), "splits": {"val": {"dir": str(split), "files": [{"name": "file1.h5"}]}},
                       "roles": [{"split": "val", "file": "file1.h5", "role": "selection"}],
                       "split_policy": "synthetic",
                       "annotations": str(data / "annotations" / "knee.csv"), "kneemri": None})
    stored = json.loads(rd.manifest_path.read_text())
    assert stored["data_dir"] == RunDir.DATA
    assert stored["splits"]["val"]["dir"] == "fastmri/singlecoil_val"
    assert stored["annotations"] == "annotations/knee.csv"
    moved = RunDir(tmp_path / "b")
    rd.root.rename(moved.root)
    m = moved.read_manifest()
    assert m["data_dir"] == str(moved.default_data.resolve())
    assert moved.split_paths("selection", m) == [moved.default_data.resolve() / "fastmri" / "singlecoil_val" / "file1.h5"]
    assert m["annotations"] == str(moved.default_data.resolve() / "annotations" / "knee.csv")
    with pytest.raises(DataError, match="gives no volume the train role"):
        moved.split_paths("train", m)


def test_data_outside_the_run_directory_is_stored_absolute(tmp_path):
    rd, data = RunDir(tmp_path / "run"), tmp_path / "data"
    (data / "s").mkdir(parents=True)
    rd.write_manifest({"data_dir": str(data), "splits": {"val": {"dir": str(data / "s"), "files": []}}})
    assert json.loads(rd.manifest_path.read_text())["data_dir"] == str(data.resolve())
    assert rd.read_manifest()["splits"]["val"]["dir"] == str(data.resolve() / "s")


def test_unet_runs_are_named_by_variant_key_and_seed(tmp_path):
    rd = RunDir(tmp_path)
    ckpts = rd.unet_run("oracle[alpha=50]", 2)
    assert ckpts.path == tmp_path / RunDir.UNET / "oracle[alpha=50]" / "seed2"
    assert ckpts.best == ckpts.path / CheckpointDir.BEST and ckpts.last == ckpts.path / CheckpointDir.LAST
    for bad in ("", "..", "."):
        with pytest.raises(ParameterError, match="cannot name a run directory"):
            rd.unet_run(bad, 0)
    # a user map file's path stays inside one directory name, and distinct keys stay distinct
    mine = rd.unet_run("gradcam[roi_source=file:/data/maps.h5]", 0).path
    assert mine.parent.parent == tmp_path / RunDir.UNET and mine.parent.name == "gradcam[roi_source=file:%2Fdata%2Fmaps.h5]"
    assert rd.unet_run("a%2Fb", 0).path != rd.unet_run("a/b", 0).path


def test_result_files_leave_out_the_stamp_the_book_and_temporaries(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_stamp({"preset": "smoke"})
    rd.write_mask_spec(MaskSpec(), seed=0)
    rd.unet_run("unweighted", 0).write_history([{"epoch": 1}])
    rd.run_info.parent.mkdir(parents=True)
    (rd.run_info.parent / "table.csv").write_text("a\n1\n")
    (rd.root / ".x.json.part.json").write_text("{}")
    assert rd.result_files() == {RunDir.MASKING, f"{RunDir.UNET}/unweighted/seed0/{CheckpointDir.HISTORY}"}
