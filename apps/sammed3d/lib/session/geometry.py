"""The model grid: the volume reoriented to RAS and resampled to 1.5 mm, and maps into it.

SAM-Med3D was trained on volumes reoriented to the closest RAS orientation (a signed axis
permutation, as nibabel/torchio `ToCanonical` and MONAI `Orientation("RAS")` do: oblique volumes
stay oblique) and resampled to 1.5 mm isotropic. We never materialise that whole volume: the grid
is described here and each 128^3 crop is resampled straight from the original image onto its part
of the grid (see preprocess.py), which gives the same voxels as resample-then-crop.

Because the model grid's axes are the original axes permuted/flipped, the map from stored index
(i, j, k) to model-grid index (u, v, w) is axis-separable: u_r = scale_r * idx[src_r] + offset_r.
Paste-back relies on that to stay cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from nibabel.orientations import io_orientation

from .io import LPS_TO_RAS, sitk_affine_ras

TARGET_SPACING = 1.5  # mm, the released model's training resolution


@dataclass(frozen=True)
class ModelGrid:
    """RAS-ordered 1.5 mm grid covering the volume's field of view.

    origin/direction are ITK (LPS) so SimpleITK can resample onto it; index (u, v, w) runs along
    R, A, S (axis 0 increases towards the patient's right ... in RAS terms: towards +R).
    """

    origin: Tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    direction: Tuple[float, ...]  # 9 values, row-major 3x3, columns are the axis directions (LPS)
    spacing: float
    size: Tuple[int, int, int]
    src_axis: Tuple[int, int, int]  # model axis r takes stored axis src_axis[r]
    scale: Tuple[float, float, float]  # d u_r / d idx[src_axis[r]] (negative when flipped)
    offset: Tuple[float, float, float]  # u_r = scale_r * idx[src_axis[r]] + offset_r

    def stored_to_grid(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) stored indices -> (N, 3) continuous model-grid indices (u, v, w)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(points)
        for r in range(3):
            out[:, r] = self.scale[r] * points[:, self.src_axis[r]] + self.offset[r]
        return out

    def crop_origin_lps(self, crop_origin: Tuple[int, int, int]) -> Tuple[float, float, float]:
        """LPS position of the centre of model-grid voxel `crop_origin` (a crop's first voxel)."""
        d = np.array(self.direction).reshape(3, 3)
        return tuple(float(x) for x in np.array(self.origin) + d @ (np.array(crop_origin, float) * self.spacing))


def model_grid(image: sitk.Image, spacing: float = TARGET_SPACING) -> ModelGrid:
    """Build the RAS 1.5 mm grid for `image` (3D).

    Field of view: the new grid's outer voxel edges coincide with the original's at the low end
    of every axis and extend to ceil(extent / spacing) voxels, so no original voxel is lost.
    """
    ras = sitk_affine_ras(image)
    # ornt[i] = (ras_axis, +-1) for stored axis i; robust to obliquity (closest axis wins).
    ornt = io_orientation(ras)
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # LPS, columns = axes
    sp = np.array(image.GetSpacing(), dtype=np.float64)
    n = np.array(image.GetSize())
    src = [0, 0, 0]
    flip = [1.0, 1.0, 1.0]
    for i in range(3):
        src[int(ornt[i, 0])] = i
        flip[int(ornt[i, 0])] = float(ornt[i, 1])
    new_dir = np.stack([flip[r] * d[:, src[r]] for r in range(3)], axis=1)
    # Corner of the FOV (voxel edge) where every new axis starts: the low edge of a kept axis,
    # the high edge of a flipped one.
    corner_idx = np.array([-0.5 if flip[r_of(i, src)] > 0 else n[i] - 0.5 for i in range(3)])
    corner = np.array(image.GetOrigin()) + d @ (sp * corner_idx)
    # -1e-3: float32 header spacings (0.6 -> 0.60000002) must not add a voxel of padding.
    size = [max(1, int(np.ceil(n[src[r]] * sp[src[r]] / spacing - 1e-3))) for r in range(3)]
    origin = corner + new_dir @ np.full(3, spacing / 2.0)
    # stored index -> LPS -> grid index; all linear, computed with full matrices then split
    # into the per-axis form (the off-axis terms vanish up to rounding by construction).
    idx_to_lps = np.eye(4)
    idx_to_lps[:3, :3] = d * sp[None, :]
    idx_to_lps[:3, 3] = image.GetOrigin()
    grid_to_lps = np.eye(4)
    grid_to_lps[:3, :3] = new_dir * spacing
    grid_to_lps[:3, 3] = origin
    m = np.linalg.inv(grid_to_lps) @ idx_to_lps
    scale = tuple(float(m[r, src[r]]) for r in range(3))
    off_axis = m[:3, :3].copy()
    for r in range(3):
        off_axis[r, src[r]] = 0.0
    assert np.abs(off_axis).max() < 1e-6 * max(1.0, np.abs(m[:3, :3]).max()), "model grid not axis-aligned"
    return ModelGrid(
        origin=tuple(float(x) for x in origin),
        direction=tuple(float(x) for x in new_dir.ravel()),
        spacing=float(spacing),
        size=tuple(int(s) for s in size),
        src_axis=tuple(src),
        scale=scale,
        offset=tuple(float(m[r, 3]) for r in range(3)),
    )


def r_of(i: int, src) -> int:
    """Model axis that takes stored axis i."""
    return list(src).index(i)


def grid_affine_ras(grid: ModelGrid) -> np.ndarray:
    """(4, 4) RAS affine of the model grid (for debugging and tests)."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(grid.direction).reshape(3, 3) * grid.spacing
    lps[:3, 3] = grid.origin
    return LPS_TO_RAS @ lps


# ---------------------------------------------------------------------- stored index <-> RAS world
def stored_to_ras(points, affine: np.ndarray) -> np.ndarray:
    """(3,) or (N, 3) stored voxel indices -> RAS mm through a (4, 4) RAS affine."""
    a = np.asarray(affine)
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        return a[:3, :3] @ p + a[:3, 3]
    return p @ a[:3, :3].T + a[:3, 3]


def ras_to_stored(ras, affine: np.ndarray) -> np.ndarray:
    """(3,) RAS mm -> continuous stored voxel index (the inverse of stored_to_ras)."""
    a = np.asarray(affine, dtype=np.float64)
    return np.linalg.solve(a[:3, :3], ras - a[:3, 3])


def ras_box(shape, affine: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(min, max) RAS corner of the volume's field of view (voxel edges)."""
    n = np.asarray(shape, dtype=np.float64)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)])
    ras = stored_to_ras(corners, affine)
    return ras.min(0), ras.max(0)


def mirror_point(point, axis: int, size: float) -> np.ndarray:
    """A continuous voxel coordinate mirrored along `axis` of a grid `size` voxels long (a copy):
    where the point lands when the grid is flipped along that axis."""
    c = np.array(point, dtype=np.float64)
    c[axis] = (size - 1.0) - c[axis]
    return c
