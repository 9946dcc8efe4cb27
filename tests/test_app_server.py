"""The app as a user runs it: a real `monailabel start_server` driven by MONAILabelClient.

One server per module (start-up costs ~9 s): a small reduced-size SAM-Med3D checkpoint made here
with a fixed seed, so nothing depends on released or default weights being present. The weights
are random, so these tests check plumbing and geometry (shape, affine, formats, errors, caching,
per-label state), not mask quality; the session's own tests check where masks land.
"""
import json
import os
import sys

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from local_server import LocalServer  # noqa: E402
from prepare_sample_data import prepare_synthetic  # noqa: E402

from lib.model import build_sam_med3d, save_checkpoint  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402  (the class the Slicer plugin uses)
from monailabel.client.client import MONAILabelClientException  # noqa: E402


SMALL_CONFIG = {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
                "encoder_global_attn_indexes": [1, 3], "prompt_embed_dim": 96}
# the synthetic studies of scripts/prepare_sample_data.py (RAS, LPS anisotropic, oblique, small NRRD)
IMAGES = ("synth_ras_ct", "synth_lps_aniso_ct", "synth_oblique_mr", "synth_small_ct")


def small_checkpoint(path: str) -> str:
    torch.manual_seed(0)
    return save_checkpoint(build_sam_med3d(SMALL_CONFIG), path, version="test-small")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    prepare_synthetic(str(studies), str(truth))
    (studies / "corrupt_ct.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    ckpt = small_checkpoint(str(root / "small.pt"))
    clicks = {}
    for name in IMAGES:
        path = next(str(p) for p in truth.iterdir() if p.name.startswith(name + "."))
        label = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose(2, 1, 0)  # stored (i, j, k)
        inside = np.argwhere(label == 1)
        clicks[name] = inside[len(inside) // 2].tolist()
    return {"studies": str(studies), "checkpoint": ckpt, "clicks": clicks, "root": root}


@pytest.fixture(scope="module")
def server(data):
    # max_crops 1: random weights tend to flood the crop, and growing to more crops would only
    # make the suite slower without testing anything more here.
    srv = LocalServer(data["studies"], {"checkpoint": data["checkpoint"], "max_crops": "1", "cache_mb": "512"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def image_path(data, image_id):
    return next(os.path.join(data["studies"], n) for n in os.listdir(data["studies"]) if n.split(".")[0] == image_id)


def geometry(path):
    """(shape in stored order, 4x4 index -> LPS affine) as ITK reads the file."""
    img = sitk.ReadImage(path)
    affine = np.eye(4)
    affine[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return tuple(img.GetSize()), affine


def assert_same_grid(label_file, image_file):
    shape, affine = geometry(label_file)
    ref_shape, ref_affine = geometry(image_file)
    assert shape == ref_shape
    np.testing.assert_allclose(affine, ref_affine, atol=1e-4)


def mask_of(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose(2, 1, 0)


def post_infer(server, image, params, output="image", model="sammed3d"):
    return requests.post(f"{server.url}/infer/{model}", params={"image": image, "output": output},
                         data={"params": json.dumps(params)}, timeout=300)


# ------------------------------------------------------------------------------------------ info


def test_info_names_the_live_weights(client, data):
    info = client.info()
    model = info["models"]["sammed3d"]
    assert model["type"] == "deepgrow" and model["dimension"] == 3
    sha = info["weights"]["sha256"]
    assert info["weights"]["source"] == "conf" and info["weights"]["path"] == data["checkpoint"]
    assert model["model_version"] == f"test-small@{sha[:12]}"
    assert "RANDOM" not in model["description"]
    assert info["datastore"]["total"] == len(IMAGES) + 1


def test_next_sample_returns_a_study(client):
    sample = client.next_sample("random", {})
    assert sample["id"] in set(IMAGES) | {"corrupt_ct"}


# ----------------------------------------------------------------------------------------- infer


@pytest.mark.parametrize("image_id", sorted(IMAGES))
def test_infer_returns_label_on_the_image_grid(client, data, image_id):
    params = {"label": "organ", "foreground": [data["clicks"][image_id]], "background": []}
    label_file, result = client.infer("sammed3d", image_id, params)
    assert_same_grid(label_file, image_path(data, image_id))
    mask = mask_of(label_file)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert result["voxels"] == int(mask.sum())
    assert set(result["latencies"]) >= {"load", "preprocess", "encode", "decode", "write", "total"}
    assert result["model_version"].startswith("test-small@") and result["num_crops"] == 1
    assert result["cache_hit"] is False and result["latencies"]["encode"] > 0
    # the same clicks again: no new encoder run, the same mask
    again_file, again = client.infer("sammed3d", image_id, params)
    assert again["cache_hit"] is True and again["latencies"]["encode"] == 0
    np.testing.assert_array_equal(mask_of(again_file), mask)


def test_a_client_saving_into_the_system_temp_folder_keeps_its_file(server, data):
    # MONAILabelClient's default tmpdir is the system temp folder; the server deletes its own copy of
    # each result after sending it, which must not be the client's file (lib/infers/output.py)
    import tempfile
    import time

    client = MONAILabelClient(server.url)
    assert client._tmpdir == tempfile.gettempdir()
    label_file, _ = client.infer("sammed3d", "synth_small_ct", {"label": "tmpdir", "foreground": [data["clicks"]["synth_small_ct"]]})
    time.sleep(1.0)  # the server's clean-up runs right after the response
    assert os.path.exists(label_file)
    os.remove(label_file)


def test_labels_on_one_image_keep_their_own_state(client, data):
    image_id = "synth_ras_ct"
    p, q = data["clicks"][image_id], [10, 12, 5]
    file_a, _ = client.infer("sammed3d", image_id, {"label": "liver", "foreground": [p], "background": []})
    file_b, _ = client.infer("sammed3d", image_id, {"label": "other", "foreground": [q], "background": []})
    mask_a, mask_b = mask_of(file_a), mask_of(file_b)
    # a second click for "liver" extends that label only
    file_a2, res = client.infer("sammed3d", image_id, {"label": "liver", "foreground": [p], "background": [q]})
    assert res["label"] == "liver"
    file_b2, _ = client.infer("sammed3d", image_id, {"label": "other", "foreground": [q], "background": []})
    np.testing.assert_array_equal(mask_of(file_b2), mask_b)
    # reset_state forgets the clicks history: one click from scratch gives the first mask again
    file_a3, _ = client.infer("sammed3d", image_id,
                              {"label": "liver", "foreground": [p], "background": [], "reset_state": True})
    np.testing.assert_array_equal(mask_of(file_a3), mask_a)


def test_ohif_request_gets_raw_uint8_nrrd(server, data):
    image_id = "synth_lps_aniso_ct"
    params = {"label": "lung", "foreground": [data["clicks"][image_id]], "background": [],
              "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
    r = post_infer(server, image_id, params, output="image")
    assert r.status_code == 200, r.text
    out = data["root"] / "ohif.nrrd"
    out.write_bytes(r.content)
    header = r.content.split(b"\n\n", 1)[0].decode()
    assert "encoding: raw" in header and "type: uint8" in header.replace("unsigned char", "uint8")
    assert_same_grid(str(out), image_path(data, image_id))


def test_result_format_options(server, data):
    image_id = "synth_small_ct"  # stored as .nrrd: ask for NIfTI int16 instead
    params = {"label": "nodule", "foreground": [data["clicks"][image_id]], "result_extension": "nii.gz",
              "result_dtype": "int16"}
    r = post_infer(server, image_id, params)
    assert r.status_code == 200, r.text
    out = data["root"] / "fmt.nii.gz"
    out.write_bytes(r.content)
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    assert_same_grid(str(out), image_path(data, image_id))


def test_roi_bounds_the_returned_mask(client, data):
    image_id = "synth_oblique_mr"
    click = data["clicks"][image_id]
    roi = [max(0, click[a] + d) for a in range(3) for d in (-3, 3)]
    label_file, _ = client.infer("sammed3d", image_id,
                                 {"label": "roi", "foreground": [click], "background": [], "roi": roi})
    mask = mask_of(label_file)
    outside = mask.copy()
    outside[roi[0]:roi[1] + 1, roi[2]:roi[3] + 1, roi[4]:roi[5] + 1] = 0
    assert outside.sum() == 0


def test_save_final_label_round_trip(client, data, server):
    image_id = "synth_ras_ct"
    label_file, _ = client.infer("sammed3d", image_id,
                                 {"label": "final", "foreground": [data["clicks"][image_id]], "background": []})
    client.save_label(image_id, label_file, tag="final")
    ds = client.datastore()
    assert ds["objects"][image_id]["labels"]["final"]["ext"] in (".nii.gz", ".nrrd", ".nii")
    r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
    assert r.status_code == 200
    stored = data["root"] / ("stored" + ds["objects"][image_id]["labels"]["final"]["ext"])
    stored.write_bytes(r.content)
    assert_same_grid(str(stored), image_path(data, image_id))
    np.testing.assert_array_equal(mask_of(str(stored)), mask_of(label_file))


def test_broken_or_misplaced_labels_are_refused_and_the_saved_one_kept(client, data, server):
    image_id = "synth_small_ct"
    good, _ = client.infer("sammed3d", image_id, {"label": "kept", "foreground": [data["clicks"][image_id]]})
    client.save_label(image_id, good, tag="final")
    junk = data["root"] / "junk_label.nii.gz"
    junk.write_bytes(b"\x1f\x8b not a label" * 10)
    other_grid = data["root"] / "other_grid.nii.gz"
    img = sitk.ReadImage(good)
    moved = sitk.Image(img)
    moved.SetOrigin(tuple(o + 7.0 for o in img.GetOrigin()))
    sitk.WriteImage(moved, str(other_grid))
    bigger = data["root"] / "bigger.nii.gz"
    sitk.WriteImage(sitk.Image([s + 1 for s in img.GetSize()], sitk.sitkUInt8), str(bigger))

    def put(image, path, params="{}"):
        with open(path, "rb") as f:
            return requests.put(f"{server.url}/datastore/label", params={"image": image, "tag": "final"},
                                data={"params": params}, files={"label": (os.path.basename(path), f)}, timeout=60)

    for image, path, params, status, words in [
        (image_id, junk, "{}", 400, "cannot read"),
        (image_id, other_grid, "{}", 400, "origin"),
        (image_id, bigger, "{}", 400, "size"),
        ("no_such_image", good, "{}", 404, "not found"),
        (image_id, good, "{not json", 400, "JSON object"),
    ]:
        r = put(image, str(path), params)
        assert r.status_code == status, r.text
        assert words in r.json()["detail"]
    r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
    stored = data["root"] / ("kept" + client.datastore()["objects"][image_id]["labels"]["final"]["ext"])
    stored.write_bytes(r.content)
    np.testing.assert_array_equal(mask_of(str(stored)), mask_of(good))  # the accepted label is intact


@pytest.mark.parametrize("path,body,status,words", [
    ("/train/nope", {}, 404, "unknown trainer"),
    ("/train/sammed3d?run_sync=true", {"max_epochs": "abc"}, 400, "max_epochs"),
    ("/scoring/nope", {}, 404, "unknown scoring method"),
    ("/activelearning/nope", {}, 404, "unknown strategy"),
    ("/batch/infer/nope", {}, 404, "unknown model"),
])
def test_task_requests_that_cannot_run_get_4xx(server, path, body, status, words):
    r = requests.post(server.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_datastore_uploads_and_removals_are_checked(server, data):
    url = f"{server.url}/datastore/image"
    r = requests.put(url, params={"image": "junk_upload"}, files={"file": ("junk.nii.gz", b"\x1f\x8b junk" * 20)}, timeout=60)
    assert r.status_code == 400 and "cannot read image file" in r.json()["detail"], r.text
    r = requests.put(url, params={"image": "x"}, data={"params": "{oops"}, files={"file": ("x.nii.gz", b"1")}, timeout=60)
    assert r.status_code == 400 and "JSON object" in r.json()["detail"], r.text
    r = requests.delete(url, params={"id": "no_such_image"}, timeout=60)
    assert r.status_code == 404, r.text
    with open(image_path(data, "synth_small_ct"), "rb") as f:  # a real image still uploads
        r = requests.put(url, params={"image": "uploaded_copy"}, files={"file": ("copy.nrrd", f)}, timeout=60)
    assert r.status_code == 200, r.text
    assert "uploaded_copy" in requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert "junk_upload" not in requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]


def test_dicom_seg_output_needs_a_dicomweb_datastore(server, data):
    r = requests.post(f"{server.url}/infer/sammed3d", params={"image": "synth_small_ct", "output": "dicom_seg"},
                      data={"params": json.dumps({"foreground": [data["clicks"]["synth_small_ct"]]})}, timeout=60)
    assert r.status_code == 400 and "DICOMweb" in r.json()["detail"], r.text


# ---------------------------------------------------------------------------------------- errors

ERRORS = [
    # (image, model, params, status, words that must appear in the message)
    ("no_such_image", "sammed3d", {"foreground": [[1, 2, 3]]}, 404, "not found"),
    ("synth_ras_ct", "no_such_model", {"foreground": [[1, 2, 3]]}, 404, "unknown model"),
    ("synth_ras_ct", "sammed3d", {"foreground": [], "background": []}, 400, "no clicks"),
    ("synth_ras_ct", "sammed3d", {}, 400, "no clicks"),
    ("synth_ras_ct", "sammed3d", {"background": [[5, 5, 5]]}, 400, "include"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 500]]}, 400, "outside the volume"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[-1, 5, 5]]}, 400, "outside the volume"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, "x", 5]]}, 400, "non-numeric"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, None, 5]]}, 400, "non-numeric"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, float("nan"), 5]]}, 400, "non-finite"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5]]}, 400, "3 numbers"),
    ("synth_ras_ct", "sammed3d", {"foreground": "5,5,5"}, 400, "list"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "roi": [1, 2, 3]}, 400, "roi"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "roi": [200, 300, 0, 5, 0, 5]}, 400, "does not overlap"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "roi": [9, 3, 0, 5, 0, 5]}, 400, "min > max"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "result_extension": ".png"}, 400, "result_extension"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "result_dtype": "complex"}, 400, "result_dtype"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "label": ["a"]}, 400, "label"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "reset_state": "maybe"}, 400, "reset_state"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "prior_flood": "maybe"}, 400, "prior_flood"),
    ("synth_ras_ct", "sammed3d", {"foreground": [[5, 5, 5]], "prior_flood": "on"}, 400, "geodesic prior"),  # released size
    ("corrupt_ct", "sammed3d", {"foreground": [[1, 1, 1]]}, 400, "cannot read image"),
]


@pytest.mark.parametrize("image,model,params,status,words", ERRORS, ids=[f"{e[3]}-{e[4]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_gets_4xx_with_a_message(server, image, model, params, status, words):
    r = post_infer(server, image, params, output="json", model=model)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


MALFORMED = [  # requests MONAI Label's endpoint itself would answer with a 500 (lib/infers/http_guard.py)
    ({"image": "synth_ras_ct"}, {"params": "{foreground: [[1, 2, 3]]"}, "JSON object"),
    ({"image": "synth_ras_ct"}, {"params": "[[1, 2, 3]]"}, "JSON object"),
    ({"image": "synth_ras_ct"}, {"params": "3"}, "JSON object"),
    ({}, {"params": json.dumps({"foreground": [[1, 2, 3]]})}, "no input image"),
    ({"image": ""}, {"params": json.dumps({"foreground": [[1, 2, 3]]})}, "no input image"),
]


@pytest.mark.parametrize("query,form,words", MALFORMED, ids=[f"malformed-{i}" for i in range(len(MALFORMED))])
def test_malformed_request_gets_400_not_500(server, query, form, words):
    r = requests.post(f"{server.url}/infer/sammed3d", params={**query, "output": "json"}, data=form, timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["detail"]


def test_guarded_route_still_serves_valid_requests_and_others_models(server, data):
    # the guard sits in front of MONAI Label's route for every model: a valid click still works,
    # an unknown model still gets the app's 404
    r = post_infer(server, "synth_small_ct", {"foreground": [data["clicks"]["synth_small_ct"]]}, output="json")
    assert r.status_code == 200, r.text
    r = post_infer(server, "synth_small_ct", {"foreground": [[1, 1, 1]]}, output="json", model="nope")
    assert r.status_code == 404, r.text


def test_client_sees_the_status_and_server_keeps_serving(client, data):
    with pytest.raises(MONAILabelClientException) as e:
        client.infer("sammed3d", "synth_ras_ct", {"foreground": [[5, 5, 999]]})
    assert "Status: 400" in e.value.msg and "outside the volume" in e.value.msg
    with pytest.raises(MONAILabelClientException) as e:
        client.infer("sammed3d", "no_such_image", {"foreground": [[5, 5, 5]]})
    assert "Status: 404" in e.value.msg
    label_file, _ = client.infer("sammed3d", "synth_small_ct",
                                 {"label": "after-errors", "foreground": [data["clicks"]["synth_small_ct"]]})
    assert_same_grid(label_file, image_path(data, "synth_small_ct"))
    assert client.info()["models"]["sammed3d"]["type"] == "deepgrow"


def test_a_rejected_click_leaves_the_label_as_it_was(client, data):
    image_id, click = "synth_lps_aniso_ct", data["clicks"]["synth_lps_aniso_ct"]
    first, _ = client.infer("sammed3d", image_id, {"label": "keep", "foreground": [click]})
    with pytest.raises(MONAILabelClientException):
        client.infer("sammed3d", image_id, {"label": "keep", "foreground": [click, [0, 0, 10_000]]})
    again, res = client.infer("sammed3d", image_id, {"label": "keep", "foreground": [click]})
    assert res["cache_hit"] is True
    np.testing.assert_array_equal(mask_of(again), mask_of(first))
