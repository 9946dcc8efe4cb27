"""Start a real `monailabel start_server` for this app on 127.0.0.1 and a free port.

Shared by the server tests and scripts/bench_http.py, so both exercise exactly what a user runs:
a separate process, the real HTTP stack, MONAI Label's own app loading.

    with LocalServer(studies_dir, {"checkpoint": path}) as server:
        MONAILabelClient(server.url).info()
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(REPO, "apps", "sammed3d")

# Settings that keep a test/bench server self-contained: no mlflow store, no background scoring,
# no datastore watcher, caches under the server's own temp folder.
QUIET_ENV = {
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(RuntimeError):
    """The server exited or never answered; the message carries the tail of its log."""


class LocalServer:
    def __init__(self, studies: str, conf: Optional[Dict[str, str]] = None, app_dir: str = APP_DIR,
                 env: Optional[Dict[str, str]] = None):
        # A DICOMweb URL is passed through; a folder is made absolute (the server's cwd differs).
        self.studies = studies if str(studies).startswith(("http://", "https://")) else os.path.abspath(studies)
        self.conf = dict(conf or {})
        self.app_dir = app_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = tempfile.mkdtemp(prefix="sammed3d-server-")
        self.log_path = os.path.join(self.workdir, "server.log")
        self.extra_env = dict(env or {})
        self.proc: Optional[subprocess.Popen] = None

    def command(self):
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", self.app_dir,
               "--studies", self.studies, "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in self.conf.items():
            cmd += ["--conf", str(k), str(v)]
        return cmd

    def launch(self) -> subprocess.Popen:
        """Start the process and return at once (start() also waits until it answers)."""
        env = dict(os.environ)
        env.update(QUIET_ENV)
        env["MONAI_LABEL_SESSION_PATH"] = os.path.join(self.workdir, "sessions")
        env["MONAI_LABEL_DATASTORE_CACHE_PATH"] = os.path.join(self.workdir, "cache")
        # train/scoring subprocesses re-import the app and need the repo on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        log = open(self.log_path, "wb")
        # cwd = workdir: MONAI Label reads a `.env` from the current folder; none must leak in.
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self.proc

    def start(self, timeout: float = 180.0) -> "LocalServer":
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerFailed(f"server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # the server runs in its own session: signal its group (uvicorn + any task subprocess)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
