"""The papermill runner and the book build.

``run`` executes the source notebooks in ``notebooks/`` in order with papermill, each
with the parameters its ``parameters`` cell declares (from the preset, then ``-p``
overrides), writing the executed copies into ``book/notebooks/``. ``build_book`` then
builds the Jupyter Book (1.x) from ``_config.yml`` / ``_toc.yml`` with warnings as errors.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

from .artifacts import read_json, write_json, write_text
from .errors import MrlibError, ParameterError
from .presets import get_preset
from .runtime import HEADLESS_ENV

#: The chapters, in the order they run. Each reads only what earlier ones wrote.
NOTEBOOKS = ("01_data", "02_masking", "03_mrnet", "04_gradcam", "05_weighted_unet", "06_evaluation")


class NotebookError(MrlibError):
    """A notebook failed while papermill executed it."""

    exit_code = 1


def project_root() -> Path:
    """The project checkout: where ``_toc.yml`` and ``notebooks/`` live."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "notebooks").is_dir() or not (root / "_toc.yml").is_file():
        raise MrlibError(root, "no notebooks/ and _toc.yml here; run from a clone of the project")
    return root


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters a notebook's ``parameters`` cell declares, with their default values."""
    import papermill

    params = papermill.inspect_notebook(str(notebook))
    if not params:
        raise MrlibError(notebook, "has no cell tagged 'parameters'")
    return {name: ast.literal_eval(p["default"]) for name, p in params.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``name=value``; the value is a Python literal, or else a string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ParameterError(f"-p {text}", "expected name=value, e.g. -p seed=1")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name, value


def coerce(name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the notebook's ``default``; int is accepted for float."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        if ok and default:  # the elements must have the type of the default's elements
            value = [coerce(f"{name}[{i}]", v, default[0]) for i, v in enumerate(value)]
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParameterError(
            f"parameter {name}",
            f"expected {type(default).__name__} like the notebook's default {default!r}, got {value!r}",
        )
    return value


def resolve_parameters(
    preset: str,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    notebooks: Iterable[str] = NOTEBOOKS,
) -> dict[str, dict[str, Any]]:
    """Every parameter of each notebook: its default, else the preset's value, the paths,
    then ``name=value`` overrides.

    Raises :class:`ParameterError` for an unknown preset, an override that no notebook
    declares, or a value whose type does not match the notebook's default.
    """
    root = project_root()
    spec = get_preset(preset)
    if spec["synth"] is None and not data_dir:
        raise ParameterError("--data", f"the {preset!r} preset runs on real data: pass --data DIR")
    run_dir = Path(run_dir) if run_dir else root / "runs" / preset
    values: dict[str, Any] = dict(spec["params"])
    values.update(
        interactive=False,  # papermill runs headless: static figures instead of sliders
        preset=preset,
        run_dir=str(run_dir.resolve()),
        data_dir=str(Path(data_dir).resolve()) if data_dir else "",
    )
    declared = {nb: declared_parameters(root / "notebooks" / f"{nb}.ipynb") for nb in notebooks}
    known = {name: default for params in declared.values() for name, default in params.items()}
    for text in overrides:
        name, value = parse_override(text)
        if name in ("preset", "run_dir", "data_dir"):
            raise ParameterError(f"-p {name}", f"set it with --{name.replace('_dir', '-dir').replace('data-dir', 'data')} instead")
        if name not in known:
            raise ParameterError(
                f"-p {name}", f"no notebook declares this parameter; known: {', '.join(sorted(known))}"
            )
        values[name] = value
    return {
        nb: {name: coerce(name, values[name], default) if name in values else default
             for name, default in params.items()}
        for nb, params in declared.items()
    }


def run(
    preset: str,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    notebooks: Iterable[str] = NOTEBOOKS,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Execute the notebooks in order with papermill; return the executed copies.

    Stops at the first failure with a :class:`NotebookError` naming the notebook, the
    cell and the error; the executed copy (with the traceback) is kept for reading.

    The run directory is stamped with ``run.json`` (preset and parameters). A directory
    stamped with other parameters is refused, and so is a finished run, unless
    ``force``, which deletes the earlier run first. An unfinished run with the same
    parameters continues: training resumes from its last checkpoints.
    """
    root = project_root()
    notebooks = list(notebooks)
    params = resolve_parameters(preset, data_dir, run_dir, overrides, notebooks)
    flat = {k: v for nb_params in params.values() for k, v in nb_params.items()}
    run_path = Path(flat["run_dir"])
    stamp = claim_run_dir(run_path, preset, flat, notebooks, force)
    out_dir = root / "book" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # Progress is shown here, per notebook and per cell; inside the kernels mrlib's bars are
    # turned off, since a notebook bar saved by papermill freezes at 0 % in the book.
    saved = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"
    try:
        for nb in tqdm(notebooks, desc=f"run {preset}", unit="notebook", disable=not progress):
            written.append(_execute(root, nb, params[nb], out_dir, progress))
            stamp["finished"] = sorted(set(stamp["finished"]) | {nb})
            write_json(run_path / RUN_STAMP, stamp)
    finally:
        if saved is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = saved
    write_run_info(root / "book" / "generated" / "run_info.md", stamp)
    return written


RUN_STAMP = "run.json"


def claim_run_dir(
    run_dir: Path, preset: str, parameters: dict[str, Any], notebooks: list[str], force: bool = False
) -> dict[str, Any]:
    """Stamp ``run_dir`` for this run (``run.json``), or refuse one that belongs to another.

    The stamp holds the preset, the parameters and the notebooks finished so far. A
    directory whose stamp differs in the preset or in any parameter both runs set is
    refused, and so is one where every notebook asked for has already finished, unless
    ``force``, which deletes the directory first. Returns the stamp to update.

    Raises:
        MrlibError: naming the directory and, for other parameters, which ones differ.
    """
    path = run_dir / RUN_STAMP
    new = json.loads(json.dumps({"preset": preset, "parameters": parameters}))
    if force and path.is_file():
        shutil.rmtree(run_dir)
    if path.is_file():
        old = read_json(path)
        old_params = old.get("parameters", {})
        diff = sorted(k for k in set(old_params) & set(new["parameters"]) if old_params[k] != new["parameters"][k])
        if old.get("preset") != preset or diff:
            what = f"preset {old.get('preset')!r}" if old.get("preset") != preset else f"parameters {', '.join(diff[:6])}"
            raise MrlibError(
                run_dir, f"holds a run with another {what}; use another --run-dir, or --force to delete it and start again"
            )
        finished = list(old.get("finished", []))
        if set(notebooks) <= set(finished):
            raise MrlibError(run_dir, "holds a finished run with these parameters; use --force to run it again")
        new["parameters"] = {**old_params, **new["parameters"]}
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise MrlibError(run_dir, "is not empty and holds no run.json; choose an empty or new --run-dir")
    else:
        finished = []
    stamp = {**new, "finished": finished}
    write_json(path, stamp)
    return stamp


def write_run_info(path: Path, stamp: dict[str, Any]) -> Path:
    """The book's record of what produced it: preset, parameters, versions, device, commit."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    here = Path(__file__).resolve().parent  # git answers from inside the checkout, wherever the page goes
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=here)
    sha = commit.stdout.strip() or "unknown (not a git checkout)"
    if dirty.stdout.strip():
        sha += " with uncommitted changes"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    packages = ["torch", "torchvision", "fastmri", "grad-cam", "numpy", "h5py", "scikit-image", "papermill", "jupyter-book"]
    params = stamp["parameters"]
    lines = [
        f"This edition was produced by `python -m mrlib run --preset {stamp['preset']}` at git commit `{sha}`,",
        f"on {device}, with Python {platform.python_version()}, on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        "| parameter | value |", "| --- | --- |",
        *[f"| `{k}` | `{v}` |" for k, v in sorted(params.items()) if k not in ("run_dir",)],
        "",
        "| package | version |", "| --- | --- |",
        *[f"| {p} | {ver(p)} |" for p in packages],
    ]
    return write_text(path, "\n".join(lines) + "\n")


def _execute(root: Path, nb: str, params: dict[str, Any], out_dir: Path, progress: bool) -> Path:
    """Execute one notebook with papermill; raise :class:`NotebookError` naming the failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = root / "notebooks" / f"{nb}.ipynb"
    target = out_dir / f"{nb}.ipynb"
    tqdm.write(f"[mrlib] {nb}: {params}")
    try:
        papermill.execute_notebook(
            str(source), str(target), parameters=params, kernel_name="python3",
            progress_bar=progress, cwd=str(root),
        )
    except PapermillExecutionError as exc:
        raise NotebookError(
            f"notebooks/{nb}.ipynb",
            f"failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
            f"(the executed copy with the traceback is {target})",
        ) from None
    return target


def build_book(root: Path | None = None) -> Path:
    """Build the Jupyter Book with warnings as errors; return the path of ``index.html``."""
    root = root or project_root()
    cmd = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
        "build", str(root), "--warningiserror", "--keep-going",
    ]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).strip().splitlines()
        found = [line for line in lines if "WARNING" in line or "ERROR" in line] or lines[-25:]
        raise MrlibError("_config.yml", "the book build failed or warned:\n" + "\n".join(found))
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise MrlibError(index, "the build finished but wrote no index.html")
    return index
