#!/usr/bin/env bash
# Orthanc as a local PACS for the SAM-Med3D app: DICOMweb on 127.0.0.1 only.
#
#   bash scripts/orthanc/orthanc.sh install         apt-get install orthanc + orthanc-dicomweb (no recommends)
#   bash scripts/orthanc/orthanc.sh start           start (idempotent: an Orthanc already serving ORTHANC_HOME is kept)
#   bash scripts/orthanc/orthanc.sh load [DIR]      make the sample DICOM series (if needed) and upload them
#   bash scripts/orthanc/orthanc.sh status          0 when it answers
#   bash scripts/orthanc/orthanc.sh stop
#   bash scripts/orthanc/orthanc.sh up              install + start + load (everything above)
#
# Environment:
#   ORTHANC_HOME       storage, config, log and pid file       (default: <repo>/build/orthanc)
#   ORTHANC_HTTP_PORT  HTTP port (REST API, DICOMweb /dicom-web) (default: 8042)
#   DICOM_DIR          the series folder to load                (default: <repo>/sample-data/dicom)
#   PYTHON             python with pydicom + SimpleITK          (default: <repo>/.venv/bin/python)
#
# The config is scripts/orthanc/orthanc.json (DICOMweb plugin, RemoteAccessAllowed false, no DICOM
# port) plus the storage folder and port above, merged into $ORTHANC_HOME/orthanc-runtime.json.
# DICOMweb root for MONAI Label: http://127.0.0.1:$ORTHANC_HTTP_PORT/dicom-web
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ORTHANC_HOME="${ORTHANC_HOME:-$REPO/build/orthanc}"
PORT="${ORTHANC_HTTP_PORT:-8042}"
DICOM_DIR="${DICOM_DIR:-$REPO/sample-data/dicom}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
URL="http://127.0.0.1:$PORT"
PIDFILE="$ORTHANC_HOME/orthanc.pid"
LOG="$ORTHANC_HOME/orthanc.log"

die() { echo "orthanc.sh: $*" >&2; exit 1; }

orthanc_bin() {
  command -v Orthanc 2>/dev/null || { [ -x /usr/sbin/Orthanc ] && echo /usr/sbin/Orthanc; } || true
}

install() {
  if [ -n "$(orthanc_bin)" ] && [ -f "$PLUGIN" ]; then
    echo "orthanc and orthanc-dicomweb already installed"
    return 0
  fi
  command -v apt-get >/dev/null || die "Orthanc is not installed and apt-get is not available"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "+ apt-get install --no-install-recommends orthanc orthanc-dicomweb"
  # policy-rc.d may refuse to start the system service; we run our own instance anyway
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb
  [ -n "$(orthanc_bin)" ] && [ -f "$PLUGIN" ] || die "install finished but Orthanc or $PLUGIN is missing"
}

answers() { curl -fsS -m 3 "$URL/system" 2>/dev/null | grep -q '"ApiVersion"'; }

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  local bin; bin="$(orthanc_bin)"
  [ -n "$bin" ] || die "Orthanc not found: run 'bash scripts/orthanc/orthanc.sh install' (Debian package orthanc)"
  [ -f "$PLUGIN" ] || die "$PLUGIN not found: apt-get install --no-install-recommends orthanc-dicomweb"
  mkdir -p "$ORTHANC_HOME/storage"
  if running_pid >/dev/null; then
    if answers; then echo "Orthanc already running (pid $(running_pid)) at $URL"; return 0; fi
    die "Orthanc pid $(running_pid) of $ORTHANC_HOME is alive but $URL does not answer; see $LOG"
  fi
  if answers; then
    die "port $PORT already serves another Orthanc (not this ORTHANC_HOME=$ORTHANC_HOME); stop it or set ORTHANC_HTTP_PORT"
  fi
  python3 - "$HERE/orthanc.json" "$ORTHANC_HOME" "$PORT" > "$ORTHANC_HOME/orthanc-runtime.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["StorageDirectory"] = cfg["IndexDirectory"] = sys.argv[2] + "/storage"
cfg["HttpPort"] = int(sys.argv[3])
json.dump(cfg, sys.stdout, indent=1)
EOF
  # setsid: its own process group, so `stop` (and test traps) can end it and nothing else
  setsid "$bin" "$ORTHANC_HOME/orthanc-runtime.json" >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if answers; then
      curl -fsS -m 3 "$URL/dicom-web/studies" >/dev/null \
        || die "Orthanc answers but DICOMweb ($URL/dicom-web) does not: is the plugin loaded? see $LOG"
      echo "Orthanc $(curl -fsS "$URL/system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])') at $URL (pid $(cat "$PIDFILE"), storage $ORTHANC_HOME/storage)"
      echo "DICOMweb: $URL/dicom-web"
      return 0
    fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$LOG" >&2; die "Orthanc exited at start (log: $LOG)"; }
    sleep 0.25
  done
  tail -20 "$LOG" >&2
  die "Orthanc did not answer on $URL within 30 s (log: $LOG)"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "Orthanc (pid $pid) stopped"
  else
    echo "Orthanc of $ORTHANC_HOME is not running"
  fi
  rm -f "$PIDFILE"
}

load() {
  local dir="${1:-$DICOM_DIR}"
  [ -x "$PYTHON" ] || die "$PYTHON not found: run scripts/setup.sh first (or set PYTHON)"
  if [ ! -f "$dir/manifest.json" ]; then
    "$PYTHON" "$REPO/scripts/make_dicom_series.py" --out "$dir"
  fi
  "$PYTHON" "$HERE/load_series.py" --url "$URL" "$dir"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "Orthanc answers at $URL"; else echo "no Orthanc at $URL"; exit 1; fi ;;
  load) shift; load "$@" ;;
  up) install; start; shift; load "$@" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
