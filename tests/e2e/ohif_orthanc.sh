#!/usr/bin/env bash
# End-to-end: Orthanc (PACS) -> MONAI Label (DICOMweb datastore) -> OHIF in headless Chromium ->
# SAM-Med3D click -> segmentation in the viewer -> saved -> DICOM SEG back in Orthanc.
#
#   bash tests/e2e/ohif_orthanc.sh
#
# Installs what it needs (apt: orthanc orthanc-dicomweb chromium; npm: playwright-core in tests/e2e),
# runs everything on 127.0.0.1 with free ports and a temp folder, and exits 0 only when
#   - the server's DICOMweb path works through MONAILabelClient (tests/e2e/client_check.py),
#   - OHIF loaded the study through the server's /proxy/dicom, a click on the target voxel reached
#     the server, and the segmentation appeared in the viewer (tests/e2e/ohif_flow.js),
#   - the saved label is a DICOM SEG in Orthanc with exactly the viewer's voxels (tests/e2e/verify_seg.py).
# Artifacts (screenshots, ohif_result.json, logs): artifacts/e2e/ (or $ARTIFACTS).
#
# Environment:
#   E2E_CHECKPOINT  weights to serve (default: the app's embedded default model if present, otherwise a
#                   small random-weights checkpoint built here)
#   E2E_REQUIRE_TARGET=1  also require the clicked voxel to be inside the mask and the SEG (a model-quality
#                   check; off by default: this test checks the DICOM/OHIF plumbing, not the weights)
#   E2E_SERIES      sample series for the OHIF part (default CTChest4), E2E_SEGMENT_GT its ground-truth
#                   segment giving the click (default "right lung")
#   KEEP_WORK=1     keep the temp folder (Orthanc storage, server log, caches)
#   E2E_SKIP_INSTALL=1  do not apt-get / npm install (fail if missing)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$REPO/tests/e2e"
PY="$REPO/.venv/bin/python"
ART="${ARTIFACTS:-$REPO/artifacts/e2e}"
DICOM_DIR="${DICOM_DIR:-$REPO/sample-data/dicom}"
SERIES_NAME="${E2E_SERIES:-CTChest4}"
SEGMENT_GT="${E2E_SEGMENT_GT:-right lung}"
WORK="$(mktemp -d /tmp/sammed3d-e2e.XXXXXX)"
SERVER_PID=""
export ORTHANC_HOME="$WORK/orthanc"

say() { echo "[e2e $(date +%H:%M:%S)] $*"; }
die() { echo "[e2e] FAILED: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null
  fi
  [ -f "$ORTHANC_HOME/orthanc.pid" ] && bash "$REPO/scripts/orthanc/orthanc.sh" stop >/dev/null
  mkdir -p "$ART"
  [ -f "$WORK/server.log" ] && cp "$WORK/server.log" "$ART/server.log"
  [ -f "$ORTHANC_HOME/orthanc.log" ] && cp "$ORTHANC_HOME/orthanc.log" "$ART/orthanc.log"
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "[e2e] kept $WORK"; else rm -rf "$WORK"; fi
  if [ $rc = 0 ]; then echo "[e2e] PASSED (artifacts: $ART)"; else echo "[e2e] exit $rc (artifacts: $ART)" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------------------------------------
rm -rf "$ART"; mkdir -p "$ART"
say "1/8 install what is missing"
[ -x "$PY" ] || { say "no .venv: running scripts/setup.sh"; bash "$REPO/scripts/setup.sh"; }
[ -x "$PY" ] || die "$PY missing after scripts/setup.sh"
[ -x "$REPO/.venv/bin/itkimage2segimage" ] || die "dcmqi (itkimage2segimage) is not in .venv: pip install dcmqi"
need_apt=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "${E2E_SKIP_INSTALL:-0}" = 1 ] && die "missing Debian packages: ${need_apt[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  say "apt-get install --no-install-recommends ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
command -v node >/dev/null || die "node is not installed (needed for playwright-core)"
want_pw="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["playwright-core"])' "$E2E/package.json")"
have_pw="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$E2E/node_modules/playwright-core/package.json" 2>/dev/null || true)"
if [ "$have_pw" != "$want_pw" ]; then
  [ "${E2E_SKIP_INSTALL:-0}" = 1 ] && die "playwright-core $want_pw not installed in tests/e2e"
  say "npm ci (playwright-core $want_pw) in tests/e2e"
  (cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)
fi

say "2/8 sample DICOM series -> $DICOM_DIR"
"$PY" "$REPO/scripts/make_dicom_series.py" --out "$DICOM_DIR"
read -r STUDY_UID SERIES_UID SERIES_FOLDER TARGET_IJK < <("$PY" - "$DICOM_DIR/manifest.json" "$SERIES_NAME" "$SEGMENT_GT" <<'EOF'
import json, sys
series = {s["name"]: s for s in json.load(open(sys.argv[1]))["series"]}
s = series.get(sys.argv[2]) or sys.exit(f"series {sys.argv[2]!r} not in {sorted(series)}")
seg = s["segments"].get(sys.argv[3]) or sys.exit(f"segment {sys.argv[3]!r} not in {sorted(s['segments'])}")
print(s["StudyInstanceUID"], s["SeriesInstanceUID"], s["folder"], ",".join(map(str, seg["click"])))
EOF
)
[ -n "${TARGET_IJK:-}" ] || die "could not read the target from $DICOM_DIR/manifest.json"
say "target: $SERIES_NAME / $SEGMENT_GT at voxel ($TARGET_IJK), series $SERIES_UID"

say "3/8 Orthanc on 127.0.0.1 (storage $ORTHANC_HOME)"
export ORTHANC_HTTP_PORT="$(free_port)"
ORTHANC="http://127.0.0.1:$ORTHANC_HTTP_PORT"
bash "$REPO/scripts/orthanc/orthanc.sh" start
bash "$REPO/scripts/orthanc/orthanc.sh" load "$DICOM_DIR"

say "4/8 weights"
REQUIRE_TARGET="${E2E_REQUIRE_TARGET:-0}"
if [ -n "${E2E_CHECKPOINT:-}" ]; then
  CKPT="$E2E_CHECKPOINT"
else
  CKPT="$("$PY" -c 'import sys; sys.path.insert(0, sys.argv[1] + "/apps/sammed3d")
from lib.weights import find_default_checkpoint
print(find_default_checkpoint(sys.argv[1] + "/apps/sammed3d/model") or "")' "$REPO")"
  if [ -z "$CKPT" ]; then
    CKPT="$WORK/small.pt"
    "$PY" - "$REPO/apps/sammed3d" "$CKPT" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import torch
from lib.model import build_sam_med3d, save_checkpoint
# the reduced configuration of tests/test_app_server.py: fast on a CPU, random weights
SMALL = {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
         "encoder_global_attn_indexes": [1, 3], "prompt_embed_dim": 96}
torch.manual_seed(0)
save_checkpoint(build_sam_med3d(SMALL), sys.argv[2], version="e2e-small-random")
EOF
  fi
fi
[ -f "$CKPT" ] || die "checkpoint $CKPT not found"
say "checkpoint: $CKPT (clicked voxel must be in the mask: $([ "$REQUIRE_TARGET" = 1 ] && echo yes || echo no))"

# ---------------------------------------------------------------------------------------------
start_server() {  # $1 = app dir; sets PORT, SERVER, SERVER_PID
  PORT="$(free_port)"
  SERVER="http://127.0.0.1:$PORT"
  # PATH: the monailabel launcher runs the first `python` on PATH, and the DICOMweb datastore needs
  # dcmqi's itkimage2segimage on PATH (otherwise it tries to download dcmqi at start and dies offline).
  # exec setsid: the server leads its own process group (pid = $!), so cleanup ends it and its children.
  (cd "$WORK" && export PATH="$REPO/.venv/bin:$PATH" PYTHONPATH="$REPO" \
    MONAI_LABEL_TRACKING_ENABLED=false MONAI_LABEL_AUTO_UPDATE_SCORING=false \
    MONAI_LABEL_DATASTORE_AUTO_RELOAD=false MONAI_LABEL_SESSION_PATH="$WORK/sessions" \
    MONAI_LABEL_DICOMWEB_CACHE_PATH="$WORK/dicom-cache" \
    MONAI_LABEL_DICOMWEB_SEARCH_FILTER='{"Modality": "CT,MR"}' && \
    exec setsid "$REPO/.venv/bin/monailabel" start_server --app "$1" --studies "$ORTHANC/dicom-web" \
      --host 127.0.0.1 --port "$PORT" --conf checkpoint "$CKPT" --conf download false) \
    >"$WORK/server.log" 2>&1 </dev/null &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    curl -fsS -m 3 "$SERVER/info/" -o "$WORK/info.json" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -30 "$WORK/server.log" >&2; die "server exited at start"; }
    sleep 0.5
  done
  tail -30 "$WORK/server.log" >&2; die "server did not answer within 120 s"
}
stop_server() {
  kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$SERVER_PID" 2>/dev/null && die "server pid $SERVER_PID did not stop"
  SERVER_PID=""
}
labels_advertised() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get("labels") else 1)' "$WORK/info.json"; }

say "5/8 MONAI Label server --studies $ORTHANC/dicom-web"
APP="$REPO/apps/sammed3d"
start_server "$APP"
# Without segment names OHIF's Point Prompts tab offers only 'background' (docs/dicom.md).
labels_advertised || die "/info advertises no segment names: OHIF could not place an include click"
SEGMENT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["labels"][0])' "$WORK/info.json")"
say "server up at $SERVER (pid $SERVER_PID, app $APP); OHIF segment to click for: $SEGMENT"

say "6/8 server-side DICOMweb check with MONAILabelClient (no browser)"
"$PY" "$E2E/client_check.py" --server "$SERVER" --orthanc "$ORTHANC" --dicom-dir "$DICOM_DIR" \
  --series-name synth_oblique_mr

say "7/8 OHIF in headless Chromium: $SERVER/ohif/monai-label?StudyInstanceUIDs=$STUDY_UID"
(cd "$E2E" && SERVER_URL="$SERVER" STUDY_UID="$STUDY_UID" SERIES_UID="$SERIES_UID" TARGET_IJK="$TARGET_IJK" \
  SEGMENT="$SEGMENT" ARTIFACTS="$ART" USER_DATA_DIR="$WORK/chromium-profile" REQUIRE_TARGET="$REQUIRE_TARGET" \
  timeout 540 node ohif_flow.js)

say "8/8 the DICOM SEG in Orthanc has the viewer's voxels"
read -r VOXELS INDEX_SUM < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["segmentation"]; print(s["voxels"], s["index_sum"])' "$ART/ohif_result.json")
TARGET_ARG=()
[ "$REQUIRE_TARGET" = 1 ] && TARGET_ARG=(--target "$TARGET_IJK")
"$PY" "$E2E/verify_seg.py" --orthanc "$ORTHANC" --series "$SERIES_UID" --series-dir "$DICOM_DIR/$SERIES_FOLDER" \
  --expect-voxels "$VOXELS" --expect-index-sum "$INDEX_SUM" "${TARGET_ARG[@]}" | tee "$ART/seg_check.json"
curl -fsS -X POST "$ORTHANC/tools/find" -d '{"Level":"Series","Query":{"Modality":"SEG"},"Expand":true}' \
  > "$ART/orthanc_seg_series.json"
say "screenshot: $ART/ohif_segmentation.png"
