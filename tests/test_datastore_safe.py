"""lib/datastore.py: label saves are atomic and every replaced label is kept (server: test_app_server)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from lib.datastore import HISTORY, SafeLocalDatastore, current_label_files, history


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
