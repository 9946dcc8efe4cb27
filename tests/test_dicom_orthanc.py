"""The app with a DICOMweb datastore: Orthanc as the PACS, the real server, MONAILabelClient.

Skipped when Orthanc or its DICOMweb plugin is not installed (bash scripts/orthanc/orthanc.sh install)
or dcmqi is missing. One Orthanc and one server for the module (about 20 s on 2 cores).
Checks: image ids are SeriesInstanceUIDs (CT and MR listed), next_sample gives one, a click on an
oblique MR and an anisotropic LPS CT returns a mask on the series' grid, saving a final label stores
a DICOM SEG with exactly those voxels in Orthanc, and the datastore then counts the image as labeled.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_BIN = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
DCMQI = shutil.which("itkimage2segimage", path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
pytestmark = pytest.mark.skipif(
    not (ORTHANC_BIN and os.path.exists(PLUGIN) and DCMQI),
    reason="needs Orthanc + orthanc-dicomweb (bash scripts/orthanc/orthanc.sh install) and dcmqi",
)

SMALL_CONFIG = {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
                "encoder_global_attn_indexes": [1, 3], "prompt_embed_dim": 96}
SERIES = ("synth_oblique_mr", "synth_lps_aniso_ct", "synth_small_ct")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc on a free port with three sample series (CT and MR) loaded."""
    from local_server import free_port
    from make_dicom_series import Series, write_all
    from prepare_sample_data import SYNTHETIC, prepare_synthetic

    root = tmp_path_factory.mktemp("pacs")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    names = prepare_synthetic(str(studies), str(truth))
    series = []
    for name, ext, *_ in SYNTHETIC:
        if name not in SERIES:
            continue
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / (name + ext))))
        segs = {seg: label == value for seg, value in names[name].items()}
        series.append(Series(name, sitk.ReadImage(str(studies / (name + ext))), "MR" if name.endswith("_mr") else "CT",
                             segments=segs))
    write_all(series, str(root / "dicom"))

    env = dict(os.environ, ORTHANC_HOME=str(root / "orthanc"), ORTHANC_HTTP_PORT=str(free_port()),
               PYTHON=sys.executable)
    script = os.path.join(REPO, "scripts", "orthanc", "orthanc.sh")
    url = f"http://127.0.0.1:{env['ORTHANC_HTTP_PORT']}"
    try:
        subprocess.run(["bash", script, "start"], env=env, check=True, capture_output=True, text=True, timeout=60)
        subprocess.run(["bash", script, "load", str(root / "dicom")], env=env, check=True, capture_output=True,
                       text=True, timeout=120)
        yield {"url": url, "dicom": str(root / "dicom"), "root": root}
    except subprocess.CalledProcessError as e:
        pytest.fail(f"Orthanc setup failed: {e.stdout}\n{e.stderr}")
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def server(pacs):
    from lib.model import build_sam_med3d, save_checkpoint
    from local_server import LocalServer

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_sam_med3d(SMALL_CONFIG), str(pacs["root"] / "small.pt"), version="test-small")
    conf = {"checkpoint": ckpt, "max_crops": "1", "cache_mb": "512", "download": "false",
            "versions_dir": str(pacs["root"] / "versions")}  # fine-tuned versions stay in the test's folder
    srv = LocalServer(pacs["url"] + "/dicom-web", conf,
                      env={
                          # dcmqi's itkimage2segimage must be on PATH, or the datastore tries to download it
                          "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                          "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(pacs["root"] / "dicom-cache"),
                          # the default filter is {"Modality": "CT"}: MR series would not be listed
                          "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "CT,MR"}),
                          # list_images/get_labeled_images are cached this long (default 7200 s): a
                          # saved SEG would not count as labeled for two hours
                          "MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "1",
                      })
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", ["synth_oblique_mr", "synth_lps_aniso_ct"])
def test_click_and_final_label_round_trip_through_the_pacs(server, pacs, name):
    from client_check import CheckFailed, run_checks

    try:
        summary = run_checks(server.url, pacs["url"], pacs["dicom"], name)
    except CheckFailed as e:
        pytest.fail(f"{e}\n--- server log ---\n{server.log_tail(40)}")
    assert summary["voxels"] > 0 and summary["seg_series"]


def test_two_first_clicks_at_once_on_a_new_series(server, pacs):
    """Inference runs off the event loop (lib/guards/infer.py), so two requests can reach a series
    that is not in the server's cache at the same moment. It is fetched by one of them at a time
    (lib/datastore.py), and both get the same mask."""
    import shutil
    import threading

    from monailabel.client import MONAILabelClient

    with open(os.path.join(pacs["dicom"], "manifest.json")) as f:
        uid = {s["name"]: s["SeriesInstanceUID"] for s in json.load(f)["series"]}["synth_small_ct"]
    # start-up scoring may have fetched it already: drop the cached copy (the server re-fetches)
    for cached in [p for p in (pacs["root"] / "dicom-cache").rglob("*") if p.name.startswith(uid)]:
        shutil.rmtree(cached) if cached.is_dir() else cached.unlink()
    results, errors = {}, []

    def click(who):
        try:
            client = MONAILabelClient(server.url, tmpdir=str(pacs["root"] / f"client-{who}"))
            _, res = client.infer("sammed3d", uid, {"label": f"organ-{who}", "foreground": [[20, 18, 10]],
                                                    "background": []})
            results[who] = res
        except Exception as e:  # reported below with the server log
            errors.append(f"{who}: {e}")

    threads = [threading.Thread(target=click, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, f"{errors}\n{server.log_tail(40)}"
    assert results["a"]["voxels"] == results["b"]["voxels"]


def test_labeled_series_leave_the_unlabeled_pool(server, pacs):
    """After the round trips above saved SEGs, the datastore counts them as labeled, and the SEG
    series themselves are not offered as images."""
    import requests

    with open(os.path.join(pacs["dicom"], "manifest.json")) as f:
        manifest = {s["name"]: s["SeriesInstanceUID"] for s in json.load(f)["series"]}
    time.sleep(1.5)  # MONAI_LABEL_DICOMWEB_CACHE_EXPIRY
    stats = requests.get(server.url + "/datastore/?output=stats", timeout=30).json()
    assert stats["total"] == len(SERIES)
    assert stats["completed"] >= 2
    r = requests.post(server.url + "/activelearning/random", json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == manifest["synth_small_ct"], "the only unlabeled series is next"


def test_trainer_learns_from_the_seg_labels_in_the_pacs(server, pacs):
    """Issue 7 item 2: the SEGs the round trips stored in Orthanc are the trainer's final labels."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server.url, tmpdir=str(pacs["root"] / "train-client"))
    client.train_start("sammed3d", {"max_epochs": 1, "num_clicks": 2, "loss_size": 32, "variants": 1,
                                    "val_split": 0, "publish": "always", "max_components": 1})
    deadline = time.monotonic() + 300
    while (status := client.train_status()).get("status") not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, f"training did not finish: {status}\n{server.log_tail(60)}"
        time.sleep(1)
    assert status["status"] == "DONE", server.log_tail(80)
    log = server.log()
    assert "on 2 labelled image(s)" in log or "on 3 labelled image(s)" in log, server.log_tail(80)
    info = client.info()
    assert info["train_stats"]["sammed3d"]["published"] == ["v0001"]
    assert (pacs["root"] / "versions" / "v0001.pt").exists()


def test_unknown_series_is_a_404(server):
    import requests

    r = requests.post(server.url + "/infer/sammed3d?image=1.2.3.4.5.6.7&output=json",
                      files={"params": (None, json.dumps({"foreground": [[1, 1, 1]]}))}, timeout=60)
    assert r.status_code == 404, r.text
