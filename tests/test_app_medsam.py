"""The MedSAM box task through a real server (MONAILabelClient, as the Slicer plugin calls it).

Plumbing and geometry only (a few slices, so it stays fast on CPU); mask quality is checked in
tests/test_medsam_model.py against a recorded reference and the real lung segmentation.
"""
import os
import sys

import numpy as np
import pytest
import requests


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_app_server import assert_same_grid, image_path, mask_of, post_infer, small_checkpoint  # noqa: E402

from local_server import LocalServer  # noqa: E402  (scripts/ is on sys.path via test_app_server)
from monailabel.client import MONAILabelClient  # noqa: E402
from prepare_sample_data import prepare_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("medsam_app")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    prepare_synthetic(str(studies), str(truth))
    return {"studies": str(studies), "checkpoint": small_checkpoint(str(root / "small.pt"))}


@pytest.fixture(scope="module")
def server(data, medsam_weights):
    srv = LocalServer(data["studies"], {"checkpoint": data["checkpoint"], "max_crops": "1", "medsam": "true",
                                        "medsam_checkpoint": medsam_weights})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def test_info_lists_both_models(client):
    models = client.info()["models"]
    assert {"sammed3d", "medsam_box"} <= set(models)
    assert models["medsam_box"]["type"] == "deepgrow" and models["medsam_box"]["labels"]


def test_box_gives_a_mask_on_the_image_grid_inside_the_box(server, client, data):
    import SimpleITK as sitk

    image_id = "synth_ras_ct"
    size = sitk.ReadImage(image_path(data, image_id)).GetSize()
    c = [s // 2 for s in size]
    # a 3-slice box (slices run along the axis MedSAM picks; every axis is narrow here)
    roi = [c[0] - 12, c[0] + 12, c[1] - 12, c[1] + 12, c[2] - 1, c[2] + 1]
    label_file, result = client.infer("medsam_box", image_id, {"label": "organ", "roi": roi})
    assert_same_grid(label_file, image_path(data, image_id))
    mask = mask_of(label_file)
    assert result["voxels"] == int(mask.sum())
    outside = mask.copy()
    outside[roi[0]:roi[1] + 1, roi[2]:roi[3] + 1, roi[4]:roi[5] + 1] = 0
    assert outside.sum() == 0, "voxels outside the requested box"
    assert set(result["latencies"]) >= {"total"}
    assert "medsam box: slice" in server.log()  # per-slice progress reaches the server log (issue 17)


@pytest.mark.parametrize("params, fragment", [
    ({"label": "a", "roi": [0, 5, 0, 5]}, "roi"),
    ({"label": "a", "roi": [10, 5, 0, 5, 0, 5]}, "roi"),
    ({"label": "a", "roi": [5000, 5010, 0, 5, 0, 5]}, "does not overlap"),  # entirely outside (a partial overlap is clipped)
    ({"label": "a", "foreground": [[10, 10, 10]], "background": []}, "box"),
    ({"label": "a", "roi": [0, 5, 0, 5, 0, 5], "window": "nonsense"}, "window"),
])
def test_bad_box_requests_are_4xx_and_the_server_keeps_serving(server, client, params, fragment):
    r = post_infer(server, "synth_ras_ct", params, model="medsam_box")
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.text.lower()
    assert client.info()["models"]["medsam_box"]


def test_other_requests_are_answered_while_a_box_runs(server, client, data):
    """The infer route runs off the event loop (lib/guards/infer.py): while a MedSAM box is being
    computed, /info and another annotator's SAM-Med3D click are answered. MONAI Label's own route
    would hold both until the box is done."""
    import threading
    import time

    import SimpleITK as sitk

    image_id = "synth_oblique_mr"  # not used by the other tests here: its slices are not encoded yet
    c = [s // 2 for s in sitk.ReadImage(image_path(data, image_id)).GetSize()]
    roi = [c[0] - 2, c[0] + 2, c[1] - 2, c[1] + 2, c[2] - 2, c[2] + 2]  # 5 slices whichever axis is chosen
    box = {}

    def run_box():
        box["result"] = client.infer("medsam_box", image_id, {"label": "probe-concurrency", "roi": roi})
        box["done"] = time.monotonic()

    worker = threading.Thread(target=run_box)
    worker.start()
    deadline = time.monotonic() + 60
    while "probe-concurrency" not in server.log():  # MONAI Label logs the request as it starts it
        assert time.monotonic() < deadline and worker.is_alive(), "the box request never started"
        time.sleep(0.02)
    assert client.info()["models"]["medsam_box"]
    info_done = time.monotonic()
    _, click = client.infer("sammed3d", "synth_ras_ct", {"label": "other-annotator", "foreground": [c], "background": []})
    click_done = time.monotonic()
    worker.join(timeout=300)
    assert "done" in box, "the box request did not finish"
    assert click["voxels"] >= 0 and box["result"][1]["slices_encoded"] >= 1
    assert info_done < box["done"] and click_done < box["done"], \
        "/info or the click waited for the box: the inference blocked the server"
