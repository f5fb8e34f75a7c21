#!/usr/bin/env bash
# Does the engine work with the newest releases? Installs the project WITHOUT constraints.txt
# (so pip takes the newest transformers, diffusers, kernels, huggingface_hub, torch, ... that
# this machine's index allows) into a throw-away venv, runs the whole suite there, and records
# the versions and the result in tools/check_latest.last.txt (commit it).
#   bash tools/check_latest.sh            # the whole suite
#   bash tools/check_latest.sh -x -q tests/test_wan_parity.py   # or pytest arguments of your own
# When it passes, move the pins in constraints.txt to the versions it lists.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
. "$tmp/venv/bin/activate"
start=$(date +%s)
pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" >"$tmp/install.log" 2>&1 \
  || { tail -20 "$tmp/install.log"; echo "check_latest: the install failed"; exit 1; }
[ $# -gt 0 ] || set -- -q
python -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$tmp/pytest.log"
rc=${PIPESTATUS[0]}
{
  echo "# tools/check_latest.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD), $(python -c 'import platform; print(platform.python_version(), platform.machine())')"
  echo "# pytest $*: exit $rc, $(( $(date +%s) - start )) s install + tests"
  echo "# $(tail -1 "$tmp/pytest.log")"
  pip freeze 2>/dev/null | grep -iE '^(torch|triton|transformers|diffusers|kernels|huggingface.hub|tokenizers|safetensors|numpy|scipy|av|onnx|onnxruntime|onnxscript|pillow)=='
} > tools/check_latest.last.txt
cat tools/check_latest.last.txt
exit "$rc"
