#!/usr/bin/env bash
# weakseg quick start: sets up a local virtual environment, then runs a job.
#
#   bash scripts/run.sh demo        set up, then `weakseg demo` on the embedded phantom
#   bash scripts/run.sh test        set up (with dev tools), then lint, type check (mypy) and
#                                   the whole test suite
#   bash scripts/run.sh <args...>   set up, then `weakseg <args...>`
#
# PyTorch: if the Python used here (PYTHON, default python3.11 or python3) already has
# torch (a CUDA build, say), the venv is created with --system-site-packages and keeps
# it; otherwise torch==2.13.0 (CPU) is installed first, so pip never resolves a bare
# `torch` requirement to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WEAKSEG_VENV:-.venv}
if [ -z "${PYTHON:-}" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
job=${1:-demo}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: using the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==2.13.0"
fi
extras=""
[ "$job" = "test" ] && extras="[dev]"
stamp="$VENV/.weakseg-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing weakseg$extras"
  "$PY" -m pip install -q -e ".$extras"
  touch "$stamp"
fi

case "$job" in
  test)
    shift || true
    "$VENV/bin/ruff" check src tests benchmarks
    "$VENV/bin/mypy"
    exec "$PY" -m pytest "$@"
    ;;
  demo)
    shift || true
    exec "$VENV/bin/weakseg" demo "$@"
    ;;
  *)
    exec "$VENV/bin/weakseg" "$@"
    ;;
esac
