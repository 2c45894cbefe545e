# Sourced by the other scripts: create or reuse .venv (Python 3.11) and install what is missing.
# Usage: source scripts/venv.sh [requirements files...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TUNER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
# The pinned torch wheels are built for Python 3.11: say so now rather than fail deep inside pip.
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "tuner needs Python 3.11 (found: $("$PY" --version 2>/dev/null | head -1 || true)). Install it (Debian/Ubuntu:" \
       "sudo apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11." >&2
  return 1 2>/dev/null || exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtual environment in $VENV ($("$PY" --version))" >&2
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap separately (python3.11-venv).
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "Installing python3.11-venv (needed to create virtual environments)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv) >/dev/null 2>&1 || true
    fi
    "$PY" -m venv "$VENV" || { echo "Could not create $VENV: install python3.11-venv" \
      "(sudo apt-get install python3.11-venv) and run this again." >&2; rm -rf "$VENV"; return 1 2>/dev/null || exit 1; }
  fi
fi
# --no-cache-dir: torch's CUDA build is ~5.5 GB installed; a second copy of its wheels in pip's cache
# is what ran a CI machine out of disk. A reinstall downloads again instead.
# Install a requirements file only when it changed since it was last installed: one stamp per file
# holds its hash, so the studio (requirements.txt) and the tests (+ requirements-test.txt) do not
# reinstall each other's set.
CHANGED=()
for REQ in "$@"; do
  STAMP="$VENV/.tuner-stamp-$(basename "$REQ")"
  [ "$(cat "$STAMP" 2>/dev/null)" = "$(cd "$ROOT" && sha256sum < "$REQ" | cut -d' ' -f1)" ] || CHANGED+=("$REQ")
done
if [ ${#CHANGED[@]} -gt 0 ]; then
  echo "Installing ${CHANGED[*]} into $VENV (torch is large: a few minutes the first time)" >&2
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check \
    $(printf -- '-r %s ' "${CHANGED[@]}"))
  for REQ in "${CHANGED[@]}"; do
    (cd "$ROOT" && sha256sum < "$REQ" | cut -d' ' -f1) > "$VENV/.tuner-stamp-$(basename "$REQ")"
  done
fi
# tuner itself, editable: `tuner ...` and `import tuner` then use this checkout's code as it is edited.
# Reinstalled when pyproject.toml changes (its entry points and package data), or when the install
# points at another checkout (a copy of the folder, or a clone reusing TUNER_VENV).
STAMP="$VENV/.tuner-stamp-project"
WANT="$ROOT $(cd "$ROOT" && sha256sum < pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "Installing tuner from $ROOT into $VENV (editable)" >&2
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps -e .)
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export GRADIO_ANALYTICS_ENABLED=False
