"""Volumes in, masks out: DICOM series, CT detection, normalisation, write_mask geometry."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lib.session import SegmentationEngine, SessionError, load_volume, write_mask
from lib.session.preprocess import normalise
from lib.session.volume import is_ct
from test_session_fakes import BallModel, ras_affine, rotation, smooth_volume, write_nifti


def write_dicom_series(folder, data_kji: np.ndarray, spacing, direction_lps, origin_lps, modality="CT"):
    """A minimal CT series written slice by slice with SimpleITK (array order [k, j, i])."""
    os.makedirs(folder, exist_ok=True)
    d = np.array(direction_lps, float).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(data_kji.shape[0]):
        sl = sitk.GetImageFromArray(data_kji[k][None].astype(np.int16))
        sl.SetSpacing(spacing)
        sl.SetDirection(tuple(d.ravel()))
        pos = np.array(origin_lps) + d[:, 2] * spacing[2] * k
        sl.SetOrigin(tuple(pos))
        tags = {
            "0008|0060": modality,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0032": "\\".join(f"{x:.6f}" for x in pos),
            "0020|0037": "\\".join(f"{x:.6f}" for x in list(d[:, 0]) + list(d[:, 1])),
            "0020|0013": str(k + 1),
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(os.path.join(folder, f"{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_geometry_and_modality(tmp_path):
    rot = rotation([0, 0, 1], 10)
    data = smooth_volume((50, 60, 20), ct=True)  # stored (i, j, k)
    folder = str(tmp_path / "series")
    write_dicom_series(folder, data.transpose(2, 1, 0), (0.8, 0.8, 2.5), rot, (-20.0, 10.0, 5.0), modality="MR")
    vol = load_volume(folder)
    assert vol.shape == (50, 60, 20) and vol.modality == "MR"
    arr = sitk.GetArrayFromImage(vol.image).transpose(2, 1, 0)
    np.testing.assert_array_equal(arr, data)
    eng = SegmentationEngine(BallModel(), "v1")
    r = eng.segment("s", folder, "a", [[25, 30, 10], [28, 26, 11]], [])
    assert r.mask.shape == (50, 60, 20) and r.mask[28, 26, 11] == 1
    # DICOM says MR: no CT clamp even though the values look like HU.
    assert not is_ct(vol, None) and is_ct(vol, "CT")
    out = write_mask(r, str(tmp_path / "m.nii.gz"), folder)
    np.testing.assert_allclose(nib.load(out).affine, r.affine, atol=1e-4)


def test_ct_detection_order(tmp_path):
    ct = load_volume(write_nifti(tmp_path / "ct.nii.gz", smooth_volume((20, 20, 20), ct=True), np.eye(4)))
    mr = load_volume(write_nifti(tmp_path / "mr.nii.gz", smooth_volume((20, 20, 20)), np.eye(4)))
    assert is_ct(ct, None) and is_ct(ct, "auto") and not is_ct(mr, None)
    assert is_ct(mr, "ct") and not is_ct(ct, "MR")


def test_ct_clamp_reaches_the_model(tmp_path):
    data = smooth_volume((40, 40, 40), ct=True)
    data[:5] = 3000  # metal above the clamp
    path = write_nifti(tmp_path / "ct.nii.gz", data, np.eye(4))
    m = BallModel()
    SegmentationEngine(m, "v1").segment("i", path, "a", [[20, 20, 20]], [])
    m2 = BallModel()
    SegmentationEngine(m2, "v1", modality="MR").segment("i", path, "a", [[20, 20, 20]], [])
    assert not torch.equal(m.encoded_images[0], m2.encoded_images[0])


def test_normalise_statistics():
    rng = np.random.default_rng(0)
    crop = np.zeros((32, 32, 32), np.float32)
    crop[8:24, 8:24, 8:24] = rng.normal(100, 20, (16, 16, 16)).astype(np.float32)
    t = normalise(crop, ct=False)[0, 0]
    fg = torch.from_numpy(crop) > 0
    assert t.shape == (32, 32, 32)
    assert abs(float(t[fg].mean())) < 1e-4 and abs(float(t[fg].std()) - 1.0) < 1e-4
    bg_value = float(t[0, 0, 0])  # padding is normalised too: -mean/std
    ref = crop[crop > 0]
    assert abs(bg_value - (-ref.mean() / ref.std(ddof=1))) < 1e-3
    ct = np.full((16, 16, 16), 5000.0, np.float32)
    ct[0] = -3000
    c = normalise(ct, ct=True)[0, 0]
    assert torch.isfinite(c).all()


@pytest.mark.parametrize("ext, compress", [(".nii.gz", True), (".nii", True), (".nrrd", False), (".nrrd", True)])
def test_write_mask_copies_reference_geometry(tmp_path, ext, compress):
    affine = ras_affine((0.6, 0.6, 5.0), np.diag([-1.0, 1.0, 1.0]) @ rotation([1, 0, 0], 12), origin=(3, 4, 5))
    ref = write_nifti(tmp_path / "ref.nii.gz", smooth_volume((60, 50, 12)), affine)
    r = SegmentationEngine(BallModel(), "v1").segment("i", ref, "a", [[30, 25, 6]], [])
    out = write_mask(r, str(tmp_path / f"mask{ext}"), ref, compress=compress)
    back = sitk.ReadImage(out)
    refimg = sitk.ReadImage(ref)
    assert back.GetSize() == refimg.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), refimg.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), refimg.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), refimg.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), r.mask)
    assert back.GetPixelID() == sitk.sitkUInt8
    if ext == ".nrrd":
        header = open(out, "rb").read(400)
        assert (b"encoding: raw" in header) == (not compress)
    if ext.startswith(".nii"):
        np.testing.assert_allclose(nib.load(out).affine, nib.load(ref).affine, atol=1e-4)


def test_write_mask_rejects_mismatch(tmp_path):
    ref = write_nifti(tmp_path / "ref.nii.gz", smooth_volume((20, 20, 20)), np.eye(4))
    r = SegmentationEngine(BallModel(), "v1").segment("i", ref, "a", [[10, 10, 10]], [])
    other = write_nifti(tmp_path / "other.nii.gz", smooth_volume((20, 20, 21)), np.eye(4))
    with pytest.raises(SessionError, match="does not match"):
        write_mask(r, str(tmp_path / "m.nii.gz"), other)
    with pytest.raises(SessionError, match="must end with"):
        write_mask(r, str(tmp_path / "m.png"), ref)
