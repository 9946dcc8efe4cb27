"""Training volumes are prepared on the grid the server crops from (issue 13, item 1):
lib.session.preprocess.resample_volume is resample_crop for every crop at once, and
scripts/prepare_real_volumes.py resamples with it onto lib.session.geometry.model_grid."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import SimpleITK as sitk

from lib.session.geometry import model_grid
from lib.session.preprocess import resample_crop, resample_volume
from test_session_fakes import ras_affine, rotation, smooth_volume, write_nifti

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_real_volumes",
                                                  os.path.join(REPO, "scripts", "prepare_real_volumes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resample_volume_is_the_servers_crops(tmp_path):
    affine = ras_affine((0.9, 1.1, 2.0), np.diag([-1.0, 1.0, 1.0]) @ rotation([1, 1, 0], 20), origin=(5, -3, 2))
    image = sitk.Cast(sitk.ReadImage(write_nifti(tmp_path / "o.nii.gz", smooth_volume((50, 44, 20)), affine)),
                      sitk.sitkFloat32)
    grid = model_grid(image)
    whole = resample_volume(image, grid)
    assert whole.shape == grid.size and whole.dtype == np.float32
    for origin in [(0, 0, 0), (3, 5, 2)]:
        crop = resample_crop(image, grid, origin, 16)
        sl = tuple(slice(o, o + 16) for o in origin)
        np.testing.assert_allclose(crop, whole[sl], rtol=1e-5, atol=1e-3)


def test_prepare_real_volumes_uses_the_model_grid(tmp_path):
    prep = _prepare_module()
    # stored axis 1 runs towards posterior: the RAS arrays must come out with it reversed
    affine = ras_affine((1.0, 1.0, 1.0), np.diag([1.0, -1.0, 1.0]), origin=(-20, 30, 4))
    data = smooth_volume((30, 24, 18))
    image = sitk.Cast(sitk.ReadImage(write_nifti(tmp_path / "a.nii.gz", data, affine)), sitk.sitkFloat32)
    label = np.zeros(data.shape, np.uint8)
    label[3:9, 2:8, 2:16] = 1
    lab_img = sitk.GetImageFromArray(label.transpose(2, 1, 0))
    lab_img.CopyInformation(image)
    arr, grid = prep.resample_ras(image, False)
    lab, same = prep.resample_ras(lab_img, True, grid)
    assert grid == model_grid(image, prep.SPACING) and same is grid
    np.testing.assert_array_equal(arr, resample_volume(image, grid))
    assert arr.shape == lab.shape == grid.size
    # the label's low stored j (the most anterior voxels) lands at high RAS axis-1 indices
    cols = np.nonzero(lab.any(axis=(0, 2)))[0]
    assert cols.min() > grid.size[1] // 2
