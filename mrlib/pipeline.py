"""The papermill runner and the book build.

``run`` executes the source notebooks in ``notebooks/`` in order with papermill, each
with the parameters its ``parameters`` cell declares (from the preset, then ``-p``
overrides), writing the executed copies into ``book/notebooks/``. ``build_book`` then
builds the Jupyter Book (1.x) from ``_config.yml`` / ``_toc.yml`` with warnings as errors.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

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
    """Parameters for each notebook: preset, then paths, then ``name=value`` overrides.

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
        if name not in known:
            raise ParameterError(
                f"-p {name}", f"no notebook declares this parameter; known: {', '.join(sorted(known))}"
            )
        values[name] = value
    return {
        nb: {name: coerce(name, values[name], default) for name, default in params.items() if name in values}
        for nb, params in declared.items()
    }


def run(
    preset: str,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    notebooks: Iterable[str] = NOTEBOOKS,
    progress: bool = True,
) -> list[Path]:
    """Execute the notebooks in order with papermill; return the executed copies.

    Stops at the first failure with a :class:`NotebookError` naming the notebook, the
    cell and the error; the executed copy (with the traceback) is kept for reading.
    """
    root = project_root()
    notebooks = list(notebooks)
    params = resolve_parameters(preset, data_dir, run_dir, overrides, notebooks)
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
    finally:
        if saved is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = saved
    return written


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
