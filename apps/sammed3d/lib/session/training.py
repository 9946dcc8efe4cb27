"""Training crops with exactly the session's preprocessing (for the trainer and the scorer).

A crop for training is what the session would feed the model for a click at `centre`: the same
RAS 1.5 mm model grid, the same 128^3 crop placement (crop_origin_for), the same resampling and
z-normalisation, plus the label resampled onto that crop (nearest neighbour). Nothing here changes
how the session segments; it only exposes its preprocessing with a label beside the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import model_grid
from .io import read_image
from .preprocess import CROP, crop_origin_for, normalise, resample_crop
from .volume import LoadedVolume, is_ct, load_volume


@dataclass
class TrainingCrop:
    image: torch.Tensor  # (1, 1, C, C, C) float32, z-normalised: the encoder's input
    target: torch.Tensor  # (C, C, C) bool, the label on the same crop (tensor-axis order)
    origin: Tuple[int, int, int]  # model-grid index of the crop's first voxel
    ct: bool  # whether the CT clamp was applied


def _label_image(label, reference: sitk.Image) -> sitk.Image:
    """Path, sitk.Image or stored-order (i, j, k) array -> binary uint8 sitk image (nonzero = 1)."""
    if isinstance(label, str):
        label = read_image(label)[0]
    if isinstance(label, sitk.Image):
        return sitk.Cast(label != 0, sitk.sitkUInt8)
    arr = np.asarray(label)
    if arr.shape != tuple(reference.GetSize()):
        raise ValueError(f"label array shape {arr.shape} differs from the image's {tuple(reference.GetSize())}")
    img = sitk.GetImageFromArray(np.ascontiguousarray((arr != 0).astype(np.uint8).transpose(2, 1, 0)))
    img.CopyInformation(reference)
    return img


def extract_training_crop(
    image: Union[str, LoadedVolume],
    label,
    centre: Sequence[float],
    offset: Sequence[int] = (0, 0, 0),
    modality: Optional[str] = None,
    crop: int = CROP,
) -> TrainingCrop:
    """The model input and target for one crop, as the session would build it.

    Args:
        image: image path (NIfTI, NRRD, DICOM folder) or a volume from `load_volume`.
        label: label path, sitk.Image or array in stored (i, j, k) order on the image's grid;
            every nonzero voxel is target.
        centre: stored (i, j, k) index (continuous) the crop is centred on, as for a click.
        offset: model-grid voxels added to the crop origin (training jitter).
        modality: as for SegmentationEngine.segment (decides the CT clamp; None: auto).
    """
    volume = image if isinstance(image, LoadedVolume) else load_volume(image)
    grid = model_grid(volume.image)
    ct = is_ct(volume, modality)
    u = grid.stored_to_grid(np.asarray(centre, dtype=np.float64))[0]
    origin = tuple(int(o) + int(d) for o, d in zip(crop_origin_for(u, crop), offset))
    img = normalise(resample_crop(volume.image, grid, origin, crop), ct)
    lab = sitk.Resample(_label_image(label, volume.image), [crop] * 3, sitk.Transform(), sitk.sitkNearestNeighbor,
                        grid.crop_origin_lps(origin), [grid.spacing] * 3, grid.direction, 0, sitk.sitkUInt8)
    target = np.ascontiguousarray(sitk.GetArrayViewFromImage(lab).transpose(2, 1, 0)) > 0
    for r in range(3):  # outside the model grid is padding, as resample_crop does for the image
        lo, hi = max(0, -origin[r]), min(crop, grid.size[r] - origin[r])
        sl = [slice(None)] * 3
        if lo > 0:
            sl[r] = slice(0, lo)
            target[tuple(sl)] = False
        if hi < crop:
            sl[r] = slice(max(hi, 0), crop)
            target[tuple(sl)] = False
    return TrainingCrop(img, torch.from_numpy(target), origin, ct)
