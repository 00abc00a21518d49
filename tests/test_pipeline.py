"""The runner's parameter handling, the command line's errors, and the notebooks' form."""

import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

import conftest
from mrlib import pipeline, rundir
from mrlib.errors import ParameterError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cli(*args, cwd=ROOT):
    return conftest.cli(*args, cwd=cwd, timeout=300)


def _toc_files(entries):
    for entry in entries or []:
        if "file" in entry:
            yield entry["file"]
        yield from _toc_files(entry.get("chapters"))
        yield from _toc_files(entry.get("sections"))


def test_every_chapter_is_a_notebook_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = list(_toc_files(toc["parts"]))
    assert [p.stem for p in NOTEBOOKS] == list(rundir.NOTEBOOKS)
    chapters = [f for f in files if f.startswith("book/notebooks/")]
    assert chapters == [f"book/notebooks/{nb}" for nb in rundir.NOTEBOOKS]  # every one, in the order they run
    # the run's book keeps that layout: the runner writes each executed notebook where the toc points
    rd = rundir.RunDir(Path("run"))
    for nb in rundir.NOTEBOOKS:
        assert rd.executed(nb) == rd.book / f"book/notebooks/{nb}.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_has_one_literal_parameters_cell(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse("".join(tagged[0]["source"]))
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), ast.dump(stmt)
        ast.literal_eval(stmt.value)  # raises if not a literal
    declared = pipeline.declared_parameters(path)
    assert "run_dir" in declared
    # papermill must parse every line, or -p cannot reach that parameter
    assert sorted(declared) == sorted(stmt.targets[0].id for stmt in tree.body)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_a_colab_badge_for_this_repository(path):
    cells = json.loads(path.read_text())["cells"]
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    slug = repo.removeprefix("https://github.com/")
    first = "".join(cells[0]["source"])
    assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in first
    setup = "".join(cells[1]["source"])
    assert '"google.colab" in sys.modules' in setup and slug in setup


def test_overrides_are_typed_by_the_notebook_defaults():
    params = pipeline.resolve_parameters("smoke", overrides=["seed=3", "accelerations=[4]", "center_fractions=[0.1]"])
    assert params["01_data"]["seed"] == 3
    assert params["02_masking"]["accelerations"] == [4]
    assert params["02_masking"]["run_dir"] == params["01_data"]["run_dir"]
    assert "accelerations" not in params["01_data"]
    assert params["02_masking"]["interactive"] is False  # papermill runs headless


@pytest.mark.parametrize(
    "override, message",
    [
        ("nonsense=1", "no notebook declares"),
        ("seed=abc", "expected int"),
        ("seed=1.5", "expected int"),
        ("accelerations=4", "expected list"),
        ("interactive=1", "expected bool"),
        ("seed", "expected name=value"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ParameterError, match=message):
        pipeline.resolve_parameters("smoke", overrides=[override])


def test_real_data_preset_needs_a_data_directory():
    with pytest.raises(ParameterError, match="--data"):
        pipeline.resolve_parameters("fastmri")


def test_cli_help_lists_every_command():
    out = cli("--help")  # one subprocess: python -m mrlib works; each command's help is tested in test_cli.py
    assert out.returncode == 0
    for command in ("synth", "check-data", "run", "book", "params", "evaluate", "compare", "variants", "bench",
                    "train"):
        assert f"\n    {command} " in out.stdout or f"\n    {command}\n" in out.stdout, command


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "--preset", "smoke", "-p", "bogus=1"], "-p bogus"),
        (["run", "--preset", "smoke", "-p", "seed=x"], "parameter seed"),
        (["run", "--preset", "smoke", "-p", "run_dir=x"], "set it with --run-dir"),
        (["synth", "--preset", "nope", "--data", "{tmp}/x"], "unknown preset"),
        (["check-data", "does/not/exist"], "does/not/exist"),
        (["params", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--run-dir", "{tmp}/run"], "manifest.json: missing; notebook 01_data"),
        (["train", "--run-dir", "{tmp}/run", "--variant", "bogus"], "unknown variant 'bogus'"),
        (["train", "--run-dir", "{tmp}/run", "--variant", "oracle[beta=1]"], "oracle takes no parameter beta"),
        (["train", "--run-dir", "{tmp}/run", "--data", "{tmp}/nothing"], "data directory does not exist"),
        (["evaluate", "{tmp}/run"], "runs.json: missing; notebook 05_weighted_unet"),
    ],
)
def test_cli_errors_are_one_clear_line(args, message, tmp_path, capsys):
    from mrlib.__main__ import main  # in process: the same code as python -m mrlib, without 6 s of imports

    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # a refused command writes nothing


def test_cli_usage_errors_name_the_new_flags(tmp_path):
    out = cli("train", "--run-dir", str(tmp_path / "run"), "--unet-epochs", "x")
    assert out.returncode == 2 and "argument --unet-epochs: invalid int value: 'x'" in out.stderr
    out = cli("train", "--out", str(tmp_path / "run"))  # the old flag is gone: --run-dir is required
    assert out.returncode == 2 and "--run-dir" in out.stderr
    out = cli("synth", "--out", str(tmp_path / "x"))  # renamed to --data
    assert out.returncode == 2 and "--data" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_progress_bars_are_hidden_in_headless_runs(monkeypatch):
    from mrlib.runtime import HEADLESS_ENV, progress_bar

    class Terminal:
        def isatty(self):
            return True

    class Log:
        def isatty(self):
            return False

    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    monkeypatch.setattr(sys, "__stderr__", Terminal())
    assert not progress_bar(range(3)).disable  # a terminal: bars
    assert progress_bar(range(3), progress=False).disable
    monkeypatch.setenv(HEADLESS_ENV, "1")
    assert progress_bar(range(3)).disable  # the runner's headless kernels: no bars, even in a terminal
    monkeypatch.delenv(HEADLESS_ENV)
    monkeypatch.setattr(sys, "__stderr__", Log())
    assert progress_bar(range(3)).disable  # a log: plain lines, no bars
