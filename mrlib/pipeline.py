"""The papermill runner and the run's own book.

``run`` executes the source notebooks in ``notebooks/`` in order with papermill, each
with the parameters its ``parameters`` cell declares (its defaults, then the preset's
values, then ``-p`` overrides), and writes the executed copies into the run directory
(:meth:`mrlib.rundir.RunDir.executed`). ``build_book`` then builds that run's Jupyter
Book (1.x) from a copy of the project's pages, ``_config.yml`` and ``_toc.yml`` under the
run directory, with warnings as errors: two runs never share a chapter or a build.

The console: in a terminal, progress bars (notebooks, cells); in a log (stdout not a
terminal), plain lines only: one when a notebook starts and one when it ends, and the
training loops' own lines (:class:`mrlib.runtime.Heartbeat`), at most one per 10 s.
"""

from __future__ import annotations

import ast
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from . import report
from .artifacts import read_json, write_text
from .bench import speed_page
from .errors import MrlibError, ParameterError
from .presets import DECLARED, get_preset
from .rundir import NOTEBOOKS, RunDir, relative_path
from .runtime import HEADLESS_ENV
from .variants import make_variant

#: Parameters the runner sets itself, from the command's options, not from ``-p``.
PATH_PARAMETERS = {"preset": "--preset", "run_dir": "--run-dir", "data_dir": "--data"}


class NotebookError(MrlibError):
    """A notebook failed while papermill executed it."""

    exit_code = 1


def project_root() -> Path:
    """The project checkout: where ``notebooks/``, ``book/`` and ``_toc.yml`` live."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "notebooks").is_dir() or not (root / "_toc.yml").is_file():
        raise MrlibError(root, "no notebooks/ and _toc.yml here; run from a clone of the project")
    return root


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters a notebook's ``parameters`` cell declares, with their default values."""
    import papermill  # lazy: papermill pulls in nbclient and jupyter_client

    params = papermill.inspect_notebook(str(notebook))
    if not params:
        raise MrlibError(notebook, "has no cell tagged 'parameters'")
    return {name: ast.literal_eval(p["default"]) for name, p in params.items()}


def notebook_defaults(notebooks: Iterable[str] = NOTEBOOKS) -> dict[str, dict[str, Any]]:
    """Each notebook's declared parameters and defaults."""
    root = project_root()
    return {nb: declared_parameters(root / "notebooks" / f"{nb}.ipynb") for nb in notebooks}


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


def preset_parameters(preset: str, overrides: Iterable[str] = (),
                      notebooks: Iterable[str] = NOTEBOOKS) -> dict[str, dict[str, Any]]:
    """Each notebook's parameters for ``preset``: its default, else the preset's value,
    then ``name=value`` overrides; the paths (``run_dir``, ``data_dir``) are left as declared.

    Raises :class:`ParameterError` for an unknown preset, an override that no notebook
    declares, or a value whose type does not match the notebook's default.
    """
    spec = get_preset(preset)
    declared = notebook_defaults(notebooks)
    known = {name: default for params in declared.values() for name, default in params.items()}
    values: dict[str, Any] = dict(spec["params"])
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParameterError(f"preset {preset}", f"sets {', '.join(unknown)}, which no notebook declares")
    values.update(interactive=False, preset=preset)  # papermill runs headless: static figures
    for text in overrides:
        name, value = parse_override(text)
        if name in PATH_PARAMETERS:
            raise ParameterError(f"-p {name}", f"set it with {PATH_PARAMETERS[name]} instead")
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


def flat_parameters(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One dict of every notebook's parameters (a name means one thing in every notebook)."""
    return {k: v for nb_params in params.values() for k, v in nb_params.items()}


def declaration(preset: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """What ``parameters`` (one flat dict) declare for chapter 6 (:data:`mrlib.presets.DECLARED`),
    with ``declared_in`` naming the preset and the cohort seed (a confirmatory test on
    another cohort than the declared one is refused), and what its tests are worth where
    the preset says (``study``'s cohort is the pilot that chose ``default``'s strength)."""
    where = f"preset {preset}" + (f", cohort seed {parameters['seed']}" if "seed" in parameters else "")
    note = get_preset(preset).get("declared_note", "")
    return {**{k: parameters[k] for k in DECLARED if k in parameters}, "declared_in": f"{where}: {note}" if note else where}


def declared_comparisons(rd: RunDir, current: dict[str, Any], preset: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The confirmatory design of a run, checked against its preset's declaration.

    The run's record is ``run.json``'s ``declared`` (written when ``python -m mrlib run``
    starts). A run made notebook by notebook (papermill) has none: its record is then what
    its trained arms recorded (chapter 5's registry: ``alpha``, ``weight_rule``,
    ``threshold``, ``cam_method``, ``roi_source``, ``gate``) and ``current``.

    Args:
        current: chapter 6's declared parameters (``primary``, ``positive_control``,
            ``primary_metric``, ``primary_acceleration``); each must equal the record too.
        preset: the preset the run claims (chapter 6's ``preset`` parameter).

    Returns:
        ``(declared, problems)``. ``declared`` holds the reference, the arms' variant keys
        as chapter 5 names their runs (``positive_control``, ``primary``), ``metric``,
        ``acceleration`` and ``declared_in``; it is ``None`` when the record differs from
        the preset's declaration, and ``problems`` then says how (each differing parameter
        with both values).
    """
    want = declaration(preset, flat_parameters(preset_parameters(preset)))
    stamp = rd.read_stamp() if rd.stamp.is_file() else {}
    if stamp.get("preset", preset) != preset:
        return None, [f"chapter 6 was given preset {preset!r}, the run was started with {stamp['preset']!r}"]
    recorded, params = stamp.get("declared"), stamp.get("parameters", {})
    if not recorded:  # a run made notebook by notebook: what its arms recorded
        arms = {r["variant"]: r for r in rd.read_registry()}
        params = {**want, **current}
        primary = arms.get(make_variant(current["primary"], params).key, {})
        recorded = {**{k: primary.get(k, want[k]) for k in want if k not in current}, **current,
                    "declared_in": want["declared_in"]}
        params = {**params, **{k: v for k, v in recorded.items() if k != "declared_in"}}
    problems = [f"{k}: the preset declares {want[k]!r}, this run used {recorded.get(k)!r}"
                for k in want if recorded.get(k) != want[k]]
    problems += [f"{k}: the run declared {recorded.get(k)!r} when it started, chapter 6 now asks for {v!r}"
                 for k, v in current.items() if recorded.get(k) != v]
    if problems:
        return None, problems
    return {"reference": "unweighted",
            "positive_control": make_variant(recorded["positive_control"], params).key,
            "primary": make_variant(recorded["primary"], params).key,
            "metric": recorded["primary_metric"], "acceleration": int(recorded["primary_acceleration"]),
            "declared_in": recorded["declared_in"]}, []


def kernel_cwd(run_dir: Path) -> Path:
    """Where the kernels run: the current directory when the run directory lies below it
    (so the book shows ``runs/default``), else the run directory's parent."""
    here, target = Path.cwd().resolve(), run_dir.resolve()
    return here if target == here or here in target.parents else target.parent


def resolve_parameters(
    preset: str,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    notebooks: Iterable[str] = NOTEBOOKS,
) -> dict[str, dict[str, Any]]:
    """:func:`preset_parameters` with the paths filled in, relative to :func:`kernel_cwd`."""
    spec = get_preset(preset)
    if spec["synth"] is None and not data_dir:
        raise ParameterError("--data", f"the {preset!r} preset runs on real data: pass --data DIR")
    params = preset_parameters(preset, overrides, notebooks)
    run_path = Path(run_dir) if run_dir else Path("runs") / preset
    cwd = kernel_cwd(run_path)
    paths = {"run_dir": os.path.relpath(run_path.resolve(), cwd),
             "data_dir": os.path.relpath(Path(data_dir).resolve(), cwd) if data_dir else ""}
    return {nb: {k: paths.get(k, v) for k, v in p.items()} for nb, p in params.items()}


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

    The run directory is stamped (preset and parameters). A directory stamped with other
    parameters is refused, and so is a finished run, unless ``force``, which deletes the
    earlier run first. An unfinished run with the same parameters continues: training
    resumes from its last checkpoints.
    """
    root = project_root()
    notebooks = list(notebooks)
    params = resolve_parameters(preset, data_dir, run_dir, overrides, notebooks)
    run_path = Path(run_dir) if run_dir else Path("runs") / preset
    rd = RunDir(run_path)
    cwd = kernel_cwd(run_path)
    flat = flat_parameters(params)
    stamp = claim_run_dir(rd, preset, flat, notebooks, force, data_dir)
    plain = not sys.stdout.isatty()
    written = []
    # Inside the kernels mrlib's bars are off (a notebook bar saved by papermill freezes at
    # 0 % in the book); the training loops print plain lines to the console instead.
    saved = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"
    try:
        bar = tqdm(notebooks, desc=f"run {preset}", unit="notebook", disable=not progress or plain)
        for nb in bar:
            written.append(_execute(root, nb, params[nb], rd, cwd, progress and not plain))
            stamp["finished"] = sorted(set(stamp["finished"]) | {nb})
            rd.write_stamp(stamp)
    finally:
        if saved is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = saved
    write_run_info(rd, stamp)
    write_answer(rd)
    return written


def claim_run_dir(
    rd: RunDir, preset: str, parameters: dict[str, Any], notebooks: list[str], force: bool = False,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Stamp the run directory for this run, or refuse one that belongs to another.

    The stamp holds the preset, the parameters (paths aside), the data directory (relative
    to the run directory when inside it) and the notebooks finished so far. A directory
    whose stamp differs in the preset, the data or any parameter both runs set is refused,
    and so is one where every notebook asked for has already finished, unless ``force``,
    which deletes the directory first. Returns the stamp to update.

    Raises:
        MrlibError: naming the directory and, for other parameters, which ones differ.
    """
    run_dir = rd.root
    params = {k: v for k, v in parameters.items() if k not in ("run_dir", "data_dir")}
    data = relative_path(Path(data_dir).resolve(), run_dir.resolve()) if data_dir else ""
    new = {"preset": preset, "data": data, "parameters": params}
    if force and rd.stamp.is_file():
        shutil.rmtree(run_dir)
    if rd.stamp.is_file():
        old = rd.read_stamp()
        old_params = old.get("parameters", {})
        diff = sorted(k for k in set(old_params) & set(params) if old_params[k] != params[k])
        if old.get("data", "") != data:
            diff.insert(0, "--data")
        if old.get("preset") != preset or diff:
            what = f"preset {old.get('preset')!r}" if old.get("preset") != preset else f"parameters {', '.join(diff[:6])}"
            raise MrlibError(
                run_dir, f"holds a run with another {what}; use another --run-dir, or --force to delete it and start again"
            )
        finished = list(old.get("finished", []))
        if set(notebooks) <= set(finished):
            raise MrlibError(run_dir, "holds a finished run with these parameters; use --force to run it again")
        new["parameters"] = {**old_params, **params}
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise MrlibError(run_dir, f"is not empty and holds no {rd.STAMP}; choose an empty or new --run-dir")
    else:
        finished = []
    stamp = {**new, "declared": declaration(preset, new["parameters"]), "finished": finished}
    rd.write_stamp(stamp)
    return stamp


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def write_run_info(rd: RunDir, stamp: dict[str, Any]) -> Path:
    """The book's record of what produced it: preset, parameters, versions, device, commit."""
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
        f"on {device}, with Python {platform.python_version()}, on {time.strftime('%Y-%m-%d %H:%M %Z')}"
        + (f", from the data in `{stamp['data']}`." if stamp.get("data") else ", on the preset's synthetic data."),
        "",
        "| parameter | value |", "| --- | --- |",
        *[f"| `{k}` | `{v}` |" for k, v in sorted(params.items())],
        "",
        "| package | version |", "| --- | --- |",
        *[f"| {p} | {_package_version(p)} |" for p in packages],
    ]
    return write_text(rd.run_info, "\n".join(lines) + "\n")


def write_answer(rd: RunDir) -> Path:
    """The book's first-page answer: :func:`mrlib.report.answer_paragraph` of the run's
    ``summary.json``, or why there is none."""
    summary = rd.read_evaluation()[1] if rd.summary_json.is_file() else {}
    if "primary" in summary:
        text = report.answer_paragraph(summary)
    else:
        text = ("This run has no confirmatory result: chapter 6 has not run, or the run's declaration differs "
                "from its preset's (chapter 6 says which).")
    return write_text(rd.answer, text + "\n")


def _execute(root: Path, nb: str, params: dict[str, Any], rd: RunDir, cwd: Path, progress: bool) -> Path:
    """Execute one notebook with papermill; raise :class:`NotebookError` naming the failing cell."""
    import papermill  # lazy: papermill pulls in nbclient and jupyter_client
    from papermill.exceptions import PapermillExecutionError  # lazy: as papermill

    source = root / "notebooks" / f"{nb}.ipynb"
    target = rd.executed(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tqdm.write(f"[mrlib] {nb}: start")
    try:
        papermill.execute_notebook(
            str(source), str(target), parameters=params, kernel_name="python3",
            progress_bar=progress, cwd=str(cwd), kernel_manager_class=_kernel_manager_class(),
        )
    except PapermillExecutionError as exc:
        raise NotebookError(
            f"notebooks/{nb}.ipynb",
            f"failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
            f"(the executed copy with the traceback is {target})",
        ) from None
    tqdm.write(f"[mrlib] {nb}: done in {time.perf_counter() - start:.0f} s")
    return target


def _kernel_manager_class() -> str:
    """A kernel manager on IPC sockets where the OS has them: the kernels then do not warn
    that they run over TCP without encryption (they listen on local files, not ports)."""
    return "mrlib.kernels.IPCKernelManager" if os.name == "posix" else "jupyter_client.manager.AsyncKernelManager"


# --------------------------------------------------------------------------- the book

def prepare_book(rd: RunDir, root: Path | None = None) -> Path:
    """Copy the project's pages and their bibliography (``book/*.md``, ``book/*.bib``),
    ``_config.yml`` and ``_toc.yml`` beside the run's executed notebooks, under
    :attr:`RunDir.book`; return that directory."""
    root = root or project_root()
    book = rd.book
    book.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, book / name)
    pages = book / "book"
    pages.mkdir(parents=True, exist_ok=True)
    for page in sorted([*(root / "book").glob("*.md"), *(root / "book").glob("*.bib")]):
        shutil.copy2(page, pages / page.name)
    missing = [nb for nb in NOTEBOOKS if not rd.executed(nb).is_file()]
    if missing:
        raise MrlibError(rd.root, f"has no executed {', '.join(missing)}; run the notebooks first (python -m mrlib run)")
    if not rd.run_info.is_file():
        raise MrlibError(rd.run_info, "missing; python -m mrlib run writes it")
    if not rd.answer.is_file():  # a run from before the first page carried the answer
        write_answer(rd)
    write_speed_page(rd, root)
    return book


#: Where the benchmark results the speed chapter renders are committed (``mrlib bench --out``).
BENCH_RESULTS = Path("benchmarks") / "results"


def write_speed_page(rd: RunDir, root: Path | None = None) -> Path:
    """The speed chapter's measured tables (:func:`mrlib.bench.speed_page`), rendered from
    every ``*.json`` under :data:`BENCH_RESULTS` when the book is built, so that the page
    shows what the committed benchmark files say and nothing else."""
    folder = (root or project_root()) / BENCH_RESULTS
    results = [(p.name, read_json(p)) for p in sorted(folder.glob("*.json"))]
    return write_text(rd.speed, speed_page(results))


def build_book(rd: RunDir, root: Path | None = None) -> Path:
    """Build the run's Jupyter Book with warnings as errors; return the path of ``index.html``."""
    book = prepare_book(rd, root).resolve()
    cmd = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
        "build", str(book), "--config", str(book / "_config.yml"), "--toc", str(book / "_toc.yml"),
        "--path-output", str(book), "--warningiserror", "--keep-going",
    ]
    proc = subprocess.run(cmd, cwd=book, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).strip().splitlines()
        found = [line for line in lines if "WARNING" in line or "ERROR" in line] or lines[-25:]
        raise MrlibError(book / "_config.yml", "the book build failed or warned:\n" + "\n".join(found))
    index = rd.book_html.resolve()
    if not index.is_file():
        raise MrlibError(index, "the build finished but wrote no index.html")
    return index
