"""The command line: every sub-command's help, the options generated from the model
configurations, the notebooks' defaults, and one happy path of each command against the
shared smoke run."""

from __future__ import annotations

import argparse
import dataclasses
import shutil

import pandas as pd
import pytest
import yaml

from conftest import cli
from mrlib import __version__
from mrlib.__main__ import UNET_GROUP, build_parser, main
from mrlib.compare import compare_runs
from mrlib.config import ClassifierConfig, UnetConfig
from mrlib.pipeline import flat_parameters, notebook_defaults, preset_parameters
from mrlib.presets import PRESETS
from mrlib.rundir import RunDir

SUBCOMMANDS = sorted(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m mrlib {command}")
    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in parser._actions:  # every option says what it is for
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mrlib {__version__}"


def test_train_options_are_exactly_the_unet_config_fields():
    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    group = next(g for g in train._action_groups if g.title == UNET_GROUP)
    assert [a.dest for a in group._group_actions] == [f.name for f in dataclasses.fields(UnetConfig)]
    for action, field in zip(group._group_actions, dataclasses.fields(UnetConfig)):
        assert action.default == field.default and action.option_strings[0] == "--" + field.name.replace("_", "-")
        assert field.metadata["help"] in action.help


def test_the_notebooks_defaults_are_the_smoke_preset_and_the_configs_defaults():
    declared = notebook_defaults()
    smoke = preset_parameters("smoke")
    for nb, params in declared.items():
        differ = {k: (v, smoke[nb][k]) for k, v in params.items()
                  if smoke[nb][k] != v and k not in ("preset", "interactive")}
        assert not differ, f"{nb}'s defaults differ from the smoke preset: {differ}"
    for nb, config in (("03_mrnet", ClassifierConfig), ("05_weighted_unet", UnetConfig)):
        for f in dataclasses.fields(config):
            if f.name in ("variant", "seed") and config is UnetConfig:
                continue  # notebook 05 trains lists of them: variants, seeds
            if f.name == "roi_source" and config is ClassifierConfig:
                continue  # notebook 03 trains a list of them: roi_sources
            assert declared[nb][f.name] == f.default, f"{nb}: {f.name} = {declared[nb][f.name]!r}, config {f.default!r}"


def test_a_name_means_one_thing_in_every_notebook():
    """papermill -f passes one YAML to every notebook: a shared name must share its default."""
    seen: dict[str, tuple[str, object]] = {}
    for nb, params in notebook_defaults().items():
        for name, default in params.items():
            if name in seen and name not in ("run_dir",):
                assert seen[name][1] == default, f"{name}: {seen[name][0]} says {seen[name][1]!r}, {nb} {default!r}"
            seen.setdefault(name, (nb, default))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_params_prints_a_presets_parameters_as_yaml(preset, capsys):
    assert main(["params", "--preset", preset, "-p", "seed=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = flat_parameters(preset_parameters(preset, ["seed=3"]))
    assert printed == {k: v for k, v in expected.items() if k not in ("run_dir", "data_dir")}
    assert printed["seed"] == 3 and printed["preset"] == preset and printed["interactive"] is False


def test_variants_lists_the_registry(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in ("unweighted", "gradcam", "oracle", "random", "l1"):
        assert f"\n{name} " in f"\n{out}"
    assert "alpha=4" in out


def test_synth_and_check_data(tmp_path, capsys):
    assert main(["synth", "--preset", "smoke", "--data", str(tmp_path / "d"), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "d")]) == 0
    assert "problem" not in capsys.readouterr().out.lower().replace("no problem", "")


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_metrics(smoke_run, tmp_path):
    out = tmp_path / "metrics.csv"
    proc = cli("evaluate", str(smoke_run.path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = pd.read_csv(out), pd.read_csv(smoke_run.rd.metrics_csv)
    pd.testing.assert_frame_equal(ours.drop(columns="seconds"), theirs.drop(columns="seconds"))


@pytest.mark.slow
def test_train_extends_and_resumes_the_notebooks_runs_in_a_moved_run_dir(smoke_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(smoke_run.path, moved, symlinks=True)
    rd = RunDir(moved)
    notebook_runs = rd.read_registry()
    assert compare_runs(smoke_run.path, moved) == []  # a copied run directory compares

    # a new variant instance extends the notebook's registry
    proc = cli("train", "--run-dir", str(moved), "--variant", "oracle[alpha=50]", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = rd.read_registry()
    assert runs[:len(notebook_runs)] == notebook_runs and runs[-1]["variant"] == "oracle[alpha=50]"
    assert runs[-1]["alpha"] == 50.0 and rd.unet_run("oracle[alpha=50]", 0).best.is_file()

    # the command resumes the notebook's run for one more epoch
    before = rd.unet_run("unweighted", 0).read_history()
    proc = cli("train", "--run-dir", str(moved), "--variant", "unweighted", "--unet-epochs", str(len(before) + 1),
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = rd.unet_run("unweighted", 0).read_history()
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert [r["variant"] for r in rd.read_registry()].count("unweighted") == 1  # merged, not appended
    # (book/reproduce.md's commands, run by test_docs.py, evaluate such an extended run)


@pytest.mark.slow
def test_compare_and_book_on_the_shared_run(smoke_pair, tmp_path):
    a, b = smoke_pair  # the full and the shrunk smoke chain
    proc = cli("compare", str(a.path), str(b.path))
    assert proc.returncode == 1 and "only in" in proc.stdout, proc.stdout[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(a.path, copy, symlinks=True)
    proc = cli("compare", str(a.path), str(copy))
    assert proc.returncode == 0 and "the runs agree" in proc.stdout, proc.stdout[-3000:]
    shutil.rmtree(RunDir(copy).book / "_build")
    proc = cli("book", "--no-run", "--run-dir", str(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RunDir(copy).book_html.is_file() and str(RunDir(copy).book_html) in proc.stdout


def test_bench_quick_keeps_what_it_was_given(tmp_path):
    data = tmp_path / "mine"
    (data / "fastmri" / "singlecoil_train").mkdir(parents=True)
    (data / "fastmri" / "singlecoil_train" / "keep.txt").write_text("not the benchmark's")
    proc = cli("bench", "--quick", "--data", str(data), "--only", "data", "--volumes", "1", "--slices", "2",
               "--epochs", "1", "--workers", "0", "--quiet")
    assert proc.returncode == 2 and "holds other data" in proc.stderr
    assert (data / "fastmri" / "singlecoil_train" / "keep.txt").read_text() == "not the benchmark's"
