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


def test_box_gives_a_mask_on_the_image_grid_inside_the_box(client, data):
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
