"""Faults: the server is SIGKILLed mid-save, mid-training (mid-epoch, mid-publish), mid-scoring and
mid-DICOMweb fetch, finds its datastore JSON corrupt, runs out of disk.

Each test drives a real `monailabel start_server` (conftest.server_factory, scripts/local_server)
and checks, after the fault and a restart, that every label saved before is intact and readable,
that an interrupted save is either whole or absent, and that the datastore JSON is valid.
"""
import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

IMAGES = ("synth_small_ct", "synth_ras_ct")
TIMEOUT = 120


@pytest.fixture
def studies(tmp_path):
    from prepare_sample_data import prepare_synthetic

    folder, truth = tmp_path / "studies", tmp_path / "truth"
    folder.mkdir()
    truth.mkdir()
    prepare_synthetic(str(folder), str(truth))
    for name in os.listdir(folder):  # two small images are enough, and keep restarts quick
        if name.split(".")[0] not in IMAGES:
            os.remove(folder / name)
    return str(folder)


@pytest.fixture
def conf(reliability_data):
    return {"checkpoint": reliability_data["checkpoint"], "max_crops": "1", "cache_mb": "256"}


def image_file(studies, image_id):
    return next(os.path.join(studies, n) for n in os.listdir(studies) if n.split(".")[0] == image_id)


def label_file(studies, image_id, value, tmp):
    """A label on the image's grid whose voxels are all `value` (so a partial file is detectable)."""
    ref = sitk.ReadImage(image_file(studies, image_id))
    arr = np.full(sitk.GetArrayFromImage(ref).shape, value, np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    path = os.path.join(tmp, f"{image_id}-{value}.nii.gz")
    sitk.WriteImage(img, path)
    return path


def save(server, image_id, path, timeout=TIMEOUT):
    with open(path, "rb") as f:
        return requests.put(f"{server.url}/datastore/label", params={"image": image_id, "tag": "final"},
                            files={"label": (os.path.basename(path), f)}, data={"params": "{}"}, timeout=timeout)


def saved_values(server, image_id, tmp):
    """The set of voxel values of the image's saved final label, read back through the server."""
    r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=TIMEOUT)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    path = os.path.join(tmp, f"read-{image_id}.nii.gz")
    with open(path, "wb") as f:
        f.write(r.content)
    return set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(path))).tolist())


def datastore_json(studies):
    with open(os.path.join(studies, "datastore_v2.json")) as f:
        return json.load(f)


def test_sigkill_during_label_saves_loses_nothing_saved_before(studies, conf, server_factory, tmp_path):
    a, b = IMAGES
    server = server_factory(studies, conf)
    assert save(server, a, label_file(studies, a, 1, str(tmp_path))).status_code == 200
    assert save(server, b, label_file(studies, b, 1, str(tmp_path))).status_code == 200
    versions = [label_file(studies, b, v, str(tmp_path)) for v in (2, 3, 4, 5)]
    answered = []

    def keep_saving():  # as fast as the server answers, until it dies
        i = 0
        while True:
            try:
                answered.append(save(server, b, versions[i % len(versions)], timeout=10).status_code)
            except requests.RequestException:
                return
            i += 1

    t = threading.Thread(target=keep_saving, daemon=True)
    t.start()
    time.sleep(2.0)
    os.killpg(server.proc.pid, signal.SIGKILL)  # the uvicorn process and everything it started
    server.proc.wait(timeout=30)
    t.join(timeout=30)
    assert answered and set(answered) == {200}, answered  # saves were in flight when it died

    datastore_json(studies)  # valid JSON after the kill
    server = server_factory(studies, conf)
    assert saved_values(server, a, str(tmp_path)) == {1}  # saved before: intact
    values = saved_values(server, b, str(tmp_path))
    assert values in ({1}, {2}, {3}, {4}, {5}), values  # the interrupted one: a whole version
    assert b in datastore_json(studies)["objects"] and "final" in datastore_json(studies)["objects"][b]["labels"]


def test_a_corrupt_datastore_json_is_rebuilt_from_the_files_and_logged(studies, conf, server_factory, tmp_path):
    a = IMAGES[0]
    server = server_factory(studies, conf)
    assert save(server, a, label_file(studies, a, 7, str(tmp_path))).status_code == 200
    server.stop()
    with open(os.path.join(studies, "datastore_v2.json"), "w") as f:
        f.write('{"name": "new-dataset", "objects": {"synth_small_ct": {"image": ')  # cut mid-write
    server = server_factory(studies, conf)
    assert "is corrupt" in server.log() and "rebuilding the datastore" in server.log()
    listed = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=TIMEOUT).json()
    assert sorted(listed["objects"]) == sorted(IMAGES)
    assert saved_values(server, a, str(tmp_path)) == {7}  # the label file was found again
    assert [n for n in os.listdir(studies) if n.startswith("datastore_v2.json.corrupt-")]  # kept for a look
    datastore_json(studies)


def test_the_datastore_json_write_is_atomic(tmp_path, monkeypatch):
    """MONAI Label truncates datastore_v2.json and writes it in place; a crash mid-write left it
    empty. SafeLocalDatastore writes a temp file and renames it: a failing write keeps the old one."""
    from lib.datastore import SafeLocalDatastore

    folder = tmp_path / "s"
    folder.mkdir()
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(folder / "case.nii.gz"))
    ds = SafeLocalDatastore(str(folder), extensions=["*.nii.gz"])
    before = (folder / "datastore_v2.json").read_text()
    json.loads(before)

    def dump_then_die(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(json, "dumps", dump_then_die)
    with pytest.raises(KeyboardInterrupt):
        ds.update_image_info("case", {"x": 1})
    assert (folder / "datastore_v2.json").read_text() == before
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_disk_full_on_save_keeps_earlier_labels_unit(tmp_path, monkeypatch):
    """ENOSPC simulated (monkeypatch) in the datastore's write: the save fails, the old label stays."""
    import lib.datastore as store

    folder = tmp_path / "s"
    folder.mkdir()
    ref = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    sitk.WriteImage(ref, str(folder / "case.nii.gz"))
    one = sitk.Image(4, 4, 4, sitk.sitkUInt8) + 1
    sitk.WriteImage(one, str(tmp_path / "one.nii.gz"))
    ds = store.SafeLocalDatastore(str(folder), extensions=["*.nii.gz"])
    ds.save_label("case", str(tmp_path / "one.nii.gz"), "final", {})

    def full(path, write, tmp_suffix=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "atomic_write", full)
    with pytest.raises(OSError):
        ds.save_label("case", str(tmp_path / "one.nii.gz"), "final", {})
    assert sitk.GetArrayFromImage(sitk.ReadImage(ds.get_label_uri("case", "final"))).max() == 1


def _mount_tmpfs(path, size="6m") -> bool:
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    return r.returncode == 0


def test_disk_full_on_a_real_tmpfs_gives_507_and_keeps_earlier_labels(conf, server_factory, tmp_path):
    """A 6 MB tmpfs studies folder, filled up: the save gets 507 with a message, nothing is lost."""
    from prepare_sample_data import prepare_synthetic

    mnt = str(tmp_path / "small-disk")
    if not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN): test_disk_full_on_save_keeps_earlier_labels_unit covers it")
    try:
        staging, truth = tmp_path / "staging", tmp_path / "truth"
        staging.mkdir()
        truth.mkdir()
        prepare_synthetic(str(staging), str(truth))
        shutil.copy(staging / "synth_small_ct.nrrd", mnt)
        a = "synth_small_ct"
        server = server_factory(mnt, conf)
        assert save(server, a, label_file(mnt, a, 1, str(tmp_path))).status_code == 200
        with open(os.path.join(mnt, "filler"), "wb") as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * (64 << 10))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        r = save(server, a, label_file(mnt, a, 2, str(tmp_path)))
        assert r.status_code == 507 and "disk is full" in r.json()["detail"], r.text
        assert saved_values(server, a, str(tmp_path)) == {1}
        assert requests.get(f"{server.url}/info/", timeout=TIMEOUT).status_code == 200
        os.remove(os.path.join(mnt, "filler"))
        assert save(server, a, label_file(mnt, a, 2, str(tmp_path))).status_code == 200
        assert saved_values(server, a, str(tmp_path)) == {2}
        server.stop()
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


# --------------------------------------------- SIGKILL during training (mid-epoch, publish) and scoring
#
# The kill point is made deterministic by a sitecustomize.py put on the server's PYTHONPATH: in
# MONAI Label's task subprocess only (`python -m monailabel.interfaces.utils.app`, where training and
# scoring run), it wraps os.replace -- the rename every atomic write of the app ends with -- and, at
# the chosen point, writes a marker file and blocks. The test waits for the marker and SIGKILLs the
# server's whole process group (uvicorn and the task subprocess), as a power cut or OOM kill would.
# The DICOMweb fetch faults block in the server process itself (the click's worker thread), in
# pydicom's save_as (download) or shutil.copy (the converted file into the cache).

FAULT_HOOK = r'''
import os, sys, time

FAULT, MARK = os.environ.get("SAMMED3D_TEST_FAULT"), os.environ.get("SAMMED3D_TEST_FAULT_MARK")


def _in_task():
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monailabel.interfaces.utils.app"


def _hang(what):
    with open(MARK + ".part", "w") as f:
        f.write(what)
    _replace(MARK + ".part", MARK)
    while True:  # until SIGKILL
        time.sleep(1)


def _progress_step(self, loss, global_step):
    _hang(f"mid-epoch: step {global_step} done, the epoch not finished")


def replace(src, dst, *a, **k):
    if _in_task():
        name = os.path.basename(os.fspath(dst))
        if FAULT == "mid-epoch" and name == "train_stats.json":  # training started: block in the next step
            sys.modules["lib.trainers.progress"].Progress.step = _progress_step
        elif FAULT == "publish-checkpoint" and name.startswith("v") and name.endswith(".pt"):
            _hang(f"publish: {name} written to {os.path.basename(os.fspath(src))}, not renamed")
        elif FAULT == "publish-live" and name == "LIVE.json" and os.path.isfile(os.path.join(os.path.dirname(os.fspath(dst)), "v0002.pt")):
            _hang("publish: v0002.pt and v0002.json in place, LIVE.json not yet renamed")
        elif FAULT == "scoring" and name == "datastore_v2.json":
            with open(src) as f:
                if f.read().count('"sammed3d_uncertainty"') >= 2:
                    _hang("scoring: the second score record about to be written")
    return _replace(src, dst, *a, **k)


def _dicom_download_hook():
    """In the server process: after the 2nd instance of SERIES is saved into its cache folder, block."""
    series, seen = os.environ.get("SAMMED3D_TEST_FAULT_SERIES"), []
    _makedirs = os.makedirs

    def makedirs(name, *a, **k):
        out = _makedirs(name, *a, **k)
        if not seen and not _in_task() and os.path.basename(os.fspath(name)) == series:
            seen.append(name)  # the series' download starts (dicom_web_download_series): pydicom is loaded
            import pydicom.dataset

            save = pydicom.dataset.Dataset.save_as
            folder, saved = os.fspath(name), []

            def save_as(self, filename, *a2, **k2):
                result = save(self, filename, *a2, **k2)
                if os.path.dirname(os.fspath(filename)) == folder:
                    saved.append(filename)
                    if len(saved) == 2:
                        _hang(f"dicom-download: 2 instances of {series} saved, the rest not fetched")
                return result

            pydicom.dataset.Dataset.save_as = save_as
        return out

    os.makedirs = makedirs


def _dicom_convert_hook():
    """In the server process: the converted SERIES.nii.gz is copied into the cache; half of it, then block."""
    import shutil

    series, _copy = os.environ.get("SAMMED3D_TEST_FAULT_SERIES"), shutil.copy

    def copy(src, dst, *a, **k):
        if not _in_task() and os.path.basename(os.fspath(dst)) == f"{series}.nii.gz":
            with open(src, "rb") as f:
                data = f.read()
            with open(dst, "wb") as f:
                f.write(data[:len(data) // 2])
            _hang(f"dicom-convert: {len(data) // 2} of {len(data)} bytes of {series}.nii.gz copied into the cache")
        return _copy(src, dst, *a, **k)

    shutil.copy = copy


if FAULT and MARK:
    _replace = os.replace
    os.replace = replace
    if FAULT == "dicom-download":
        _dicom_download_hook()
    elif FAULT == "dicom-convert":
        _dicom_convert_hook()
'''


def fault_env(tmp_path, fault):
    """Env for a LocalServer that blocks at `fault` (see FAULT_HOOK) -> (env, marker): training and
    scoring faults in the task subprocess, DICOMweb fetch faults in the server process."""
    from local_server import REPO as SERVER_REPO

    hook = tmp_path / "fault_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    mark = str(tmp_path / f"fault-{fault}.reached")
    path = os.pathsep.join(p for p in (str(hook), SERVER_REPO, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "SAMMED3D_TEST_FAULT": fault, "SAMMED3D_TEST_FAULT_MARK": mark}, mark


def wait_for_mark(server, mark, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not os.path.exists(mark):
        assert server.proc.poll() is None, server.log_tail(80)
        assert time.monotonic() < deadline, f"fault point not reached in {timeout} s\n{server.log_tail(80)}"
        time.sleep(0.1)
    with open(mark) as f:
        return f.read()


def sigkill(server):
    os.killpg(server.proc.pid, signal.SIGKILL)  # the uvicorn process and the task subprocess
    server.proc.wait(timeout=30)
    time.sleep(0.5)  # the group's other members are reaped by init


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def training_setup(tmp_path):
    """Two tiny labelled volumes, the tiny base checkpoint, and v0001 published and live (the last good version)."""
    from trainer_utils import make_samples, tiny_checkpoint

    import torch
    from lib.model import load_checkpoint
    from lib.trainers.publish import publish_version
    from lib.versions import VersionStore
    from lib.weights import sha256_file

    studies = tmp_path / "studies"
    studies.mkdir()
    samples = make_samples(str(tmp_path / "src"), 2, seed=7)
    for s in samples:
        os.link(s["image"], studies / os.path.basename(s["image"]))
    ckpt = tiny_checkpoint(str(tmp_path / "tiny.pt"))
    versions = str(tmp_path / "versions")
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        next(model.mask_decoder.parameters()).add_(0.01)  # a fine-tuned decoder: another checkpoint
    assert publish_version(VersionStore(versions), model, {"epoch": 1}, sha256_file(ckpt), None) == "v0001"
    conf = {"checkpoint": ckpt, "max_crops": "1", "versions_dir": versions}
    return {"studies": str(studies), "samples": samples, "versions": versions, "conf": conf,
            "v1_sha": sha256_file(os.path.join(versions, "v0001.pt")), "live": file_bytes(os.path.join(versions, "LIVE.json"))}


TRAIN_OPTIONS = {"max_epochs": 3, "num_clicks": 2, "loss_size": 32, "variants": 1, "val_split": 0,
                 "publish": "always", "max_components": 1}


@pytest.mark.parametrize("fault", ["mid-epoch", "publish-checkpoint",
                                   pytest.param("publish-live", marks=pytest.mark.slow)])  # 30 s each
def test_sigkill_during_training_keeps_the_last_good_version_live(fault, training_setup, server_factory, tmp_path):
    """SIGKILL while POST /train runs: in epoch 1 after its first optimiser step; with the new
    version's checkpoint fully written to its temp file but not renamed; with v0002.pt and its
    metrics in place but LIVE.json not yet switched. After a restart the server serves v0001 (the
    last good version, same SHA-256), no file in the versions folder that a reader would pick up is
    partial, and the labels are intact."""
    from lib.versions import VersionStore
    from lib.weights import sha256_file

    d = training_setup
    env, mark = fault_env(tmp_path, fault)
    server = server_factory(d["studies"], d["conf"], env=env)
    labels = {}
    for s in d["samples"]:
        image_id = os.path.basename(s["image"])[:-len(".nii.gz")]
        with open(s["label"], "rb") as f:
            r = requests.put(f"{server.url}/datastore/label", params={"image": image_id, "tag": "final"},
                             files={"label": (os.path.basename(s["label"]), f)}, data={"params": "{}"}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        labels[image_id] = sitk.GetArrayFromImage(sitk.ReadImage(s["label"]))
    assert requests.get(f"{server.url}/info/", timeout=TIMEOUT).json()["weights"]["version_name"] == "v0001"
    r = requests.post(f"{server.url}/train/sammed3d", json=TRAIN_OPTIONS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    reached = wait_for_mark(server, mark)
    files_at_kill = sorted(os.listdir(d["versions"]))
    sigkill(server)

    store = VersionStore(d["versions"])
    with open(store.stats_path) as f:  # what the killed trainer left: a run that says it is running
        left = json.load(f)
    assert left["status"] == "RUNNING" and left["pid"] != server.proc.pid, left
    assert file_bytes(store.live_path) == d["live"], reached  # LIVE.json untouched: still v0001
    assert sha256_file(store.checkpoint_path("v0001")) == d["v1_sha"]
    leftovers = [n for n in os.listdir(d["versions"]) if n.startswith(".tmp-")]
    if fault == "mid-epoch":
        assert store.list_versions() == ["v0001"], files_at_kill
    elif fault == "publish-checkpoint":
        assert store.list_versions() == ["v0001"], files_at_kill  # the temp checkpoint is not a version
        assert [n for n in leftovers if n.endswith(".pt")], files_at_kill  # (it was there, unrenamed)
    else:
        assert store.list_versions() == ["v0001", "v0002"]  # complete, loadable, not live
        meta = store.metrics("v0002")
        assert meta["sha256"] == sha256_file(store.checkpoint_path("v0002"))
        from lib.model import load_checkpoint

        load_checkpoint(store.checkpoint_path("v0002"))
    for name in os.listdir(d["versions"]):  # every JSON a reader opens parses (an empty reserved name is skipped)
        if name.endswith(".json") and not name.startswith(".tmp-") and os.path.getsize(os.path.join(d["versions"], name)):
            with open(os.path.join(d["versions"], name)) as f:
                json.load(f)

    server = server_factory(d["studies"], d["conf"])  # restart, no fault hook
    info = requests.get(f"{server.url}/info/", timeout=TIMEOUT).json()
    assert info["weights"]["version_name"] == "v0001" and info["weights"]["sha256"] == d["v1_sha"], info["weights"]
    stats = info["train_stats"]["sammed3d"]  # not RUNNING: the run was interrupted, and the file says so too
    assert stats["status"] == "INTERRUPTED" and stats["run_id"] == left["run_id"] and "POST /train" in stats["message"], stats
    with open(store.stats_path) as f:
        assert json.load(f)["status"] == "INTERRUPTED"
    assert "ended without finishing" in server.log()
    if fault == "publish-checkpoint":  # a minute old: it could be a publisher writing now, so it is kept
        assert [n for n in os.listdir(d["versions"]) if n in leftovers] == leftovers
        assert "v0002" not in info["trainers"]["sammed3d"]["versions"]  # the empty reserved v0002.json
    image_id = sorted(labels)[0]
    r = requests.post(f"{server.url}/infer/sammed3d", params={"image": image_id, "output": "json"},
                      data={"params": json.dumps({"label": "blob", "foreground": [[22, 26, 20]], "background": []})},
                      timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    for image_id, want in labels.items():  # labels intact, byte for byte in voxels
        r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        path = str(tmp_path / f"back-{image_id}.nii.gz")
        with open(path, "wb") as f:
            f.write(r.content)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), want)
    if fault == "mid-epoch":  # a new training is accepted (not refused as already running) and finishes
        r = requests.post(f"{server.url}/train/sammed3d", json={**TRAIN_OPTIONS, "max_epochs": 1, "publish": "never"},
                          timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 2 * TIMEOUT
        while (task := requests.get(f"{server.url}/train/", timeout=TIMEOUT).json()).get("status") not in ("DONE", "ERROR"):
            assert time.monotonic() < deadline, f"training did not finish: {task}\n{server.log_tail(60)}"
            time.sleep(0.5)
        assert task["status"] == "DONE", server.log_tail(60)
        stats = requests.get(f"{server.url}/info/", timeout=TIMEOUT).json()["train_stats"]["sammed3d"]
        assert stats["status"] == "DONE" and stats["run_id"] != left["run_id"], stats
        assert store.list_versions() == ["v0001"] and file_bytes(store.live_path) == d["live"]  # publish: never
    server.stop()


def test_a_killed_publish_leaves_no_version_and_old_temp_files_are_swept_at_start(tmp_path):
    """Unit: what a publish killed at each step leaves -- an empty reserved vNNNN.json, with or without
    its checkpoint -- is never listed, served or made live; at server start (resolve_served_weights)
    temp files an hour old are removed, younger ones (a publisher may be writing) are kept."""
    from trainer_utils import tiny_checkpoint

    from lib.trainers.publish import publish_version, reserve_name
    from lib.model import load_checkpoint
    from lib.versions import VersionStore, resolve_served_weights
    from lib.weights import WeightsError, sha256_file

    ckpt = tiny_checkpoint(str(tmp_path / "tiny.pt"))
    store = VersionStore(str(tmp_path / "versions"))
    model, _ = load_checkpoint(ckpt)
    assert publish_version(store, model, {}, sha256_file(ckpt), None) == "v0001"
    assert reserve_name(store) == "v0002"  # killed right after reserving: an empty v0002.json
    assert reserve_name(store) == "v0003"  # killed after the checkpoint's rename, before its metrics
    shutil.copy(store.checkpoint_path("v0001"), store.checkpoint_path("v0003"))
    assert os.path.getsize(store.metrics_path("v0002")) == os.path.getsize(store.metrics_path("v0003")) == 0
    assert store.list_versions() == ["v0001"]
    for name in ("v0002", "v0003"):
        with pytest.raises(WeightsError, match="did not finish"):
            store.choice_for(name)
        with pytest.raises(WeightsError):
            store.set_live(name)
    assert publish_version(store, model, {}, sha256_file(ckpt), None) == "v0004"  # the reserved names are skipped
    assert store.list_versions() == ["v0001", "v0004"]

    old, young = tmp_path / "versions" / ".tmp-old.pt", tmp_path / "versions" / ".tmp-young.pt"
    old.write_bytes(b"x" * 100)
    young.write_bytes(b"x" * 100)
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    conf = {"checkpoint": ckpt, "versions_dir": store.folder}
    resolve_served_weights(conf, str(tmp_path), write_pointer=False)  # a task subprocess: sweeps nothing
    assert old.exists()
    choice, _, _ = resolve_served_weights(conf, str(tmp_path))  # the server at start
    assert not old.exists() and young.exists() and choice.path == store.checkpoint_path("v0004")


def test_train_stats_left_running_by_a_dead_trainer_read_as_interrupted(tmp_path):
    """Unit: a RUNNING stats file is INTERRUPTED only when its writer is gone (pid + start time)."""
    import socket

    from lib.trainers.progress import mark_interrupted, process_start, reconcile

    me = {"status": "RUNNING", "pid": os.getpid(), "host": socket.gethostname(), "proc_start": process_start(os.getpid())}
    assert reconcile(me) is me  # alive: left alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {**me, "pid": dead.pid, "proc_start": "1", "run_id": "r1", "epoch": 1, "total_epochs": 3}
    assert reconcile(gone)["status"] == "INTERRUPTED" and "epoch 1 of 3" in reconcile(gone)["message"]
    assert reconcile({**me, "proc_start": "1"})["status"] == "INTERRUPTED"  # same pid, another process (reused)
    assert reconcile({**gone, "host": "another-host"})["status"] == "RUNNING"  # cannot tell: left alone
    assert reconcile({"status": "RUNNING"})["status"] == "INTERRUPTED"  # written before files named their writer
    assert reconcile({**gone, "status": "DONE"})["status"] == "DONE"
    path = tmp_path / "train_stats.json"
    path.write_text(json.dumps(gone))
    assert mark_interrupted(str(path))["status"] == "INTERRUPTED"
    assert json.loads(path.read_text())["status"] == "INTERRUPTED" and mark_interrupted(str(path)) is None
    path.write_text(json.dumps(me))
    assert mark_interrupted(str(path)) is None and json.loads(path.read_text()) == me


def test_sigkill_during_scoring_leaves_loadable_score_records(tmp_path, conf, server_factory):
    """SIGKILL while POST /scoring/uncertainty runs, just before its second score record is written.
    After a restart: the datastore JSON is valid, the first record is whole and plain data, the
    label saved before is intact, and the server answers /info, /activelearning and a click."""
    from prepare_sample_data import prepare_synthetic

    studies, truth = tmp_path / "studies", tmp_path / "truth"
    studies.mkdir()
    truth.mkdir()
    prepare_synthetic(str(studies), str(truth))
    ids = sorted(n.split(".")[0] for n in os.listdir(studies))
    assert len(ids) >= 3, ids
    for name in os.listdir(studies):  # three images: one labelled, two to score
        if name.split(".")[0] not in ids[:3]:
            os.remove(studies / name)
    ids = ids[:3]
    conf = {**conf, "al_feature_crops": "1", "al_n_jitter": "2", "versions_dir": str(tmp_path / "versions")}
    env, mark = fault_env(tmp_path, "scoring")
    server = server_factory(str(studies), conf, env=env)
    labelled = ids[0]
    assert save(server, labelled, label_file(str(studies), labelled, 1, str(tmp_path))).status_code == 200
    r = requests.post(f"{server.url}/scoring/uncertainty", json={}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    wait_for_mark(server, mark)
    sigkill(server)

    objects = datastore_json(str(studies))["objects"]  # valid JSON
    scored = {i: o["image"]["info"]["sammed3d_uncertainty"] for i, o in objects.items()
              if "sammed3d_uncertainty" in o["image"].get("info", {})}
    assert len(scored) == 1 and labelled not in scored, scored  # the first record whole, the second absent
    rec = next(iter(scored.values()))
    assert isinstance(rec["score"], float) and isinstance(rec["model_version"], str) and rec["prompts"] == "prior", rec

    server = server_factory(str(studies), conf)  # restart, no fault hook
    assert requests.get(f"{server.url}/info/", timeout=TIMEOUT).status_code == 200
    assert saved_values(server, labelled, str(tmp_path)) == {1}
    r = requests.post(f"{server.url}/activelearning/uncertainty", json={"client_id": "alice"}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["id"] in ids[1:], r.text
    r = requests.post(f"{server.url}/infer/sammed3d", params={"image": ids[1], "output": "json"},
                      data={"params": json.dumps({"label": "x", "foreground": [[10, 10, 10]], "background": []})},
                      timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    server.stop()


# --------------------------------------------- SIGKILL during a DICOMweb fetch (Orthanc as the PACS)
#
# The first click on a series that is not in the server's DICOMweb cache downloads its instances into
# <cache>/<series>/ and converts them to <cache>/<series>.nii.gz (MONAI Label's DICOMWebDatastore,
# under lib.datastore.serialise_dicomweb_fetches' per-series file lock). The kill lands in the server
# process, in the middle of either step (FAULT_HOOK: after 2 of 20 instances are saved; with half of
# the converted file copied into the cache).

ORTHANC_BIN = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOM_SERIES = "synth_small_ct"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc on a free port with one CT series (synth_small_ct, 20 slices): -> url, uid, grid."""
    if not (ORTHANC_BIN and os.path.exists(ORTHANC_PLUGIN)):
        pytest.skip("needs Orthanc + orthanc-dicomweb (bash scripts/orthanc/orthanc.sh install; scripts/test.sh does)")
    from local_server import REPO as SERVER_REPO, free_port
    from make_dicom_series import Series, write_all
    from prepare_sample_data import prepare_synthetic

    root = tmp_path_factory.mktemp("pacs")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    prepare_synthetic(str(studies), str(truth))
    image = sitk.ReadImage(image_file(str(studies), DICOM_SERIES))
    manifest = write_all([Series(DICOM_SERIES, image, "CT")], str(root / "dicom"))
    uid = manifest["series"][0]["SeriesInstanceUID"]
    env = dict(os.environ, ORTHANC_HOME=str(root / "orthanc"), ORTHANC_HTTP_PORT=str(free_port()), PYTHON=sys.executable)
    script = os.path.join(SERVER_REPO, "scripts", "orthanc", "orthanc.sh")
    try:
        subprocess.run(["bash", script, "start"], env=env, check=True, capture_output=True, text=True, timeout=60)
        subprocess.run(["bash", script, "load", str(root / "dicom")], env=env, check=True, capture_output=True,
                       text=True, timeout=120)
        yield {"url": f"http://127.0.0.1:{env['ORTHANC_HTTP_PORT']}", "uid": uid, "size": image.GetSize(),
               "voxels": sitk.GetArrayFromImage(image),
               "spacing": image.GetSpacing(), "root": root}
    except subprocess.CalledProcessError as e:
        pytest.fail(f"Orthanc setup failed: {e.stdout}\n{e.stderr}")
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)


def dicomweb_env(cache):
    return {"PATH": os.path.join(os.path.dirname(sys.executable)) + os.pathsep + os.environ.get("PATH", ""),  # dcmqi
            "MONAI_LABEL_DICOMWEB_CACHE_PATH": cache, "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "CT"})}


def click(server, image_id, timeout=TIMEOUT):
    return requests.post(f"{server.url}/infer/sammed3d", params={"image": image_id, "output": "json"},
                         data={"params": json.dumps({"label": "organ", "foreground": [[20, 18, 10]], "background": []})},
                         timeout=timeout)


@pytest.mark.parametrize("fault", ["dicom-download", "dicom-convert"])
def test_sigkill_during_a_dicomweb_fetch_then_the_next_click_fetches_it_whole(fault, pacs, conf, server_factory, tmp_path):
    """SIGKILL while the first click on a series downloads it (2 of 20 instances saved) or copies its
    converted NIfTI into the cache (half written). After a restart the next click on that series
    answers, on the whole series: the partial download or the half-written file is not used, and the
    lock file left by the killed fetch does not block."""
    from lib.datastore import FETCH_LOCKS

    uid, cache = pacs["uid"], str(tmp_path / "dicom-cache")
    env, mark = fault_env(tmp_path, fault)
    env = {**env, **dicomweb_env(cache), "SAMMED3D_TEST_FAULT_SERIES": uid}
    conf = {**conf, "download": "false", "versions_dir": str(tmp_path / "versions")}
    server = server_factory(pacs["url"] + "/dicom-web", conf, env=env)

    def first_click():  # never answered: the server dies under it
        try:
            click(server, uid)
        except requests.RequestException:
            pass

    t = threading.Thread(target=first_click, daemon=True)
    t.start()
    reached = wait_for_mark(server, mark)
    sigkill(server)
    t.join(timeout=30)

    [store] = [os.path.join(cache, n) for n in os.listdir(cache)]  # <cache>/<md5 of the DICOMweb URL>/
    series_dir, nifti = os.path.join(store, uid), os.path.join(store, f"{uid}.nii.gz")
    if fault == "dicom-download":  # what the kill left: a partial download, no NIfTI
        assert len(os.listdir(series_dir)) == 2 and not os.path.exists(nifti), (reached, os.listdir(store))
    else:  # every instance, and a half-written NIfTI in the cache
        assert len(os.listdir(series_dir)) == pacs["size"][2], reached
        with open(nifti, "rb") as f, pytest.raises(EOFError):  # cut short (SimpleITK would read it, zero-filled)
            gzip.decompress(f.read())
    assert os.listdir(os.path.join(store, FETCH_LOCKS)), "the killed fetch's lock file is still there"

    server = server_factory(pacs["url"] + "/dicom-web", conf, env=dicomweb_env(cache))  # restart, no fault hook
    r = click(server, uid, timeout=60)  # a stale lock would block: 60 s is far more than a fetch takes
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n{server.log_tail(60)}"
    assert "was not completely fetched" in server.log(), server.log_tail(40)  # discarded, and said so
    assert len(os.listdir(series_dir)) == pacs["size"][2]  # the whole series was fetched again
    cached = sitk.ReadImage(nifti)  # the whole converted series, not 2 slices or half a file
    assert cached.GetSize() == pacs["size"] and np.allclose(cached.GetSpacing(), pacs["spacing"], atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(cached), pacs["voxels"], atol=1), "the cached image is not the series"
    assert click(server, uid).status_code == 200  # and from the cache
    server.stop()
