#!/usr/bin/env bash
# Run the studio on the built-in demo dataset: http://127.0.0.1:7860 (flags pass through to app.py,
# e.g. --port 8080, --share, --auth user:pass). Self-contained: creates/reuses .venv and installs
# the requirements the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh requirements.txt
exec python app.py "$@"
