"""lib/datastore.py: label saves are atomic and every replaced label is kept (server: test_app_server)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from lib.datastore import HISTORY, SafeLocalDatastore, current_label_files, history, serialise_dicomweb_fetches


def _img(path, value=0, shape=(6, 5, 4)):
    sitk.WriteImage(sitk.GetImageFromArray(np.full(shape[::-1], value, np.uint8)), str(path))
    return str(path)


def _voxels(path):
    return int(sitk.GetArrayFromImage(sitk.ReadImage(path)).max())


@pytest.fixture
def store(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    _img(studies / "case.nii.gz", 0)
    _img(studies / "case.001.nii.gz", 0)  # an id that shares the prefix
    ds = SafeLocalDatastore(str(studies), extensions=["*.nii.gz", "*.nii", "*.nrrd"], auto_reload=False)
    return ds, tmp_path


def test_resaving_keeps_every_earlier_label(store):
    ds, tmp = store
    for value in (1, 2, 3):
        ds.save_label("case", _img(tmp / f"up{value}.nii.gz", value), "final", {"by": "me"})
    label_dir = ds._datastore.label_path("final")
    assert _voxels(ds.get_label_uri("case", "final")) == 3
    kept = history(label_dir, "case")
    assert [_voxels(p) for p in kept] == [1, 2]
    info = ds.get_label_info("case", "final")
    assert info["by"] == "me" and info["previous"].startswith(HISTORY)
    # the other id's files are untouched and the history folder is not a label or an image
    ds.save_label("case.001", _img(tmp / "other.nii.gz", 7), "final", {})
    assert [_voxels(p) for p in history(label_dir, "case")] == [1, 2]
    ds.refresh()
    assert sorted(ds.list_images()) == ["case", "case.001"]
    assert sorted(ds.get_labeled_images()) == ["case", "case.001"]
    assert not [n for n in os.listdir(label_dir) if n.startswith(".tmp-")]


def test_a_label_saved_under_another_extension_is_kept_too(store):
    ds, tmp = store
    ds.save_label("case", _img(tmp / "a.nrrd", 4), "final", {})
    ds.save_label("case", _img(tmp / "b.nii.gz", 5), "final", {})
    label_dir = ds._datastore.label_path("final")
    assert current_label_files(label_dir, "case", [".nii.gz", ".nrrd"]) == ["case.nii.gz"]
    assert [p.endswith(".nrrd") for p in history(label_dir, "case")] == [True]
    assert _voxels(ds.get_label_uri("case", "final")) == 5


def test_a_failed_write_leaves_the_previous_label_intact(store, monkeypatch):
    ds, tmp = store
    ds.save_label("case", _img(tmp / "good.nii.gz", 1), "final", {})
    import lib.datastore as mod

    def broken(dest, write, tmp_suffix=None):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "atomic_write", broken)
    with pytest.raises(OSError):
        ds.save_label("case", _img(tmp / "new.nii.gz", 9), "final", {})
    # the current label is still the live one (and also kept in the history)
    assert _voxels(ds.get_label_uri("case", "final")) == 1
    label_dir = ds._datastore.label_path("final")
    assert [_voxels(p) for p in history(label_dir, "case")] == [1]


def test_unknown_image_is_refused(store):
    ds, tmp = store
    from monailabel.interfaces.exception import ImageNotFoundException

    with pytest.raises(ImageNotFoundException):
        ds.save_label("nope", _img(tmp / "x.nii.gz", 1), "final", {})


class _SlowFetchStore:
    """Stands in for MONAI Label's DICOMWebDatastore: a first fetch takes a while, unlocked."""

    def __init__(self, path):
        import threading

        self._datastore_path = str(path)
        self.active, self.peak, self.calls = {}, {}, []
        self._count = threading.Lock()

    def _fetch(self, series_id, kind):
        import time

        with self._count:
            self.active[series_id] = self.active.get(series_id, 0) + 1
            self.peak[series_id] = max(self.peak.get(series_id, 0), self.active[series_id])
            self.calls.append((kind, series_id))
        time.sleep(0.2)
        with self._count:
            self.active[series_id] -= 1
        return f"/cache/{series_id}.nii.gz"

    def get_image_uri(self, image_id):
        return self._fetch(image_id, "image")

    def get_label_uri(self, label_id, label_tag, image_id=""):
        return self._fetch(label_id, "label")


def test_a_series_is_fetched_by_one_caller_at_a_time(tmp_path):
    import threading
    import time

    ds = serialise_dicomweb_fetches(_SlowFetchStore(tmp_path))
    same = [threading.Thread(target=ds.get_image_uri, args=("1.2.3",)) for _ in range(3)]
    same.append(threading.Thread(target=lambda: ds.get_image_uri(image_id="1.2.3")))  # MONAI Label's keyword call
    t0 = time.monotonic()
    for t in same:
        t.start()
    for t in same:
        t.join()
    assert ds.peak["1.2.3"] == 1, "two callers fetched the same series at once"
    assert time.monotonic() - t0 >= 0.8  # four fetches of 0.2 s, one after the other

    # different series still go in parallel; labels (SEG series) are locked the same way
    other = [threading.Thread(target=ds.get_image_uri, args=("4.5.6",)),
             threading.Thread(target=ds.get_label_uri, args=("7.8.9", "final"))]
    t0 = time.monotonic()
    for t in other:
        t.start()
    for t in other:
        t.join()
    assert time.monotonic() - t0 < 0.35
    assert ds.get_label_uri(label_id="7.8.9", label_tag="final") == "/cache/7.8.9.nii.gz"
    assert ("label", "7.8.9") in ds.calls
