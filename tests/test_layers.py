"""Layering of the package: imports point down only, no file circles, fake data stays out of production.

An AST walk over every module of the ``medprep`` package (the folders mapped in pyproject's
``[tool.setuptools.package-dir]``), no import machinery: it sees every ``import`` statement, wherever it is.

Layers, bottom to top (a module may import its own layer and the layers its row lists)::

    medprep (root __init__: the version)   imports nothing of the package
    manifests  (+ manifests/pixels.py)     root
    prep | loaders | distill               manifests, root; never each other
    top (medprep/*.py, medprep/cli/)       everything; nothing below imports it

What counts:

- **Layer rule**: every import, at module level, inside a function or under ``if TYPE_CHECKING`` (a lazy import
  still couples the two layers).
- **File circles**: every import as well, for the same reason: a function-level or type-checking import is how a
  circle is usually hidden, and it still means the two files cannot be understood or moved apart.
- **Fake data** (``FAKE``): no production module may load it when imported, directly or through other modules
  (module-level imports, parent packages included). Importing it inside a function is allowed only in
  ``LAZY_FAKE_IMPORTERS`` (the dataset modules' fake makers) and in ``DEMO`` modules, which are demo code themselves.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "medprep"

#: layer of a module (the component after ``medprep.``; ``top``: the modules of the root package beside its
#: ``__init__``, e.g. ``medprep.preview``, and the ``TOP_PACKAGES``) -> the lower layers it may import
LAYERS: dict[str, set[str]] = {
    "root": set(),
    "manifests": {"root"},
    "prep": {"manifests", "root"},
    "loaders": {"manifests", "root"},
    "distill": {"manifests", "root"},
    "top": {"manifests", "prep", "loaders", "distill", "root"},
}
#: packages of the top layer (every module in them): the command line
TOP_PACKAGES = {"medprep.cli"}
#: fake-data modules: imported by tests and demos only
FAKE = {"medprep.manifests.synthetic", "medprep.prep.synthetic", "medprep.prep.synthetic3d",
        "medprep.distill.synthetic"}
#: demo code: may import fake data at module level (and is itself never imported at module level by production code)
DEMO = {"medprep.prep.demo", "medprep.distill.demo"}
#: packages whose modules may import fake data inside functions (a dataset module's fake maker)
LAZY_FAKE_IMPORTERS = ("medprep.prep.datasets.",)


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``importer`` imports ``target`` at ``where`` (file:line) as ``kind``."""

    importer: str
    target: str
    where: str
    kind: str  # "module", "function" (inside a def: lazy) or "type-checking" (under if TYPE_CHECKING)

    def __str__(self) -> str:
        how = "" if self.kind == "module" else f", {self.kind}-level"
        return f"{self.importer} -> {self.target} ({self.where}{how})"


def modules(root: Path, package_dirs: dict[str, str]) -> dict[str, Path]:
    """Module name -> file, for every package of the mapping (each folder's own .py files)."""
    out = {}
    for pkg, folder in package_dirs.items():
        for f in sorted((root / folder).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The most specific module of the package that importing ``name`` names (None outside the package)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def imports(root: Path, known: dict[str, Path]) -> list[Import]:
    """Every import edge between modules of the package, with its place and kind."""
    edges = []
    for mod, path in known.items():
        package = mod if path.stem == "__init__" else mod.rpartition(".")[0]
        rel = path.relative_to(root).as_posix()

        def visit(node: ast.AST, kind: str) -> None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                kind = "function" if kind == "module" else kind
            elif isinstance(node, ast.If) and _is_type_checking(node.test) and kind == "module":
                for child in node.body:
                    visit(child, "type-checking")
                for child in node.orelse:
                    visit(child, kind)
                return
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for t in dict.fromkeys(targets):
                target = _resolve(t, known)
                if target is not None and target != mod:
                    edges.append(Import(mod, target, f"{rel}:{node.lineno}", kind))
            for child in ast.iter_child_nodes(node):
                visit(child, kind)

        visit(ast.parse(path.read_text(), str(path)), "module")
    return edges


def layer(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in LAYERS.keys() - {"root", "top"}:
        return parts[1]
    return "top" if len(parts) == 2 or ".".join(parts[:2]) in TOP_PACKAGES else None


def layer_violations(edges: list[Import], known: dict[str, Path]) -> list[str]:
    out = [f"{m} ({known[m]}) is in no layer: put it under one of {', '.join(f'medprep.{n}' for n in LAYERS)} "
           f"or add its layer to LAYERS in tests/test_layers.py" for m in known if layer(m) is None]
    for e in edges:
        src, dst = layer(e.importer), layer(e.target)
        if src and dst and src != dst and dst not in LAYERS[src]:
            allowed = ", ".join(sorted(LAYERS[src])) or "nothing of the package"
            out.append(f"{e}: {src} may import only its own layer and {allowed}; "
                       f"move the shared code down (manifests, manifests/pixels.py) or the caller up")
    return out


def _strongly_connected(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ.get(child, ()))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        n = stack.pop()
                        on_stack.discard(n)
                        comp.append(n)
                        if n == node:
                            break
                    out.append(sorted(comp))
    return out


def _path(first: Import, to: str, by_src: dict[str, list[Import]], within: set[str]) -> list[Import]:
    """Shortest chain of imports that starts with ``first`` and reaches ``to`` inside ``within``."""
    prev: dict[str, Import] = {}
    queue = deque([first.target])
    seen = {first.target}
    while queue:
        node = queue.popleft()
        if node == to:
            break
        for e in by_src.get(node, ()):
            if e.target in within and e.target not in seen:
                seen.add(e.target)
                prev[e.target] = e
                queue.append(e.target)
    chain, node = [], to
    while node != first.target:
        chain.append(prev[node])
        node = prev[node].importer
    return [first, *reversed(chain)]


def circles(edges: list[Import], known: dict[str, Path]) -> list[str]:
    """One import chain per file circle (strongly connected group of modules)."""
    by_src: dict[str, list[Import]] = {}
    for e in edges:
        by_src.setdefault(e.importer, []).append(e)
    succ = {m: [e.target for e in es] for m, es in by_src.items()}
    out = []
    for comp in _strongly_connected(sorted(known), succ):
        if len(comp) < 2:
            continue
        group = set(comp)
        first = next(e for e in by_src[comp[0]] if e.target in group)
        chain = _path(first, comp[0], by_src, group)
        out.append(f"file circle of {len(comp)} modules ({', '.join(comp)}): "
                   + " ; ".join(str(e) for e in chain)
                   + ": break it by moving what both need into one of them or into a lower module")
    return out


def fake_violations(edges: list[Import], known: dict[str, Path]) -> list[str]:
    """Production modules that load fake data on import, and lazy fake imports outside the allowed places."""
    out = []
    for e in edges:
        if (e.target in FAKE and e.kind != "module" and e.importer not in FAKE | DEMO
                and not e.importer.startswith(LAZY_FAKE_IMPORTERS)):
            out.append(f"{e}: fake data may be imported inside functions only by {', '.join(sorted(DEMO))} and "
                       f"the fake makers of {', '.join(LAZY_FAKE_IMPORTERS)}*; move the caller there or into tests")
    runtime: dict[str, list[Import]] = {}
    for e in edges:
        if e.kind == "module":
            runtime.setdefault(e.importer, []).append(e)
    for mod in known:  # importing a module runs its parent packages' __init__ first
        parts = mod.split(".")
        for n in range(1, len(parts)):
            runtime.setdefault(mod, []).append(Import(mod, ".".join(parts[:n]), "parent package", "module"))
    for mod in sorted(known):
        if mod in FAKE or mod in DEMO:
            continue
        prev: dict[str, Import] = {}
        queue = deque([mod])
        while queue:
            node = queue.popleft()
            for e in runtime.get(node, ()):
                if e.target in prev or e.target == mod:
                    continue
                prev[e.target] = e
                if e.target in FAKE:
                    chain, n = [], e.target
                    while n != mod:
                        chain.append(prev[n])
                        n = prev[n].importer
                    out.append(f"importing {mod} loads fake data: " + " ; ".join(str(c) for c in reversed(chain))
                               + ": import it inside the function that needs it (demo / fake maker) or in tests")
                    queue.clear()
                    break
                queue.append(e.target)
    return out


def _package_dirs(pyproject: Path) -> dict[str, str]:
    return tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    known = modules(ROOT, _package_dirs(ROOT / "pyproject.toml"))
    return known, imports(ROOT, known)


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)


def test_the_walk_sees_the_package(graph):
    known, edges = graph
    assert {"medprep", "medprep.cli", "medprep.manifests.pixels", "medprep.prep.datasets.drive"} <= set(known)
    relative = [e for e in edges if (e.importer, e.target, e.kind) ==
                ("medprep.prep.datasets.drive", "medprep.prep.datasets.base", "module")]
    assert relative and relative[0].where.startswith("prep/datasets/drive.py:")  # resolved, with its line
    assert layer("medprep.cli") == layer("medprep.preview") == "top" and layer("medprep.manifests") == "manifests"
    assert {"medprep.cli.group", "medprep.cli.build"} <= set(known) and layer("medprep.cli.build") == "top"
    assert layer("medprep.other.module") is None  # only the command line's package is top as a whole


def test_imports_point_down_the_layers(graph):
    problems = layer_violations(graph[1], graph[0])
    assert not problems, _report(problems)


def test_no_file_circles(graph):
    problems = circles(graph[1], graph[0])
    assert not problems, _report(problems)


def test_production_modules_do_not_import_fake_data(graph):
    problems = fake_violations(graph[1], graph[0])
    assert not problems, _report(problems)


def test_the_checks_catch_each_kind_of_violation(tmp_path):
    """A throw-away package with one violation of each rule: every one is found and named with its chain."""
    files = {
        "medprep/__init__.py": "",
        "medprep/cli.py": "",
        "manifests/__init__.py": "",
        "manifests/schema.py": "from medprep.prep import tree\n",  # up-edge
        "prep/__init__.py": "",
        "prep/tree.py": "def open_source():\n    from .archive import X\n",  # lazy half of a circle
        "prep/archive.py": "from .tree import open_source\nX = 1\n",
        "prep/synthetic.py": "",
        "prep/pipeline.py": "from . import helpers\n",  # loads fake data through helpers
        "prep/helpers.py": "from .synthetic import *\n",
        "loaders/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medprep.distill import x\n",
        "distill/__init__.py": "def f():\n    import medprep.cli\n    from medprep.prep import synthetic\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    known = modules(tmp_path, {"medprep": "medprep", "medprep.manifests": "manifests", "medprep.prep": "prep",
                               "medprep.loaders": "loaders", "medprep.distill": "distill"})
    edges = imports(tmp_path, known)
    layers = "\n".join(layer_violations(edges, known))
    assert "medprep.manifests.schema -> medprep.prep.tree (manifests/schema.py:1)" in layers
    assert "medprep.loaders -> medprep.distill (loaders/__init__.py:3, type-checking-level)" in layers
    assert "medprep.distill -> medprep.cli (distill/__init__.py:2, function-level)" in layers
    assert "medprep.distill -> medprep.prep.synthetic" in layers
    (circle,) = circles(edges, known)
    assert ("medprep.prep.archive -> medprep.prep.tree (prep/archive.py:1) ; "
            "medprep.prep.tree -> medprep.prep.archive (prep/tree.py:2, function-level)") in circle
    fake = "\n".join(fake_violations(edges, known))
    assert ("importing medprep.prep.pipeline loads fake data: medprep.prep.pipeline -> medprep.prep.helpers "
            "(prep/pipeline.py:1) ; medprep.prep.helpers -> medprep.prep.synthetic (prep/helpers.py:1)") in fake
    assert "medprep.distill -> medprep.prep.synthetic (distill/__init__.py:3, function-level): fake data" in fake
