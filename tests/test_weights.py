"""Which checkpoint goes live: lib/weights.py against a local HTTP server (no internet needed)."""
import hashlib
import http.server
import os
import socket
import threading

import pytest

from lib.weights import RELEASED_NAME, WeightsError, download, find_default_checkpoint, resolve_weights

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # spans several read blocks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        _Handler.requests.append(self.path)
        if self.path == "/ok.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated.pth":  # announces more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 1000))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connection refused, like being offline
    return f"http://127.0.0.1:{port}/sam_med3d_turbo.pth"


def _default(model_dir, name="default_model.pt"):
    os.makedirs(os.path.join(model_dir, "default"), exist_ok=True)
    path = os.path.join(model_dir, "default", name)
    with open(path, "wb") as f:
        f.write(b"default-weights")
    return path


def _leftovers(model_dir):
    return [n for n in os.listdir(model_dir) if n.endswith(".part")]


def test_conf_checkpoint_wins_over_everything(tmp_path, server):
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"abc")
    model_dir = tmp_path / "model"
    _default(str(model_dir))
    (model_dir / RELEASED_NAME).write_bytes(b"released")
    choice = resolve_weights({"checkpoint": str(ckpt), "weights_url": server + "/ok.pth"}, str(model_dir))
    assert choice.source == "conf" and choice.path == str(ckpt)
    assert choice.sha256 == hashlib.sha256(b"abc").hexdigest()


def test_conf_checkpoint_missing_is_an_error_not_a_fallback(tmp_path):
    _default(str(tmp_path))
    with pytest.raises(WeightsError, match="no such file"):
        resolve_weights({"checkpoint": str(tmp_path / "nope.pt")}, str(tmp_path))


def test_conf_checkpoint_sha_mismatch(tmp_path):
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"abc")
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve_weights({"checkpoint": str(ckpt), "checkpoint_sha256": "0" * 64}, str(tmp_path))


def test_released_file_in_model_dir_is_used_without_network(tmp_path, server):
    (tmp_path / RELEASED_NAME).write_bytes(b"released")
    before = len(_Handler.requests)
    choice = resolve_weights({"weights_url": server + "/ok.pth"}, str(tmp_path))
    assert choice.source == "released" and choice.path == str(tmp_path / RELEASED_NAME)
    assert len(_Handler.requests) == before


def test_download_with_sha_check_lands_atomically(tmp_path, server):
    choice = resolve_weights({"weights_url": server + "/ok.pth", "checkpoint_sha256": PAYLOAD_SHA}, str(tmp_path))
    assert choice.source == "downloaded" and choice.sha256 == PAYLOAD_SHA
    assert (tmp_path / RELEASED_NAME).read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == []
    # the next start finds the file and does not download again
    before = len(_Handler.requests)
    assert resolve_weights({"weights_url": server + "/ok.pth"}, str(tmp_path)).source == "released"
    assert len(_Handler.requests) == before


def test_download_with_wrong_sha_is_rejected_and_leaves_nothing(tmp_path, server):
    _default(str(tmp_path))
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve_weights({"weights_url": server + "/ok.pth", "checkpoint_sha256": "f" * 64}, str(tmp_path))
    assert not (tmp_path / RELEASED_NAME).exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("path", ["/truncated.pth", "/missing.pth"])
def test_broken_download_falls_back_to_default(tmp_path, server, path):
    default = _default(str(tmp_path))
    choice = resolve_weights({"weights_url": server + path}, str(tmp_path))
    assert choice.source == "default" and choice.path == default
    assert not (tmp_path / RELEASED_NAME).exists() and _leftovers(tmp_path) == []


def test_truncated_download_raises_oserror(tmp_path, server):
    with pytest.raises(OSError, match="truncated"):
        download(server + "/truncated.pth", str(tmp_path / "x.pth"), progress=False)
    assert os.listdir(tmp_path) == []


def test_offline_falls_back_to_default_and_logs(tmp_path, closed_url, caplog):
    default = _default(str(tmp_path))
    with caplog.at_level("WARNING", logger="lib.weights"):
        choice = resolve_weights({"weights_url": closed_url, "download_timeout": "2"}, str(tmp_path))
    assert choice.source == "default" and choice.path == default
    assert any("offline" in r.getMessage() for r in caplog.records)


def test_download_false_skips_network(tmp_path, server):
    _default(str(tmp_path))
    before = len(_Handler.requests)
    choice = resolve_weights({"weights_url": server + "/ok.pth", "download": "false"}, str(tmp_path))
    assert choice.source == "default" and len(_Handler.requests) == before


def test_nothing_found_fails_with_what_was_tried(tmp_path, closed_url):
    with pytest.raises(WeightsError) as e:
        resolve_weights({"weights_url": closed_url}, str(tmp_path))
    msg = str(e.value)
    assert "no SAM-Med3D weights" in msg and closed_url in msg and "allow_random_weights" in msg


def test_random_weights_only_when_allowed(tmp_path, closed_url):
    choice = resolve_weights({"weights_url": closed_url, "allow_random_weights": "true"}, str(tmp_path))
    assert choice.is_random and choice.path is None and "RANDOM" in choice.describe()


def test_ambiguous_default_folder(tmp_path):
    _default(str(tmp_path), "a.pt")
    _default(str(tmp_path), "b.pth")
    with pytest.raises(WeightsError, match="several checkpoints"):
        find_default_checkpoint(str(tmp_path))
