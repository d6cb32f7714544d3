#!/usr/bin/env bash
# The prepared GPU check: CUDA tests and speed figures in one process, within 7 minutes, no Ray.
#
#   scripts/gpu_check.sh                 # on a GPU machine: writes $OUT/gpu_check.json (or ./gpu-check-out)
#   scripts/gpu_check.sh --device cpu    # quick settings anywhere (what CI runs)
#
# The GPU machines have PyTorch, torchvision, timm, pyarrow, pillow, click, jinja2 and tqdm but no
# package index. Job specs are validated with pydantic, which they lack, and the CUDA tests need
# pytest: what is missing is installed into a temporary folder from the wheels in
# $GPU_CHECK_WHEELS (default: .gpu-wheels/ in the repository), made beforehand for their Python:
#   pip download pydantic pytest -d .gpu-wheels --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
# Without pytest the tests section reports "skipped"; without pydantic nothing runs.
# The report is rewritten after each section, so a run cut short still says what it measured.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT_DIR="${OUT:-$ROOT/gpu-check-out}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.gpu-wheels}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

MISSING=()
for package in pydantic pytest; do
  python -c "import $package" 2>/dev/null || MISSING+=("$package")
done
if ((${#MISSING[@]})) && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="$(mktemp -d)"
  trap 'rm -rf "$SITE"' EXIT
  python -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" "${MISSING[@]}"
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

# 420 s is the limit; the script budgets 400 s for its sections (imports come first) and stops itself.
timeout 420 python "$ROOT/scripts/gpu_check.py" --out "$REPORT_DIR" "$@"
