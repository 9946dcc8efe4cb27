"""Small labelled synthetic cases and a NIfTI writer, for tests, demos and benchmarks that need
image/label files on disk (the trainer tests, scripts/finetune_demo.py, scripts/bench_trainer.py).

Arrays are in (i, j, k) index order; write_nifti stores them as SimpleITK expects (k, j, i).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .phantoms import generate_phantom
from .shapes import random_shape


def write_nifti(array: np.ndarray, path: str, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0),
                direction: Optional[Sequence[float]] = None, dtype=np.float32) -> str:
    """Write an (i, j, k) array with the given geometry (direction: 9 numbers, row-major) -> path."""
    im = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype))
    im.SetSpacing(tuple(float(s) for s in spacing))
    im.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        im.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(im, path)
    return path


def ellipsoid_case(seed: int, shape: Sequence[int] = (56, 52, 40), two_blobs: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) with one bright ellipsoid (label 1) and, optionally, a second one
    (label 1, another component) -> (image float32, label uint8)."""
    rs = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    img = rs.normal(0, 20, size=shape).astype(np.float32) + 40.0
    lab = np.zeros(shape, np.uint8)
    centres = [(shape[0] * 0.4, shape[1] * 0.5, shape[2] * 0.5)]
    if two_blobs:
        centres.append((shape[0] * 0.75, shape[1] * 0.3, shape[2] * 0.5))
    for c in centres:
        r = rs.uniform(5, 8, size=3)
        inside = ((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2 < 1
        lab[inside] = 1
        img[inside] += 300.0
    img[:2] = -1000.0  # some air: CT
    return img, lab


def lung_lobe_case(seed: int, shape: Sequence[int] = (128, 128, 112),
                   radius_mm: Tuple[float, float] = (35.0, 50.0),
                   mean_hu: float = -820.0) -> Tuple[np.ndarray, np.ndarray]:
    """CT phantom (as background, 1.5 mm grid) + one lung-like lobe (label 1): a large (radius drawn
    from `radius_mm`, 35-50 mm by default), dark (about `mean_hu`, -820 by default), deformed blob ->
    (image HU float32, label uint8). A `mean_hu` near soft tissue makes a lobe with a weak wall."""
    rs = np.random.default_rng(10_000 + seed)
    img, _, _ = generate_phantom(seed, shape, spacing=1.5, modality="ct")
    half = np.array(shape) * 1.5 / 2
    centre = rs.uniform(-0.2, 0.2, size=3) * half
    sdf, _, _ = random_shape(rs, "blob", centre, float(rs.uniform(*radius_mm)))
    axes = [(np.arange(n) - (n - 1) / 2) * 1.5 for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)
    inside = (sdf(torch.from_numpy(grid)) < 0).numpy()
    lobe = float(mean_hu) + rs.normal(0, 25, size=shape) + 60.0 * np.sin(grid[0] / 7.0) * np.cos(grid[1] / 9.0)
    img = np.where(inside, lobe, img).astype(np.float32)
    return img, inside.astype(np.uint8)
