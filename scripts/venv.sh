# Sourced by the other scripts: create or reuse .venv (Python 3.11) and install what is missing.
# Usage: source scripts/venv.sh [requirements files...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TUNER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtual environment in $VENV ($("$PY" --version))" >&2
  "$PY" -m venv "$VENV"
fi
# --no-cache-dir: torch's CUDA build is ~5.5 GB installed; a second copy of its wheels in pip's cache
# is what ran a CI machine out of disk. A reinstall downloads again instead.
# Install only when the requirements changed since the last install (a stamp holds their hash).
STAMP="$VENV/.tuner-requirements"
WANT="$(cd "$ROOT" && cat "$@" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "Installing $* into $VENV (torch is large: a few minutes the first time)" >&2
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check $(printf -- '-r %s ' "$@"))
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export GRADIO_ANALYTICS_ENABLED=False
