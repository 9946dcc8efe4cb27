"""Build the model input for one 128^3 crop of the model grid.

Same voxels as the released model's pipeline (resample to 1.5 mm RAS, CT clamp, crop/zero-pad
to 128^3, z-normalise over voxels > 0), but only the crop is resampled: SimpleITK resamples the
original image directly onto the crop's part of the model grid (linear), so the cost does not
grow with the volume.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import ModelGrid

CROP = 128  # the released model's input edge (model.image_size)
CT_RANGE = (-1000.0, 1000.0)


def resample_crop(image: sitk.Image, grid: ModelGrid, crop_origin: Tuple[int, int, int], crop: int = CROP) -> np.ndarray:
    """Resample `image` onto grid voxels [crop_origin, crop_origin + crop) -> (crop,)*3 float32.

    Array axes are model-grid axes (u, v, w) = (R, A, S), i.e. the crop tensor's axes 2, 3, 4.
    Voxels outside the model grid (beyond the volume) are 0, the training pipeline's pad value.
    """
    out = sitk.Resample(
        image,
        [crop] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        grid.crop_origin_lps(crop_origin),
        [grid.spacing] * 3,
        grid.direction,
        0.0,
        sitk.sitkFloat32,
    )
    # GetArrayFromImage is [w, v, u]; transpose to (u, v, w). Copy: keep it contiguous for torch.
    arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(out).transpose(2, 1, 0))
    # Zero what lies outside the model grid (resample-then-pad would have padded it with 0).
    for r in range(3):
        lo = max(0, -crop_origin[r])
        hi = min(crop, grid.size[r] - crop_origin[r])
        sl = [slice(None)] * 3
        if lo > 0:
            sl[r] = slice(0, lo)
            arr[tuple(sl)] = 0.0
        if hi < crop:
            sl[r] = slice(max(hi, 0), crop)
            arr[tuple(sl)] = 0.0
    return arr


def resample_volume(image: sitk.Image, grid: ModelGrid, interpolator=sitk.sitkLinear,
                    pixel_type=sitk.sitkFloat32) -> np.ndarray:
    """Resample `image` onto the whole model grid -> array with axes (u, v, w) = (R, A, S).

    The voxels resample_crop gives, for every crop at once (same grid, same sample points, 0 outside
    the image): what training volumes are prepared with (scripts/prepare_real_volumes.py), so they
    are trained on the grid the server crops from. Labels: interpolator sitkNearestNeighbor.
    """
    out = sitk.Resample(image, [int(n) for n in grid.size], sitk.Transform(), interpolator, grid.origin,
                        [grid.spacing] * 3, grid.direction, 0.0, pixel_type)
    return np.ascontiguousarray(sitk.GetArrayViewFromImage(out).transpose(2, 1, 0))


def normalise(crop: np.ndarray, ct: bool) -> torch.Tensor:
    """Clamp (CT) and z-normalise with mean / unbiased std of voxels > 0 -> (1, 1, D, H, W) float32.

    The statistics come from voxels > 0 only but are applied to every voxel, padding included,
    as torchio's ZNormalization(masking_method=lambda x: x > 0) did in training.
    """
    t = torch.from_numpy(crop)
    if ct:
        t = t.clamp(*CT_RANGE)
    fg = t[t > 0]
    if fg.numel() < 2:  # nothing positive (e.g. all air): fall back to the whole crop
        fg = t.reshape(-1)
    mean = fg.mean()
    std = fg.std()  # unbiased, as torch/torchio
    if not torch.isfinite(std) or std < 1e-8:
        std = torch.ones((), dtype=t.dtype)
    # One new tensor (the same values as (t - mean) / std), already contiguous.
    return torch.sub(t, mean).div_(std)[None, None]


def crop_origin_for(center: np.ndarray, crop: int = CROP) -> Tuple[int, int, int]:
    """Grid index of the first voxel of the crop centred on `center` (continuous grid index)."""
    c = np.floor(np.asarray(center, dtype=np.float64) + 0.5).astype(int)
    return tuple(int(x) - crop // 2 for x in c)


def tile_origins(size: Sequence[int], crop: int = CROP, max_crops: int = 4) -> List[Tuple[int, int, int]]:
    """Origins of crops tiling a model grid of `size` (no overlap, the tiling centred on the grid), the
    `max_crops` nearest the grid centre first (volume features for active learning)."""
    axes = []
    for n in size:
        count = max(1, -(-int(n) // crop))
        start = (int(n) - count * crop) // 2
        axes.append([start + i * crop for i in range(count)])
    centre = np.array(size, dtype=np.float64) / 2.0
    origins = sorted(((a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]),
                     key=lambda o: (float(np.sum((np.array(o) + crop / 2.0 - centre) ** 2)), o))
    return origins[: max(1, int(max_crops))]
