"""The package's import graph, read from the source with `ast`: no module imports itself back, and
every subpackage imports only what its docstring's "May import:" line allows.

Every import counts, those inside functions included: a function-level import is how a circle
hides (config -> plan -> parallel -> config was one), and it closes the circle when it runs."""

from __future__ import annotations

import ast
import os
import re

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


def declared_imports(path: str) -> set[str] | None:
    """The modules and packages a subpackage's docstring allows it to import ("May import: ..."),
    or None where it declares nothing."""
    doc = ast.get_docstring(ast.parse(open(path).read(), path)) or ""
    m = re.search(r"May import:(.*?)(\n\n|$)", doc, re.S)
    return None if m is None else set(re.findall(r"jaxprompt(?:\.[a-z_]+)*", m.group(1)))


def test_the_package_has_no_import_cycle():
    found = modules()
    graph = {m: imports_of(m, path, set(found)) for m, path in found.items()}
    assert len(graph) > 60 and graph["jaxprompt.cli.main"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_subpackage_imports_only_what_its_docstring_allows():
    found = modules()
    packages = {m: declared_imports(p) for m, p in found.items() if p.endswith("__init__.py") and m != "jaxprompt"}
    assert all(allowed for allowed in packages.values()), \
        f"a subpackage without a 'May import:' line: {[m for m, a in packages.items() if not a]}"
    within = lambda m, p: m == p or m.startswith(p + ".")
    bad = []
    for module, path in found.items():
        owners = [p for p in packages if within(module, p)]
        if not owners:
            continue  # the package root's modules and the public API
        owner = max(owners, key=len)  # the innermost subpackage that declares
        for imported in imports_of(module, path, set(found)):
            if not within(imported, owner) and not any(within(imported, a) for a in packages[owner]):
                bad.append(f"{module} imports {imported}")
    assert not bad, "imports a docstring does not allow: " + "; ".join(sorted(bad))


def test_serving_evaluation_inference_and_loading_import_nothing_from_training():
    found = modules()
    graph = {m: imports_of(m, path, set(found)) for m, path in found.items()}
    for top in ("jaxprompt.serving", "jaxprompt.evaluation", "jaxprompt.inference", "jaxprompt.runs.load"):
        reached, todo = set(), [m for m in found if m == top or m.startswith(top + ".")]
        while todo:  # everything these modules import, directly or not
            m = todo.pop()
            if m not in reached:
                reached.add(m)
                todo += graph[m]
        assert not [m for m in reached if m.startswith("jaxprompt.training")], \
            f"{top} reaches {sorted(m for m in reached if m.startswith('jaxprompt.training'))}"
