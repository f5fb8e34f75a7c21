"""The one-engine bar (issue "One engine for every method"): the engine has ONE loop over
sampler steps -- :func:`engine.denoise.sample` -- and the executor and the denoise core
import no model family.

A loop over sampler steps is a ``for`` / ``while`` statement that iterates over a
``range(...)`` of something's ``num_steps`` or ``timesteps``, or whose body both asks a
sampler for a ``timestep(...)`` and takes a ``step(...)``. Comprehensions that build
tables are not loops over steps (they run no model).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "engine/denoise.py"
SEARCHED = ("engine", "export/engine_export", "bench")
#: modules that run jobs and must not know any model family
FAMILY_FREE = ("engine/runtime.py", "engine/denoise.py")


def _calls(node: ast.AST, attr: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
               for n in ast.walk(node))


def _iterates_steps(loop: ast.For) -> bool:
    it = loop.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id in ("range", "enumerate"):
        return any(isinstance(n, ast.Attribute) and n.attr in ("num_steps", "timesteps") for n in ast.walk(it))
    return isinstance(it, ast.Attribute) and it.attr == "timesteps"


def step_loops(source: str) -> list[int]:
    """Line numbers of the loops over sampler steps in ``source`` (a module's text)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.For, ast.While)):
            body = ast.Module(body=node.body, type_ignores=[])
            if (isinstance(node, ast.For) and _iterates_steps(node)) or (_calls(body, "timestep")
                                                                         and _calls(body, "step")):
                out.append(node.lineno)
    return out


def model_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of an ``engine.models`` module (relative or absolute,
    at module level or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            names = [a.name for a in node.names]
            if mod.lstrip(".").startswith("models") or mod.startswith("engine.models") or (
                    mod in (".", "engine") and "models" in names):
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("engine.models")]
    return out


def _modules():
    for pkg in SEARCHED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def test_one_loop_over_sampler_steps():
    found = {rel: lines for rel, text in _modules() if rel != CORE and (lines := step_loops(text))}
    assert not found, (f"loops over sampler steps outside {CORE}: {found}; run them through "
                       f"engine.denoise.sample with a pass builder")
    assert step_loops((ROOT / CORE).read_text()), f"{CORE} lost its loop (the checker would pass on anything)"


def test_runtime_imports_no_model():
    found = {rel: imps for rel in FAMILY_FREE if (imps := model_imports((ROOT / rel).read_text()))}
    assert not found, f"the executor / denoise core import model modules: {found}"


def test_checkers_can_fail():
    """Both checkers flag what they are meant to and pass the shapes that are not loops."""
    second_loop = textwrap.dedent("""
        def run(steps, x, model):
            for i in range(steps.num_steps):
                x = steps.step(i, x, model(x, steps.timestep(i)))
            return x

        def run2(smp, x, f):
            i = 0
            while i < 3:
                x = smp.step(i, x, f(smp.timestep(i)))
                i += 1

        def run3(sched, x, f):
            for t in sched.timesteps:
                x = f(x, t)
    """)
    assert step_loops(second_loop) == [3, 9, 14]
    harmless = textwrap.dedent("""
        def table(num_steps):
            s = [1.0 - i / num_steps for i in range(num_steps + 1)]
            for k in range(3):
                print(k)
            return s
    """)
    assert step_loops(harmless) == []
    imports = textwrap.dedent("""
        from .models.vae import encode_frames
        from . import models
        def f():
            from engine.models.wan import WanDiT
            import engine.models.cogvideox
        from .plans import Plan
    """)
    assert [m for _, m in model_imports(imports)] == [".models.vae", ".", "engine.models.wan",
                                                      "engine.models.cogvideox"]
