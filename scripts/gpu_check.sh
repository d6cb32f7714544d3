#!/usr/bin/env bash
# The prepared GPU check: CUDA tests and speed figures in one process, within 4 minutes, no Ray.
#
#   scripts/gpu_check.sh                 # on a GPU machine: writes $OUT/gpu_check.json (or ./gpu-check-out)
#   scripts/gpu_check.sh --device cpu    # quick settings anywhere (what CI runs)
#
# The GPU machines have PyTorch, torchvision, timm, pyarrow, pillow, click, jinja2 and tqdm but no
# package index. The CUDA tests need pytest: if it is missing, pure-Python wheels in
# $GPU_CHECK_WHEELS (default: .gpu-wheels/ in the repository; make them beforehand with
# `pip download pytest -d .gpu-wheels`) are installed into a temporary folder first. Without
# them the tests section reports "skipped" and every other section still runs.
# The report is rewritten after each section, so a run cut short still says what it measured.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT_DIR="${OUT:-$ROOT/gpu-check-out}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.gpu-wheels}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! python -c "import pytest" 2>/dev/null && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="$(mktemp -d)"
  trap 'rm -rf "$SITE"' EXIT
  python -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" pytest
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

# 240 s is the limit; the script budgets 215 s for its sections (imports come first) and stops itself.
timeout 240 python "$ROOT/scripts/gpu_check.py" --out "$REPORT_DIR" "$@"
