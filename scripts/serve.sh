#!/usr/bin/env bash
# One command: set up (venv + sample data, skipped when done) and serve the sample studies.
#   bash scripts/serve.sh [--conf KEY VALUE ...]        e.g. --conf checkpoint /path/sam_med3d_turbo.pth
#   HOST=0.0.0.0 PORT=8000 STUDIES=/my/studies bash scripts/serve.sh
# Binds 127.0.0.1 unless HOST says otherwise (the app logs a warning for any other address), and
# lets no other web site's pages call the server from a browser (CORS; OHIF at /ohif/ is same-origin).
# Security and exposure: README.md, "Security"; docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# train/scoring subprocesses re-import the app: the repo must be on PYTHONPATH
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# mlflow 3 file-store tracking fails at the first training run; tracking is off unless asked for
export MONAI_LABEL_TRACKING_ENABLED="${MONAI_LABEL_TRACKING_ENABLED:-false}"
# MONAI Label's default CORS policy is any origin, with credentials. Its origin list is stored with
# a trailing '/', which no browser Origin matches, so this value allows no cross-origin caller.
export MONAI_LABEL_CORS_ORIGINS="${MONAI_LABEL_CORS_ORIGINS:-[\"http://127.0.0.1:${PORT:-8000}\"]}"
exec .venv/bin/python -m monailabel.main start_server --app apps/sammed3d \
  --studies "${STUDIES:-sample-data/studies}" --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
