"""The structure the design asks for: no import cycle, module-level imports of mrlib, one
owner of the run directory's file names."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mrlib"

#: File names of run artifacts: only mrlib/rundir.py may spell them.
ARTIFACT = re.compile(
    r"\b(runs\.json|heatmaps\.h5|manifest\.json|masking\.json|best\.pt|last\.pt|config\.json|summary\.json|"
    r"metrics\.csv|metrics\.json|localization\w*\.csv|splits\.json|history\.json|predictions\.csv|run\.json|"
    r"run_info\.md)\b"
)


def modules() -> dict[str, Path]:
    """``mrlib.x.y`` -> its file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_mrlib_modules(name: str, path: Path, known: set[str]) -> list[tuple[str, ast.AST]]:
    """Every mrlib module ``name`` imports (anywhere in the file), with the import node."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names if a.name.split(".")[0] == "mrlib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.split(".")[0] == "mrlib":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import losses` imports the module mrlib.losses
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node))
    return [(m, n) for m, n in found if m in known and m != name]


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m, _ in imported_mrlib_modules(name, path, set(mods))} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_relative_and_submodule_imports():
    graph = import_graph()
    assert "mrlib.data.manifest" in graph["mrlib.data.check"] or "mrlib.data.check" in graph["mrlib.data.manifest"]
    assert "mrlib.rundir" in graph["mrlib.train"]  # from .rundir import CheckpointDir
    assert "mrlib.errors" in graph["mrlib.data.fastmri_h5"]  # from ..errors import ...


def test_mrlib_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _function_level_imports(tree: ast.AST):
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and id(inner) not in seen:
                    seen.add(id(inner))
                    yield inner


def test_imports_of_mrlib_are_module_level_and_lazy_ones_say_why():
    problems = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in _function_level_imports(ast.parse(path.read_text())):
            is_mrlib = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mrlib")) \
                or isinstance(node, ast.Import) and any(a.name.startswith("mrlib") for a in node.names)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if is_mrlib:
                problems.append(f"{where}: an mrlib import inside a function")
            elif "# lazy:" not in lines[node.lineno - 1]:
                problems.append(f"{where}: an import inside a function without '# lazy: <reason>'")
    assert not problems, "\n".join(problems)


def _string_literals(tree: ast.AST):
    """String constants that are not docstrings."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_the_artifact_pattern_catches_names_in_code():
    tree = ast.parse('"""best.pt is documented here"""\npath = run / "unet" / "runs.json"\nx = f"{a}/localization_x.csv"')
    assert [ARTIFACT.search(n.value).group(0) for n in _string_literals(tree) if ARTIFACT.search(n.value)] == [
        "runs.json", "localization_x.csv"]


def test_only_the_run_directory_spells_artifact_names():
    found = []
    for name, path in modules().items():
        if name == "mrlib.rundir":
            continue
        for node in _string_literals(ast.parse(path.read_text())):
            m = ARTIFACT.search(node.value)
            if m:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {m.group(0)}")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            code = "\n".join(line[: len(line) - len(line.lstrip())] + "pass"  # IPython magics
                             if line.lstrip().startswith(("%", "!")) else line
                             for line in "".join(cell["source"]).splitlines())
            for node in _string_literals(ast.parse(code)):
                m = ARTIFACT.search(node.value)
                if m:
                    found.append(f"{nb.relative_to(ROOT)} cell {i}: {m.group(0)}")
    assert not found, "run artifact names outside mrlib/rundir.py:\n" + "\n".join(found)
