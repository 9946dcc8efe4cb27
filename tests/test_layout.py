"""Layout of apps/sammed3d/lib: no import cycle (imports inside functions included), no package imports
one that imports it back, the evaluation package's layer rules, and no module over 420 lines.

Static: every module is parsed with `ast`, nothing is imported.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

APP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "sammed3d")
MAX_LINES = 420


def _modules() -> Dict[str, str]:
    """{dotted module name: path} of every .py file under lib/ (a package is its __init__.py)."""
    out = {}
    for folder, dirs, files in os.walk(os.path.join(APP_DIR, "lib")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, APP_DIR)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> Set[str]:
    """Modules of lib that `name` imports anywhere in its file (top level, functions, classes)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _package(module: str) -> str:
    """lib.<package> (or the top-level module lib.<name>)."""
    return ".".join(module.split(".")[:2])


def test_graph_sees_the_imports():
    """The parser finds relative, absolute and function-level imports (guards the test itself)."""
    assert "lib.evaluation.clicks" in GRAPH["lib.training.loop"]
    assert "lib.training.recipe" in GRAPH["lib.training.loop"]  # `from . import recipe`
    assert "lib.medsam.engine" in GRAPH["lib.evaluation.medsam"]
    assert "lib.session" in GRAPH["lib.evaluation.command"]  # inside build_engine


def test_no_module_import_cycle():
    assert _cycles(GRAPH) == []


def test_no_package_import_cycle():
    packages: Dict[str, Set[str]] = {}
    for a, targets in GRAPH.items():
        for b in targets:
            if _package(a) != _package(b):
                packages.setdefault(_package(a), set()).add(_package(b))
            packages.setdefault(_package(b), set())
    assert _cycles(packages) == []


def test_evaluation_layer():
    """lib/evaluation sits above lib/session and lib/medsam (which never import it); training takes
    only the click rule from it; its __init__ imports nothing (the GPU training box has no monai)."""
    for name, targets in GRAPH.items():
        if _package(name) in ("lib.session", "lib.medsam", "lib.model", "lib.synthetic"):
            assert not {t for t in targets if _package(t) == "lib.evaluation"}, name
        if _package(name) == "lib.evaluation":
            assert not {t for t in targets if _package(t) in ("lib.training", "lib.trainers", "lib.activelearning",
                                                            "lib.infers")}, name
        if _package(name) == "lib.training":
            assert {t for t in targets if _package(t) == "lib.evaluation"} <= {"lib.evaluation.clicks"}, name
    assert GRAPH["lib.evaluation"] == set()
    assert GRAPH["lib.evaluation.clicks"] == set()


# docs/architecture.md's layer table: a package imports only packages of its own layer or below.
LAYERS = {
    "lib.model": 0, "lib.synthetic": 0, "lib.util": 0,
    "lib.session": 1, "lib.medsam": 1,
    "lib.evaluation": 2,
    "lib.training": 3, "lib.dataengine": 3,
    "lib.trainers": 4, "lib.activelearning": 4, "lib.versions": 4, "lib.weights": 4,
    "lib.infers": 5, "lib.guards": 5, "lib.dicom": 5, "lib.datastore": 5,
    "lib.configs": 6,
}


def test_package_layers():
    """Every package is placed in the table, imports nothing above its layer, and layer 0 imports no
    other lib package; lib/session never imports lib/medsam (the MedSAM protocol sits on it)."""
    packages = {_package(n) for n in MODULES if n != "lib"}
    assert packages - set(LAYERS) == set(), "place new packages in docs/architecture.md and LAYERS"
    wrong = set()
    for name, targets in GRAPH.items():
        if name == "lib":
            continue
        a = _package(name)
        for t in targets:
            b = _package(t)
            if b == a:
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[a] == 0) or (a == "lib.session" and b == "lib.medsam"):
                wrong.add(f"{name} -> {t}")
    assert wrong == set()
    assert "lib.model.medsam.lite_medsam" in MODULES  # the MedSAM network lives beside SAM-Med3D's


def _command_shape(path: str):
    """(imports argparse, has a `__main__` block, defines main, the block only calls main)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    argparse_ = any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
                    or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree))
    has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    calls_main = all(len(g.body) == 1 and "main(" in ast.unparse(g.body[0]) for g in guards)
    return argparse_, bool(guards), has_main, calls_main


def _scripts():
    folder = os.path.join(os.path.dirname(APP_DIR), os.pardir, "scripts")
    for root, dirs, files in os.walk(os.path.normpath(folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield from (os.path.join(root, f) for f in files if f.endswith(".py"))


def test_commands_follow_the_rule():
    """docs/architecture.md, "Where commands live": a command is a module with main() and a __main__
    block that only calls it; argparse and __main__ blocks only there; lib.<package>.__main__ only
    calls command.main; layer 0 has no commands."""
    wrong = []
    for path in [p for n, p in MODULES.items()] + list(_scripts()):
        name = os.path.relpath(path, os.path.dirname(APP_DIR))
        if path.endswith("__main__.py"):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if "from .command import main" not in text:
                wrong.append(f"{name}: __main__.py must call command.main")
            continue
        argparse_, guard, has_main, calls_main = _command_shape(path)
        if (argparse_ or guard) and not (guard and has_main and calls_main):
            wrong.append(f"{name}: argparse/__main__ outside a command module (main() + a block calling it)")
    for n, p in MODULES.items():
        if n != "lib" and LAYERS.get(_package(n)) == 0 and (_command_shape(p)[1] or p.endswith("__main__.py")):
            wrong.append(f"{n}: layer 0 has no commands")
    assert wrong == []
    assert {n for n in MODULES if n.endswith("__main__")} == {"lib.evaluation.__main__"}
    assert _command_shape(MODULES["lib.medsam.fetch"])[1:] == (True, True, True)
    assert _command_shape(MODULES["lib.medsam.teacher"])[1:] == (True, True, True)


def test_modules_are_small():
    sizes = {}
    for name, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            sizes[name] = sum(1 for _ in f)
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
