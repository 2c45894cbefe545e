#!/usr/bin/env bash
# Run the whole test suite: unit, API (gradio_client) and browser (Chromium) tests.
# Self-contained: creates/reuses .venv, installs requirements, installs Debian's chromium if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh requirements.txt requirements-test.txt
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing chromium for the browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "chromium could not be installed: browser tests will be skipped" >&2
  else
    echo "chromium is missing (install it with: sudo apt-get install chromium): browser tests will be skipped" >&2
  fi
fi
exec python -m pytest "$@"
