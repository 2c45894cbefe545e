#!/usr/bin/env bash
# Set up .venv with tuner installed (editable: edits to this checkout take effect at once), then use
# `source .venv/bin/activate` and `tuner ...` or `python app.py` from any folder. The other scripts run
# this same set-up themselves; pass requirements-test.txt or requirements-gpu.txt to add those sets.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh requirements.txt "$@"
echo "Ready: source .venv/bin/activate, then tuner --help (or python app.py for the studio)." >&2
