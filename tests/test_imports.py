"""The package's import graph, read from the source with `ast`: no module imports itself back.

Every import counts, those inside functions included: a function-level import is how a circle
hides (config -> plan -> parallel -> config was one), and it closes the circle when it runs."""

from __future__ import annotations

import ast
import os

import jaxprompt

PACKAGE = os.path.dirname(jaxprompt.__file__)


def modules() -> dict[str, str]:
    """Module name -> source path, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(root, name)
    return out


def imports_of(module: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (`from a import b` is
    an import of the module `a.b` where that is one, else of `a`)."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (as the path that closes it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    found = modules()
    graph = {m: imports_of(m, path, set(found)) for m, path in found.items()}
    assert len(graph) > 40 and graph["jaxprompt.cli"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_function_level_circle(tmp_path):
    """The check itself: the circle the settings once closed through a function-level import."""
    files = {"config": "def check():\n    from jaxprompt.plan import parse_bytes\n",
             "plan": "def plans():\n    from jaxprompt.parallel import MeshParallel\n",
             "parallel": "from jaxprompt.config import parse_mesh\n"}
    paths = {}
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
        paths[f"jaxprompt.{name}"] = str(tmp_path / f"{name}.py")
    graph = {m: imports_of(m, p, set(paths)) for m, p in paths.items()}
    assert graph["jaxprompt.config"] == {"jaxprompt.plan"}
    assert find_cycle(graph) == ["jaxprompt.config", "jaxprompt.plan", "jaxprompt.parallel", "jaxprompt.config"]
    graph["jaxprompt.parallel"] = set()
    assert find_cycle(graph) is None
