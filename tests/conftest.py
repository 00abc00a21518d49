"""Shared scaffolding for the tests that run whole chains through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PY = sys.executable

#: The smoke chain, shrunk further, for the tests that run it more than once.
SHRUNK = ["variants=['unweighted','gradcam']", "methods=['gradcam']", "mrnet_epochs=2", "unet_epochs=2"]

#: ``python -m mrlib`` with the project root moved to a scratch folder (links back to the
#: notebooks and book config), so the executed notebooks and run_info.md of these runs do
#: not land in the checkout's book/, which the end-to-end test builds.
CLI = textwrap.dedent(
    r'''
    import sys
    from pathlib import Path
    import mrlib.pipeline as pl

    REPO, root = Path(pl.__file__).resolve().parent.parent, Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    for name in ("notebooks", "_toc.yml", "_config.yml"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO / name)
    pl.project_root = lambda: root
    from mrlib.__main__ import main

    sys.exit(main(sys.argv[2:]))
    '''
)


def scratch_cli(scratch: Path, *args: str, background: bool = False, timeout: int = 600):
    """Run ``python -m mrlib ARGS`` rooted in ``scratch``; a Popen if ``background``."""
    script = scratch / "cli.py"
    if not script.exists():
        scratch.mkdir(parents=True, exist_ok=True)
        script.write_text(CLI)
    cmd = [PY, str(script), str(scratch / "root"), *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def shrunk_run_args(run_dir: Path, *extra: str) -> list[str]:
    """``run`` arguments of the shrunk smoke chain into ``run_dir``."""
    return ["run", "--preset", "smoke", "--run-dir", str(run_dir), "--quiet",
            *[a for p in SHRUNK for a in ("-p", p)], *extra]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted shrunk smoke run, made once per session and shared."""
    base = tmp_path_factory.getbasetemp() / "shrunk_reference"
    run_dir = base / "run"
    stamp = run_dir / "run.json"
    if not (stamp.is_file() and len(json.loads(stamp.read_text()).get("finished", [])) == 6):
        proc = scratch_cli(base, *shrunk_run_args(run_dir))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir
