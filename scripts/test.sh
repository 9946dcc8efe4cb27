#!/usr/bin/env bash
# One command: install if needed (scripts/setup.sh), then run the test suite.
#   bash scripts/test.sh [pytest args]     e.g. bash scripts/test.sh --run-slow -k app
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_SAMPLE_DATA=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
