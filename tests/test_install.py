"""The install as a newcomer gets it: no import name of ours shadows a package of the
ecosystem, the README's two set-up commands are there (once each) and CI runs the test one.

History: transformers 5.25 requires Hugging Face's ``kernels`` package, whose import name our
old top-level ``kernels/`` package shadowed (editable install, and the repository root first on
``sys.path`` for ``python -m engine``): diffusers' Wan VAE failed to import. ``kernels/`` and
``export/`` are now source roots holding ``engine_kernels`` and ``engine_export``.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"engine", "engine_kernels", "engine_export"}
DIST = "longhorizon-engine"


def _readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "tools" / "readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _top_level_names(dist: md.Distribution) -> set[str]:
    """The top-level import names a distribution installs (top_level.txt, else its RECORD)."""
    text = dist.read_text("top_level.txt")
    if text:
        return {n.strip() for n in text.split() if n.strip()}
    names = set()
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] in ("..", "__pycache__"):
            continue
        first = parts[0]
        if len(parts) == 1:
            if first.endswith(".py"):
                names.add(first[:-3])
            elif first.endswith((".so", ".pyd")):
                names.add(first.split(".")[0])
        else:
            names.add(first)
    return names


def repository_import_names(root: Path) -> set[str]:
    """Import names the repository root itself provides when it is on ``sys.path``: regular
    packages (folders with ``__init__.py``) and modules directly under it."""
    names = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in root.glob("*.py") if p.stem != "setup"}
    return names


def test_no_installed_distribution_shares_our_import_names():
    clashes = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().replace("_", "-") == DIST:
            continue
        common = _top_level_names(dist) & OURS
        if common:
            clashes[name] = sorted(common)
    assert not clashes, f"installed distributions own our import names: {clashes}"


def test_repository_root_shadows_nothing():
    """From the repository root (``python -m engine``, pytest) only our own names resolve to
    the checkout: a folder such as ``kernels/`` must not be a regular package there."""
    assert repository_import_names(ROOT) <= OURS | {"conftest"}, (
        f"the repository root provides import names beyond ours: {sorted(repository_import_names(ROOT) - OURS)}")


# Folders that are first on sys.path when their scripts run (``python bench/x.py``,
# ``python tools/x.py``) or when pytest imports tests from them (rootdir-relative prepend).
SCRIPT_DIRS = ("bench", "tools", "tests", "tests/kernels", "tests/release")


def installed_top_level_names() -> set[str]:
    """Every top-level import name an installed distribution (other than ours) provides."""
    names = set()
    for dist in md.distributions():
        if (dist.metadata["Name"] or "").lower().replace("_", "-") != DIST:
            names |= _top_level_names(dist)
    return names


def test_script_folders_shadow_no_installed_package():
    """A script's folder is first on sys.path: ``bench/kernels.py`` once shadowed Hugging
    Face's ``kernels`` for every ``python bench/...`` run. No module there may take the name
    of an installed package."""
    installed = installed_top_level_names()
    clashes = {d: sorted(repository_import_names(ROOT / d) & installed) for d in SCRIPT_DIRS}
    clashes = {d: c for d, c in clashes.items() if c}
    assert not clashes, f"script folders shadow installed packages: {clashes}"


def test_shadow_check_can_fail(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("")
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "numpy.py").write_text("")
    assert repository_import_names(tmp_path) == {"kernels", "engine", "numpy"}
    assert "numpy" in installed_top_level_names()


_IMPORTS = """
import pathlib, sys
root = pathlib.Path(sys.argv[1]).resolve()
import engine, engine_kernels, engine_export
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import UMT5EncoderModel, CLIPVisionModel
import kernels
where = pathlib.Path(kernels.__file__).resolve()
assert (root / "kernels") not in where.parents and "site-packages" in where.parts, f"'kernels' resolved to: {where}"
assert callable(engine.generate)
print("ok", where)
"""


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_ecosystem_models_import_beside_ours(cwd, tmp_path):
    """transformers' and diffusers' models import with Hugging Face's ``kernels`` installed,
    from the repository root and from another folder."""
    if importlib.util.find_spec("kernels") is None:
        pytest.fail("Hugging Face's 'kernels' is not installed: it is in the dev extra (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, str(ROOT)], cwd=ROOT if cwd == "root" else tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok"), proc.stdout


def test_distribution_name_is_ours():
    assert md.distribution(DIST).metadata["Name"] == DIST
    text = (ROOT / "pyproject.toml").read_text()
    assert f'name = "{DIST}"' in text and 'name = "worldengine"' not in text  # taken on the index


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    rc = _readme_commands()
    main, test = rc.readme_command("main"), rc.readme_command("test")
    for cmd in (main, test):
        assert "-c constraints.txt" in cmd, cmd  # known-good versions
        assert "python3 -m venv .venv" in cmd, cmd  # a fresh machine: its own environment
    assert "python -m engine generate" in main and "python -m pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tools/readme_commands.py test" in ci and "rm -rf .venv" in ci
    with pytest.raises(SystemExit, match="exactly one"):
        rc.readme_command("test", "no commands here")


def test_constraints_pin_what_the_dependencies_name():
    """Every direct dependency (and every dev extra) has a pin in constraints.txt."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.split(";")[0].partition("==")
            pinned[name.strip().lower().replace("_", "-")] = version.strip()
    import re

    names = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}
    missing = sorted(n for n in names if n not in pinned)
    assert not missing, f"constraints.txt has no pin for {missing}"


def relative_links(md_path: Path) -> list[str]:
    """The relative link / image targets of a markdown file (no URLs, no anchors)."""
    import re

    targets = re.findall(r"\]\(([^)\s]+)\)", md_path.read_text(encoding="utf-8"))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and t.split("#")[0]]


def test_readme_and_docs_links_exist_in_a_clone():
    """Every relative link of README.md and docs/*.md points into the repository (the
    README once linked ../shared/DESIGN.md, which a clone does not have)."""
    broken = []
    for md_path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in relative_links(md_path):
            path = (md_path.parent / target).resolve()
            if ROOT not in path.parents and path != ROOT or not path.exists():
                broken.append(f"{md_path.relative_to(ROOT)} -> {target}")
        assert "../shared/" not in md_path.read_text(encoding="utf-8"), md_path
    assert not broken, "broken links: " + ", ".join(broken)
