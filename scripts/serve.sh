#!/usr/bin/env bash
# One command: set up (venv + sample data, skipped when done) and serve the sample studies.
#   bash scripts/serve.sh [--conf KEY VALUE ...]        e.g. --conf checkpoint /path/sam_med3d_turbo.pth
#   HOST=0.0.0.0 PORT=8000 STUDIES=/my/studies bash scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# train/scoring subprocesses re-import the app: the repo must be on PYTHONPATH
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# mlflow 3 file-store tracking fails at the first training run; tracking is off unless asked for
export MONAI_LABEL_TRACKING_ENABLED="${MONAI_LABEL_TRACKING_ENABLED:-false}"
exec .venv/bin/python -m monailabel.main start_server --app apps/sammed3d \
  --studies "${STUDIES:-sample-data/studies}" --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
