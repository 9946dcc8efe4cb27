"""scripts/prepare_dev_brain.py: the development brain's labels on the 1 mm T1's grid, left parcels only."""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from prepare_dev_brain import PARCELS, labels_on  # noqa: E402


def test_labels_land_on_the_t1_grid_with_the_atlas_cut_to_the_left_hemisphere():
    """A 1 mm 'T1' in LPS-flipped x (as the MNI NIfTI reads: direction -1, origin +x) and 2 mm label maps in the
    other x direction (as nimare's atlas and ROI): the ROI's voxel and every parcel land at the same physical
    place, and the symmetric parcel is kept only where RAS x < 0 (ITK's LPS x > 0)."""
    import SimpleITK as sitk

    t1 = sitk.Image(40, 20, 20, sitk.sitkInt16)
    t1.SetSpacing((1.0, 1.0, 1.0))
    t1.SetOrigin((20.0, 0.0, 0.0))  # LPS x from 20 down to -19: RAS x from -20 to 19
    t1.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    two = sitk.Image(20, 10, 10, sitk.sitkUInt8)
    two.SetSpacing((2.0, 2.0, 2.0))
    two.SetOrigin((-19.5, 0.5, 0.5))  # LPS x from -19.5 up: covers the T1
    atlas = sitk.GetArrayFromImage(two)
    index = PARCELS["left temporal pole"]
    atlas[:, :, :] = index  # one symmetric parcel everywhere
    atlas_img = sitk.GetImageFromArray(atlas)
    atlas_img.CopyInformation(two)
    roi = np.zeros_like(atlas)
    roi[5, 5, 4] = 1  # 2 mm voxel at LPS x -11.5 (RAS x 11.5: the right side)
    roi_img = sitk.GetImageFromArray(roi)
    roi_img.CopyInformation(two)
    labels, names = labels_on(t1, roi_img, atlas_img)
    assert labels.shape == (20, 20, 40) and names["amygdala"] == 1
    value = names["left temporal pole"]
    lps_x = np.array([t1.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(40)])
    parcel_cols = np.unique(np.nonzero(labels == value)[2])
    assert parcel_cols.size and (lps_x[parcel_cols] > 0).all()  # left hemisphere only
    assert (labels[:, :, lps_x < 0] != value).all()
    amyg = np.argwhere(labels == 1)
    assert 1 <= len(amyg) <= 8  # one 2 mm voxel -> up to 2^3 1 mm voxels
    pts = np.array([t1.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for k, j, i in amyg])
    assert np.all(np.abs(pts - (-11.5 + 0.0, 10.5, 10.5)) <= 1.0 + 1e-6)  # where the ROI voxel is
