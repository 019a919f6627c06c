"""The import graph follows the data flow: prompt -> model + dictionaries -> the engine -> attributions and
interventions -> graphs (data) -> renderers -> command lines. No module imports a higher layer at module
level (exporters such as Graph.to_html import their renderer when called), and one module runs traces."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer of each module, by the first pattern its dotted name matches (a package's __init__ is a facade that
# re-exports its own modules: it sits at the top of its package)
LAYERS = [
    (0, r"attribution\.(errors|compute|memory|cache|tokens|metrics|nodes|splice|edits)$"),
    (0, r"attribution\.(models|saes)(\..*)?$"),
    (1, r"attribution\.engine$"),
    (2, r"attribution\.(attribute|ablate|compare|find)$"),
    (2, r"attribution\.(explain|training)(\..*)?$"),
    (3, r"graphs\.(nodes|graph|prune|groups|edges|build|replacement|scores|interventions|labels)$"),
    (4, r"graphs\.(render|html|schema|notebook)$"),
    (4, r"cases(\..*)?$"),
    (5, r"attribution\.(cli|console|__main__)$"),
    (5, r"(attribution|graphs)$"),  # the package facades
]


def _layer(module: str) -> int:
    for layer, pattern in LAYERS:
        if re.match(pattern, module):
            return layer
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: give it one")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("attribution", "graphs", "cases"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports at module level (from pkg import mod counts as pkg.mod)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("attribution", "graphs", "cases")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("attribution", "graphs", "cases"):
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found


def test_no_module_imports_a_higher_layer():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        mine = _layer(name)
        for dep in _imports(path, modules):
            if dep != name and not dep.startswith(name + ".") and _layer(dep) > mine:
                bad.append(f"{name} (layer {mine}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check is not vacuous: an engine importing graphs would be reported."""
    fake = tmp_path / "engine.py"
    fake.write_text("from graphs.graph import Graph\n")
    modules = _modules()
    deps = _imports(fake, modules)
    assert deps == {"graphs.graph"} and _layer("graphs.graph") > _layer("attribution.engine")


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_one_module_runs_traces_and_sets_activations():
    """nnsight's trace and the assignments that change an activation inside it live in attribution/engine.py."""

    def grep(pattern: str) -> set[str]:
        out = subprocess.run(
            ["git", "grep", "-lE", pattern, "--", "attribution", "graphs", "cases", "bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return set(out.split())

    assert grep(r"\.lm\.trace\(|nnsight\.save|\.trace\(ids") == {"attribution/engine.py"}
    assert grep(r"env\.(output|input) = ") == {"attribution/engine.py"}
