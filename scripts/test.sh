#!/usr/bin/env bash
# One command: install if needed (scripts/setup.sh), run the test suite, then the DICOM end-to-end
# test (Orthanc + OHIF in headless Chromium + DICOM SEG back to the PACS; it installs what it needs).
#   bash scripts/test.sh [pytest args]     e.g. bash scripts/test.sh --run-slow -k app
#   SKIP_E2E=1 bash scripts/test.sh        unit and server tests only
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_SAMPLE_DATA=1 bash scripts/setup.sh
if [ "${SKIP_E2E:-0}" != "1" ]; then
  bash scripts/orthanc/orthanc.sh install   # apt: orthanc + orthanc-dicomweb, so the PACS tests run too
fi
.venv/bin/python -m pytest -q "$@"
if [ "${SKIP_E2E:-0}" != "1" ]; then
  bash tests/e2e/ohif_orthanc.sh
fi
