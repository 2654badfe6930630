"""The layering rules of docs/architecture.md, checked on the source.

The import graph is built from the AST of every module of ours, function-level (lazy) imports
included, since those are dependencies too: one a test run never reaches would otherwise show
only when a user hits it. ``from a.b import c`` is an edge to ``a.b.c`` when that is a module,
else to ``a.b``. A package's ``__init__`` is a module of its own: importing ``a.b.c`` runs
``a/b/__init__.py`` too, but that implicit edge is not counted (every package would otherwise be
a cycle with its submodules); an explicit ``from a.b import x`` is.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evoprune", "problems", "surrogates")
MAX_LINES = 400
# Modules allowed above MAX_LINES (path relative to the repository: lines), each with its reason.
LINE_ALLOWANCE: dict[str, int] = {}

# Lowest first: a module may import modules of its own unit (the longest entry that is a prefix
# of its name) and of units in lower layers, never of a higher layer or of another unit of the
# same layer. docs/architecture.md draws the same table.
LAYERS = (
    ("surrogates",),
    ("problems",),
    ("evoprune.errors",),
    ("evoprune.cache", "evoprune.hub", "evoprune.space", "evoprune.store"),
    ("evoprune.backend", "evoprune.tasks"),
    ("evoprune.objectives", "evoprune.execution"),
    ("evoprune.engine",),
    ("evoprune.choice", "evoprune.pruned", "evoprune.reporting"),
    ("evoprune.recovery",),
    ("evoprune.cli",),
    ("evoprune.__main__", "evoprune"),  # "evoprune" here: the package's own __init__ only
)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(packages=PACKAGES) -> dict[str, Path]:
    return {_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


OURS = _sources()


def _import_targets(module: str, source: str, known) -> set[str]:
    """Modules of ours that ``module`` imports anywhere in ``source`` (``known``: every module name)."""
    is_package = any(k.startswith(module + ".") for k in known)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    found.discard(module)
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    return {m: _import_targets(m, text, sources) for m, text in sources.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def unit_of(module: str) -> tuple[int, str] | None:
    """(layer, unit) of ``module``: the longest LAYERS entry it is or lies under."""
    best = None
    for layer, units in enumerate(LAYERS):
        for unit in units:
            under = module == unit or (unit != "evoprune" and module.startswith(unit + "."))
            if under and (best is None or len(unit) > len(best[1])):
                best = (layer, unit)
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = unit_of(module)
        for target in sorted(targets):
            theirs = unit_of(target)
            if mine is None or theirs is None or mine[1] == theirs[1]:
                continue
            if theirs[0] >= mine[0]:
                out.append(f"{module} ({mine[1]}) imports {target} ({theirs[1]})")
    return out


GRAPH = import_graph({m: p.read_text() for m, p in OURS.items()})


# -- the three packages ----------------------------------------------------------------------------
def _top_level_imports(package: str) -> set[str]:
    return {t.split(".")[0] for m, targets in GRAPH.items() if m.split(".")[0] == package for t in targets}


def test_surrogates_depend_on_no_other_package_of_ours():
    assert not _top_level_imports("surrogates") & {"evoprune", "problems"}


def test_problems_do_not_depend_on_the_engine():
    assert "evoprune" not in _top_level_imports("problems")


# -- cycles ----------------------------------------------------------------------------------------
def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_check_sees_function_level_imports():
    """The cycle this layout removed: the strategy table lived in baselines, read by search in a function."""
    sources = {
        "evoprune.search": (
            "class SearchSettings:\n    def validate(self):\n        from evoprune.baselines import STRATEGIES\n"
        ),
        "evoprune.baselines": "from evoprune.search import ActiveLearning, SearchContext\n",
        "evoprune.errors": "",
    }
    assert cycles(import_graph(sources)) == [["evoprune.baselines", "evoprune.search"]]


# -- layers ----------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    assert [m for m in OURS if unit_of(m) is None] == []


def test_no_module_imports_a_higher_layer_or_a_sibling_unit():
    assert layer_violations(GRAPH) == []


def test_the_layer_check_sees_a_violation():
    graph = {
        "evoprune.backend.pruner": {"evoprune.engine.settings", "evoprune.space"},
        "evoprune.choice.plan": {"evoprune.reporting.report", "evoprune.engine.run"},
    }
    assert layer_violations(graph) == [
        "evoprune.backend.pruner (evoprune.backend) imports evoprune.engine.settings (evoprune.engine)",
        "evoprune.choice.plan (evoprune.choice) imports evoprune.reporting.report (evoprune.reporting)",
    ]


# -- every import of ours resolves ---------------------------------------------------------------
def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (also inside module-level if/try blocks)."""
    names = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


BOUND = {m: _bound_names(ast.parse(p.read_text())) for m, p in OURS.items()}


def unresolved_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in PACKAGES and a.name not in OURS]  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            if node.module not in OURS:
                out.append(f"{path.name}:{node.lineno}: no module {node.module}")
                continue
            for a in node.names:
                if a.name != "*" and f"{node.module}.{a.name}" not in OURS and a.name not in BOUND[node.module]:
                    out.append(f"{path.name}:{node.lineno}: {node.module} has no {a.name}")
    return out


@pytest.mark.parametrize("folder", ["evoprune", "problems", "surrogates", "tests", "benchmarks", "scripts"])
def test_every_import_of_ours_resolves(folder):
    """Lazy imports inside functions are not run by collecting the tests: check them all here."""
    assert [u for p in sorted((ROOT / folder).rglob("*.py")) for u in unresolved_imports(p)] == []


def test_modules_named_in_strings_exist():
    from evoprune.execution.executors import LAZY_EXECUTORS

    assert [m for m in LAZY_EXECUTORS.values() if importlib.util.find_spec(m) is None] == []


# -- each module small and saying what it holds ---------------------------------------------------
def test_modules_are_small():
    too_long = {}
    for path in OURS.values():
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n > LINE_ALLOWANCE.get(rel, MAX_LINES):
            too_long[rel] = n
    assert too_long == {}


def test_every_module_starts_with_a_docstring():
    assert [m for m, p in OURS.items() if not ast.get_docstring(ast.parse(p.read_text()))] == []
