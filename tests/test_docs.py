"""Every shell command shown in README.md and book/*.md runs as written.

Each fenced ``bash``/``sh``/``shell``/``console`` block is either run verbatim here, in a
temporary copy of the repository that holds a copy of the shared smoke run in
``runs/smoke``, or preceded by ``<!-- doc-test: skip (<reason>) -->``. The blocks run in
document order (README first, then the book's pages by name), so a later block may use
what an earlier one made, as a reader following the page would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ("bash", "sh", "shell", "console")
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((.+?)\)\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]


def shell_blocks(path: Path) -> list[dict]:
    """The fenced shell blocks of a Markdown file: line, code, and the skip reason if marked."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang.split("{")[0] not in SHELLS:
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(previous)
        name = path.relative_to(ROOT).as_posix() if ROOT in path.parents else path.name
        blocks.append(dict(file=name, line=start + 1, code="\n".join(body),
                           skip=skip.group(1) if skip else None))
    return blocks


BLOCKS = [b for path in doc_files() for b in shell_blocks(path)]


def test_the_docs_have_shell_blocks_and_the_parser_finds_marks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- doc-test: skip (needs a GPU) -->\n```bash\necho a\n```\n\n"
                    "- item\n\n  ```sh\n  echo b\n  ```\n\n```text\nnot shell\n```\n")
    found = shell_blocks(page)
    assert [(b["code"], b["skip"]) for b in found] == [("echo a", "needs a GPU"), ("echo b", None)]
    assert sum(b["skip"] is None for b in BLOCKS) >= 5, "the docs should show commands that are run"


@pytest.fixture(scope="module")
def doc_repo(tmp_path_factory, smoke_run) -> Path:
    """A copy of the repository's tracked files with the shared smoke run in runs/smoke."""
    repo = tmp_path_factory.mktemp("doc_repo")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, files.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    shutil.copytree(smoke_run.path, repo / "runs" / "smoke", symlinks=True)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b['file']}:{b['line']}" for b in BLOCKS])
def test_documented_commands_run_as_written(block, doc_repo):
    if block["skip"]:
        pytest.skip(f"{block['file']}:{block['line']}: {block['skip']}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]], cwd=doc_repo, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (f"{block['file']}:{block['line']} failed ({proc.returncode}):\n{block['code']}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def test_the_bibliography_lists_the_books_sources_and_the_citation_file_is_valid():
    """book/references.bib parses and holds the sources issue-level readers look for; every
    entry has a title and a year or a link; the bibliography page shows all of it and is in
    the table of contents; CITATION.cff is a CFF 1.2 file that points at the bibliography."""
    import yaml
    from pybtex.database import parse_file

    bib = parse_file(str(ROOT / "book" / "references.bib"))
    titles = " | ".join(e.fields["title"] for e in bib.entries.values()).lower()
    for source in ("fastmri}: an open dataset", "{fastmri+}", "{mrnet}", "anterior cruciate ligament", "{grad-cam}",
                   "{grad-cam++}", "{hirescam}", "{layercam}", "excitation backprop", "sequentially rejective",
                   "mann-whitney", "pigeonhole bootstrap", "structural similarity"):
        assert source in titles, source
    for key, entry in bib.entries.items():
        assert entry.fields.get("title") and (entry.fields.get("year") or entry.fields.get("howpublished")), key
    page = (ROOT / "book" / "bibliography.md").read_text()
    assert "```{bibliography}\n:all:\n```" in page
    assert "book/bibliography" in (ROOT / "_toc.yml").read_text()
    assert yaml.safe_load((ROOT / "_config.yml").read_text())["bibtex_bibfiles"] == ["book/references.bib"]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] and cff["authors"] and "references.bib" in cff["message"]
    assert {r["doi"] for r in cff["references"] if "doi" in r} <= {e.fields.get("doi") for e in bib.entries.values()}


def _data_page() -> str:
    return (ROOT / "book" / "data.md").read_text()


def test_the_data_page_shows_the_expected_counts_of_check_data():
    """book/data.md's table of expected counts is mrlib.data.expected.EXPECTED, row for row."""
    from mrlib.data.expected import EXPECTED

    rows = re.findall(r"^\|[^|\n]*\|\s*`([^`]+)`\s*\|\s*([\d,]+)\s*\|\s*([^|]+?)\s*\|", _data_page(), re.M)
    page = {label: (int(n.replace(",", "")), unit.replace("`.h5` ", "")) for label, n, unit in rows}
    assert page == {e.label: (e.count, e.unit) for e in EXPECTED}
    assert "book/data" in (ROOT / "_toc.yml").read_text()


@pytest.mark.slow
def test_the_data_page_shows_what_check_data_prints(tmp_path):
    """The page's example output is what its example commands print, line for line."""
    page = _data_page()
    block = next(b for b in shell_blocks(ROOT / "book" / "data.md") if "check-data data-example" in b["code"])
    shown = re.search(r"```text\n(  counts against.*?)```", page, re.S).group(1).splitlines()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    assert printed[-len(shown):] == shown
