"""Faults: the server is SIGKILLed mid-save, finds its datastore JSON corrupt, runs out of disk.

Each test drives a real `monailabel start_server` (conftest.server_factory, scripts/local_server)
and checks, after the fault and a restart, that every label saved before is intact and readable,
that an interrupted save is either whole or absent, and that the datastore JSON is valid.
"""
import errno
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
