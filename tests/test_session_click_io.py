"""File reads of one click through the infer task (issue 13, item 1): a click reads a file header at
most once, and a click on a cached image reads no file at all (no header, no image). The mask is
written on the grid the session already holds, and the ROI is the session's (lib.session.roi)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import HTTPException

import lib.session.io as session_io
from lib.infers.sammed3d import SAMMed3DInfer
from lib.session import SegmentationEngine, SegmentationResult, write_mask
from test_session_fakes import BallModel, ras_affine, rotation, smooth_volume, write_nifti


@pytest.fixture()
def counted(monkeypatch):
    """Counts of the session's header reader, of every SimpleITK header read and of whole-image reads."""
    n = {"read_header": 0, "header": 0, "image": 0}
    header, info, read = session_io.read_header, sitk.ImageFileReader.ReadImageInformation, sitk.ReadImage

    def read_header(*a, **k):
        n["read_header"] += 1
        return header(*a, **k)

    def read_information(self, *a, **k):
        n["header"] += 1
        return info(self, *a, **k)

    def read_image(*a, **k):
        n["image"] += 1
        return read(*a, **k)

    monkeypatch.setattr(session_io, "read_header", read_header)
    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", read_information)
    monkeypatch.setattr(sitk, "ReadImage", read_image)
    return n


def _task():
    return SAMMed3DInfer(SegmentationEngine(BallModel(), "v1"), {"source": "test"}, "test")


@pytest.mark.parametrize("roi", [None, [10, 50, 5, 45, 2, 20]])
def test_first_and_repeat_click_file_reads(tmp_path, counted, roi):
    affine = ras_affine((0.8, 0.9, 2.5), np.diag([-1.0, 1.0, 1.0]) @ rotation([0, 0, 1], 15), origin=(4, -7, 3))
    image = write_nifti(tmp_path / "ct.nii.gz", smooth_volume((60, 50, 24)), affine)
    task = _task()
    request = {"image": image, "label": "a", "foreground": [[30, 25, 12]], "background": []}
    if roi is not None:
        request["roi"] = roi
    counted.update(read_header=0, header=0, image=0)
    out, result = task(dict(request))
    assert counted["header"] <= 1 and counted["read_header"] <= 1, counted  # first click: at most one header
    assert counted["image"] == 1, counted  # the image itself, once
    # the grid the session held gives the same file as the image's header read afresh
    mask = sitk.GetArrayFromImage(sitk.ReadImage(out)).transpose(2, 1, 0)
    again = write_mask(SegmentationResult(mask=mask, affine=np.eye(4)), str(tmp_path / "again.nii.gz"), image)
    assert open(out, "rb").read() == open(again, "rb").read()
    os.remove(out)

    counted.update(read_header=0, header=0, image=0)
    repeat = dict(request, foreground=[[30, 25, 12], [32, 27, 12]])
    out, result = task(repeat)
    assert counted == {"read_header": 0, "header": 0, "image": 0}  # cached image: no file read at all
    assert result["cache_hit"]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(out)).transpose(2, 1, 0)
    os.remove(out)
    assert mask.any()
    if roi is not None:  # zero outside the ROI, as before
        inside = np.zeros_like(mask)
        inside[roi[0]:roi[1] + 1, roi[2]:roi[3] + 1, roi[4]:roi[5] + 1] = 1
        assert not (mask & (1 - inside)).any()


def test_roi_outside_the_volume_leaves_the_label_unchanged(tmp_path, counted):
    image = write_nifti(tmp_path / "v.nii.gz", smooth_volume((40, 40, 20)), np.eye(4))
    task = _task()
    base = {"image": image, "label": "a", "foreground": [[20, 20, 10]], "background": []}
    out, _ = task(dict(base))
    before = sitk.GetArrayFromImage(sitk.ReadImage(out))
    os.remove(out)
    with pytest.raises(HTTPException, match="does not overlap the volume of size"):
        task(dict(base, foreground=[[20, 20, 10], [5, 5, 5]], roi=[100, 120, 0, 5, 0, 5]))
    counted.update(read_header=0, header=0, image=0)
    out, result = task(dict(base))  # the same clicks as the label holds: nothing new to decode
    assert counted == {"read_header": 0, "header": 0, "image": 0}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), before)
    os.remove(out)
