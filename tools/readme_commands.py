"""Print one of the README's two set-up commands: ``main`` (install + the main job on the
embedded model) or ``test`` (install + the test suite).

The README marks each with an HTML comment on the line before its code block
(``<!-- setup:main -->`` / ``<!-- setup:test -->``); CI (``.ci/run``) runs the ``test`` one
exactly as written, and ``tests/test_install.py`` checks both are there, once each.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(name: str, text: str | None = None) -> str:
    """The one-line shell command under ``<!-- setup:NAME -->`` in the README (a str)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = re.findall(r"<!-- setup:" + re.escape(name) + r" -->\s*\n```[a-z]*\n(.+?)\n```", text)
    if len(found) != 1:
        raise SystemExit(f"README.md must hold exactly one '<!-- setup:{name} -->' command block, found {len(found)}")
    return found[0].strip()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("main", "test"):
        raise SystemExit("usage: python3 tools/readme_commands.py main|test")
    print(readme_command(sys.argv[1]))
