"""Active learning through a real `monailabel start_server`: POST /scoring/<name> runs in MONAI
Label's background subprocess and stores scores in the datastore; POST /activelearning/<name>
(MONAILabelClient.next_sample, as the Slicer plugin calls it) returns the best-scored unlabeled
volume and skips the one just handed to another annotator. Small random-weight model: this checks
the plumbing, not the quality of the scores (tests/test_activelearning_units.py does)."""
import json
import os
import sys
import time

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from local_server import LocalServer  # noqa: E402
from prepare_sample_data import prepare_synthetic  # noqa: E402
from test_app_server import small_checkpoint  # noqa: E402

from monailabel.client import MONAILabelClient  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("al")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    prepare_synthetic(str(studies), str(truth))
    ckpt = small_checkpoint(str(root / "small.pt"))
    conf = {"checkpoint": ckpt, "max_crops": "1", "cache_mb": "512", "al_feature_crops": "1", "al_n_jitter": "2",
            "versions_dir": str(root / "versions")}
    srv = LocalServer(str(studies), conf)
    srv.start()
    srv.truth = truth
    yield srv
    srv.stop()


def wait_scoring(url, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/scoring/", timeout=30)
        if r.status_code == 200 and r.json().get("status") in ("DONE", "ERROR"):
            return r.json()
        time.sleep(1.0)
    raise AssertionError("scoring did not finish")


def image_infos(studies):
    with open(os.path.join(studies, "datastore_v2.json")) as f:
        return {k: v["image"]["info"] for k, v in json.load(f)["objects"].items()}


def test_scoring_then_next_sample(server, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="alice")
    info = client.info()
    assert {"random", "first", "uncertainty", "diversity", "combined"} <= set(info["strategies"])
    assert {"uncertainty", "diversity", "combined"} <= set(info["scoring"])
    version = info["models"]["sammed3d"]["model_version"]

    # one final label: the location prior learns from it, and that image is no longer a candidate
    labelled = "synth_ras_ct"
    label = next(str(p) for p in server.truth.iterdir() if p.name.startswith(labelled + "."))
    client.save_label(labelled, label, tag="final")

    r = requests.post(f"{server.url}/scoring/uncertainty", json={}, timeout=60)
    assert r.status_code == 200, r.text
    task = wait_scoring(server.url)
    assert task["status"] == "DONE", task

    infos = image_infos(server.studies)
    unlabeled = [i for i in infos if i != labelled]
    scores = {i: infos[i]["sammed3d_uncertainty"]["score"] for i in unlabeled}
    for i in unlabeled:
        entry = infos[i]["sammed3d_uncertainty"]
        assert entry["model_version"] == version and entry["prompts"] == "prior"
    assert "sammed3d_uncertainty" not in infos[labelled]
    assert "scoring[uncertainty]" in server.log()  # progress in the server log (from the subprocess)

    first = client.next_sample("uncertainty", {})
    best = max(scores, key=lambda i: (scores[i], i))
    assert first["id"] == best and first["stale"] is False
    # another annotator asking now gets a different volume; the same one may get hers again
    bob = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="bob")
    assert bob.next_sample("uncertainty", {})["id"] != best
    assert client.next_sample("uncertainty", {})["id"] == best
    # MONAI Label's own strategies stay available
    assert client.next_sample("first", {})["id"] in unlabeled


def scoring_running(url) -> bool:
    return requests.get(f"{url}/scoring/?check_if_running=true", timeout=30).status_code == 200


def click_during_scoring(server, client, body):
    """Start a scoring run (after any that is going on), click once while it runs; the click's result."""
    deadline = time.monotonic() + 300
    while scoring_running(server.url) and time.monotonic() < deadline:
        time.sleep(0.5)
    r = requests.post(f"{server.url}/scoring/combined", json=body, timeout=60)
    assert r.status_code == 200, r.text
    while not scoring_running(server.url) and time.monotonic() < deadline:
        time.sleep(0.05)
    image = sorted(image_infos(server.studies))[0]
    path = next(os.path.join(server.studies, n) for n in os.listdir(server.studies) if n.startswith(image + "."))
    import nibabel as nib

    centre = [n // 2 for n in nib.load(path).shape[:3]]
    _, result = client.infer("sammed3d", image, {"label": "gate", "foreground": [centre], "background": [],
                                                 "reset_state": True})
    held_while_running = scoring_running(server.url)
    task = wait_scoring(server.url)
    assert task["status"] == "DONE", task  # continued after the click, not left stopped
    return result, held_while_running


def test_a_click_stops_background_scoring_until_it_is_answered(server, tmp_path):
    """issue 17 item 3: the scoring subprocess is held (SIGSTOP) while a click is served, then continues."""
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    result, running = click_during_scoring(server, client, {"force": True})
    assert running, "scoring finished before the click: nothing was tested"
    assert result["scoring_held"] == 1
    # {"yield": 0}: the previous behaviour (nice only), the click does not hold it
    result, running = click_during_scoring(server, client, {"force": True, "yield": 0, "max_images": 1})
    assert result["scoring_held"] == 0
