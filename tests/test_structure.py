"""The structure bar (DESIGN.md section 3): arrows point down -- no import cycle between
the modules of engine/, kernels/ and export/ -- and no private name crosses a module.

Every import counts, including those inside functions, and ``importlib.import_module`` of
a literal or of a module-level table of literals (the lazy ``_LAZY[name]`` pattern).
``from pkg import name`` counts as importing the submodule ``pkg.name`` when there is one
(compiled extensions declared in setup.py included), else as importing ``pkg``.
``import a.b`` counts as importing ``a.b`` only. A private name is one with a leading
underscore that is not a dunder; a private module (``engine_kernels._triton``) is private to its
parent package.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package as its path under the root: kernels/ and export/ are source roots holding the
# uniquely named packages engine_kernels and engine_export (no import name of the ecosystem).
PACKAGES = ("engine", "kernels/engine_kernels", "export/engine_export")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass
class ModuleInfo:
    name: str
    path: Path
    rel: str  # path relative to the root
    is_package: bool
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module, line)
    private: list[str] = field(default_factory=list)  # "path:line: what"


def extension_modules(root: Path) -> list[str]:
    """Names of the compiled extensions ``setup.py`` declares (``*Extension("pkg.name", ...)``),
    built or not."""
    setup = root / "setup.py"
    if not setup.is_file():
        return []
    names = []
    for node in ast.walk(ast.parse(setup.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if fname.endswith("Extension") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def discover(root: Path, packages=PACKAGES) -> dict[str, ModuleInfo]:
    """Every module of ``packages`` under ``root`` (compiled extensions included, with no
    imports): dotted name -> ModuleInfo."""
    mods: dict[str, ModuleInfo] = {}
    for pkg in packages:
        source_root = root / Path(pkg).parent
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(source_root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            mods[".".join(parts)] = ModuleInfo(".".join(parts), path, path.relative_to(root).as_posix(), is_package)
    for name in extension_modules(root):
        if name.split(".")[0] in {Path(p).name for p in packages} and name not in mods:
            mods[name] = ModuleInfo(name, root / "setup.py", "setup.py", False)
    return mods


def _literal_strings(node) -> list[str] | None:
    """The strings of a literal str / tuple / list / dict-values node, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    items = node.values if isinstance(node, ast.Dict) else node.elts if isinstance(node, (ast.Tuple, ast.List)) else None
    if items is None or not all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in items):
        return None
    return [v.value for v in items]


def _dynamic_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """``importlib.import_module(X)`` with X a string literal, or a subscript of a
    module-level literal table (the lazy ``_LAZY[name]`` pattern): every module it can name."""
    tables = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            vals = _literal_strings(node.value)
            for t in targets:
                if isinstance(t, ast.Name) and vals is not None:
                    tables[t.id] = vals
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        f = node.func
        if not ((isinstance(f, ast.Attribute) and f.attr == "import_module") or
                (isinstance(f, ast.Name) and f.id == "import_module")):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) and arg.value.id in tables:
            out += [(m, node.lineno) for m in tables[arg.value.id]]
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
            out.append((arg.value, node.lineno))
    return out


def _resolve_from(mod: ModuleInfo, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _crosses(importer: str, target: str) -> str | None:
    """The private segment of module ``target`` that ``importer`` may not reach, if any:
    a private module is visible only inside its parent package."""
    parts = target.split(".")
    for i, seg in enumerate(parts):
        if _private(seg):
            parent = ".".join(parts[:i])
            if not (importer == parent or importer.startswith(parent + ".")):
                return ".".join(parts[: i + 1])
    return None


def analyse(root: Path, packages=PACKAGES) -> dict[str, ModuleInfo]:
    """Parse every module: its imports of other modules of ``packages`` and its private
    cross-module imports / attribute uses."""
    mods = discover(root, packages)
    for mod in mods.values():
        if not mod.path.name.endswith(".py"):
            continue  # a compiled extension
        rel = mod.rel
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
        aliases: dict[str, str] = {}  # local name bound to one of our modules -> module

        def note_private(line: int, what: str) -> None:
            mod.private.append(f"{rel}:{line}: {what}")

        for target, line in _dynamic_imports(tree):
            if target in mods:
                mod.imports.append((target, line))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] not in packages:
                        continue
                    if a.name in mods:
                        mod.imports.append((a.name, node.lineno))
                    bad = _crosses(mod.name, a.name)
                    if bad:
                        note_private(node.lineno, f"import {a.name} (private module {bad})")
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve_from(mod, node)
                if src.split(".")[0] not in packages:
                    continue
                bad = _crosses(mod.name, src)
                if bad:
                    note_private(node.lineno, f"from {src} import ... (private module {bad})")
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in mods:
                        mod.imports.append((sub, node.lineno))
                        aliases[a.asname or a.name] = sub
                        bad = _crosses(mod.name, sub)
                        if bad:
                            note_private(node.lineno, f"from {src} import {a.name} (private module {bad})")
                    else:
                        if src in mods:
                            mod.imports.append((src, node.lineno))
                        if _private(a.name):
                            note_private(node.lineno, f"from {src} import {a.name}")
        # attribute uses: <our module alias>(.<submodule>)*._private
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            chain, v = [], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in aliases:
                target = ".".join([aliases[v.id]] + chain[::-1])
                if target in mods and target != mod.name:
                    note_private(node.lineno, f"{target}.{node.attr} (attribute)")
    return mods


def import_graph(mods: dict[str, ModuleInfo]) -> dict[str, set[str]]:
    return {m: {t for t, _ in info.imports if t != m} for m, info in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a chain ``a -> b -> ... -> a``) per strongly connected component with more
    than one module (Tarjan), shortest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # iterative would be longer; the graph is small
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in sccs:  # shortest cycle through the component's first module (BFS inside it)
        start = min(comp)
        prev = {start: None}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path, v = [], found
        while v is not None:
            path.append(v)
            v = prev[v]
        cycles.append(path[::-1] + [start])
    return sorted(cycles, key=lambda c: (len(c), c))


def _line(mods, a: str, b: str) -> int:
    return min(line for t, line in mods[a].imports if t == b)


def describe_cycle(mods, cycle: list[str]) -> str:
    hops = [f"{a} -> {b} ({mods[a].rel}:{_line(mods, a, b)})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(hops)


# -- the bar -----------------------------------------------------------------------------
def test_no_import_cycles():
    mods = analyse(ROOT)
    cycles = find_cycles(import_graph(mods))
    assert not cycles, "import cycles:\n  " + "\n  ".join(describe_cycle(mods, c) for c in cycles)


def test_no_private_names_cross_modules():
    mods = analyse(ROOT)
    bad = sorted(p for m in mods.values() for p in m.private)
    assert not bad, "private names imported across modules:\n  " + "\n  ".join(bad)


# -- the checker itself can fail ---------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_checker_finds_cycles_and_private_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "def f():\n    from .sub.b import g  # inside a function: still counts\n    return g\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import c\n",
        "pkg/c.py": "import pkg.a as a\nfrom pkg.d import _hidden, __version__\nx = a._secret\n",
        "pkg/d.py": "_hidden = 1\n__version__ = '0'\n",
        "pkg/_impl.py": "",
        "pkg/sub/e.py": "from .._impl import thing\n",
        "other/__init__.py": "from pkg import _impl\nfrom pkg._impl import y\nimport pkg.d\nz = pkg.d._hidden\n",
    })
    mods = analyse(tmp_path, ("pkg", "other"))
    assert ("pkg.sub.b", 2) in mods["pkg.a"].imports  # relative + in-function
    assert ("pkg.c", 1) in mods["pkg.sub.b"].imports  # `from .. import c`: the submodule, not pkg
    cycles = find_cycles(import_graph(mods))
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a" in describe_cycle(mods, cycles[0])
    priv = sorted(p for m in mods.values() for p in m.private)
    assert any("pkg/c.py:2: from pkg.d import _hidden" in p for p in priv)
    assert any("pkg/c.py:3: pkg.a._secret" in p for p in priv)
    assert not any("__version__" in p for p in priv)
    assert not any(p.startswith("pkg/sub/e.py") for p in priv)  # a private module inside its package
    assert any("other/__init__.py:1:" in p and "private module pkg._impl" in p for p in priv)
    assert any("other/__init__.py:2:" in p for p in priv)
    assert any("other/__init__.py:4: pkg.d._hidden" in p for p in priv)
    # the package's own __init__, imported from a submodule, closes a cycle
    _write(tmp_path, {"pkg/d.py": "from pkg import f\n"})
    cycles = find_cycles(import_graph(analyse(tmp_path, ("pkg", "other"))))
    assert cycles == [["pkg", "pkg.a", "pkg.sub.b", "pkg.c", "pkg.d", "pkg"]]


def test_checker_sees_lazy_imports_and_extensions(tmp_path):
    _write(tmp_path, {
        "setup.py": "ext = Pybind11Extension('pkg._ext', ['a.cpp'])\n",
        "pkg/__init__.py": ("import importlib\n_LAZY = {'f': 'pkg.a'}\n"
                            "def __getattr__(n):\n    return getattr(importlib.import_module(_LAZY[n]), n)\n"),
        "pkg/a.py": "def f():\n    import importlib\n    return importlib.import_module('pkg.b')\n",
        "pkg/b.py": "import pkg\nfrom . import _ext\n",
    })
    mods = analyse(tmp_path, ("pkg",))
    assert "pkg._ext" in mods and ("pkg._ext", 2) in mods["pkg.b"].imports
    assert not [p for m in mods.values() for p in m.private]  # a private extension used inside its package
    assert find_cycles(import_graph(mods)) == [["pkg", "pkg.a", "pkg.b", "pkg"]]


def test_checker_passes_a_clean_package(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\nfrom . import b\n",
        "pkg/a.py": "from .b import g\n",
        "pkg/b.py": "import os\ndef g():\n    import pkg.c\n    return pkg.c.__name__\n",
        "pkg/c.py": "from os import path as _p\n",
    })
    mods = analyse(tmp_path, ("pkg",))
    assert find_cycles(import_graph(mods)) == []
    assert not [p for m in mods.values() for p in m.private]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
