"""Training through a real `monailabel start_server` (MONAILabelClient, as the Slicer plugin):
final labels saved, POST /train/sammed3d, progress in /info, and the next click is answered by the
newly published version without a restart, with the cached embedding kept (decoder-only training)."""
import os
import sys
import time

import pytest

from trainer_utils import make_samples, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from local_server import LocalServer  # noqa: E402

from monailabel.client import MONAILabelClient  # noqa: E402


def wait_for_training(client, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR"):
            return status
        time.sleep(1)
    raise AssertionError(f"training did not finish in {timeout} s: {client.train_status()}")


def test_train_publishes_and_the_server_hot_swaps(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    samples = make_samples(str(tmp_path / "src"), 2, seed=7)
    for s in samples:
        os.link(s["image"], studies / os.path.basename(s["image"]))
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    versions = tmp_path / "versions"
    conf = {"checkpoint": ckpt, "max_crops": "1", "versions_dir": str(versions)}
    with LocalServer(str(studies), conf) as server:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
        info = client.info()
        trainer = info["trainers"]["sammed3d"]
        assert trainer["config"]["train_parts"] == "mask_decoder" and trainer["live_version"] is None
        for s in samples:
            client.save_label(os.path.basename(s["image"])[:-7], s["label"], tag="final")
        image_id = "case00"
        params = {"label": "blob", "foreground": [[22, 26, 20]], "background": []}
        _, first = client.infer("sammed3d", image_id, params)
        assert first["model_version"].startswith("tiny@") and not first["cache_hit"]

        options = {"max_epochs": 1, "num_clicks": 2, "loss_size": 32, "variants": 1, "val_split": 0,
                   "publish": "always", "max_components": 1}
        client.train_start("sammed3d", options)
        # a second Train at once (a double click) is refused, not queued behind the first
        import requests

        again = requests.post(f"{server.url}/train/sammed3d", json=options, timeout=30)
        assert again.status_code == 429 and "already running" in again.text.lower(), again.text
        status = wait_for_training(client)
        assert status["status"] == "DONE", server.log_tail(80)

        _, after = client.infer("sammed3d", image_id, params)  # no restart
        assert after["model_version"].startswith("v0001@"), after
        assert after["cache_hit"] is True  # encoder unchanged: the cached embedding was kept
        info = client.info()
        assert info["weights"]["version_name"] == "v0001" and info["weights"]["source"] == "version"
        assert info["models"]["sammed3d"]["model_version"] == after["model_version"]
        stats = info["train_stats"]["sammed3d"]
        assert stats["total_time"] and stats["epoch"] == 1 and stats["total_epochs"] == 1
        assert stats["published"] == ["v0001"]
        assert info["trainers"]["sammed3d"]["live_version"] == "v0001"
        assert {"LIVE.json", "v0001.json", "v0001.pt", "train_stats.json"} <= set(os.listdir(versions))
        assert "hot swap: now serving v0001" in server.log()
