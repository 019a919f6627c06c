"""The import graph follows the data flow: prompt -> model + dictionaries -> the engine -> attributions and
interventions -> graphs (data) -> pages (what a person sees) -> case studies -> command lines.

Every import counts, at module level or inside a function: no module imports a higher layer (results show
themselves through attribution.display, which pages fills in), no two modules import each other, and one
module runs traces. A name imported through a package facade (`from attribution import ablate`) counts as an
import of the module that defines it, so a facade is no way around the rule. Imports under
`if TYPE_CHECKING:` are type names only and do not count."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attribution", "graphs", "pages", "cases")

# layer of each module, by the first pattern its dotted name matches
LAYERS = [
    (0, r"attribution\.(errors|compute|memory|cache|tokens|metrics|nodes|splice|edits|display)$"),
    (0, r"attribution\.(models|saes)(\..*)?$"),
    (1, r"attribution\.engine$"),
    (2, r"attribution\.(spliced|attribute|ablate|compare|find)$"),
    (2, r"attribution\.(explain|training)(\..*)?$"),
    (3, r"graphs(\..*)?$"),
    (4, r"pages(\..*)?$"),
    (5, r"cases(\..*)?$"),
    (6, r"attribution\.(cli|console|smoke|__main__)$"),  # command lines: they front everything below
    (6, r"attribution$"),  # the facade: re-exports the library and registers the pages (attribution.display)
]

# the only upward imports, each with why
ALLOWED_UP: dict[tuple[str, str], str] = {}


def _layer(module: str) -> int:
    for layer, pattern in LAYERS:
        if re.match(pattern, module):
            return layer
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: give it one")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _raw_imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every project import in `path`, anywhere in the file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub, None) if sub in modules else (node.module, a.name))
    return found


def _resolve(module: str, name: str | None, modules: dict[str, Path], seen=()) -> str:
    """The module that defines `name` when it is imported from a package facade; else `module`."""
    path = modules.get(module)
    if name is None or path is None or path.name != "__init__.py" or module in seen:
        return module
    for dep, dep_name in _raw_imports(path, modules):
        if dep_name == name or (dep_name is None and dep.rsplit(".", 1)[-1] == name):
            return _resolve(dep, dep_name, modules, (*seen, module))
    return module  # defined in the facade itself


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports (names through facades resolved to where they are defined)."""
    return {_resolve(m, n, modules) for m, n in _raw_imports(path, modules)}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {d for d in _imports(path, modules) if d != name} for name, path in modules.items()}


def test_no_module_imports_a_higher_layer():
    bad = []
    for name, deps in _graph().items():
        mine = _layer(name)
        for dep in deps:
            if not dep.startswith(name + ".") and _layer(dep) > mine and (name, dep) not in ALLOWED_UP:
                bad.append(f"{name} (layer {mine}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_two_modules_import_each_other():
    """No import cycle at all among modules (a facade importing its own package is not one)."""
    graph = {k: {d for d in v if not d.startswith(k + ".")} for k, v in _graph().items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checks_catch_an_upward_import_anywhere(tmp_path):
    """Not vacuous: an engine importing graphs inside a function, or through a facade, is reported."""
    modules = _modules()
    fake = tmp_path / "engine.py"
    fake.write_text("def f():\n    from graphs.graph import Graph\n    from graphs import build_graph\n")
    assert _imports(fake, modules) == {"graphs.graph", "graphs.build"}
    assert _layer("graphs.graph") > _layer("attribution.engine")
    fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cases.report import Report\n")
    assert _imports(fake, modules) == set()


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_one_module_runs_traces_and_sets_activations():
    """nnsight's trace and the assignments that change an activation inside it live in attribution/engine.py."""

    def grep(pattern: str) -> set[str]:
        out = subprocess.run(
            ["git", "grep", "-lE", pattern, "--", *PACKAGES, "bench", "studies"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return set(out.split())

    assert grep(r"\.lm\.trace\(|nnsight\.save|\.trace\(ids") == {"attribution/engine.py"}
    assert grep(r"env\.(output|input) = ") == {"attribution/engine.py"}


def test_no_test_imports_from_bench():
    """bench/ (benchmarks, peers) stands on the library; the library's tests never reach into it."""
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "bench"]
    assert not bad, "\n".join(bad)
