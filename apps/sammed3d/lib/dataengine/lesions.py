"""Synthetic lesions placed in real anatomical backgrounds.

Kinds (as the issue lists them): a nodule (small, bright in CT or dark/bright in MR, sharp or
spiculated edge), a tumour with an enhancing rim and surrounding oedema (brain MR), and hypo- or
hyperdense soft-tissue lesions. The shape is a randomly deformed ellipsoid; intensities are set
relative to the local background (its mean and spread), then softened by a partial-volume blur.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

KINDS = ("nodule", "rim_tumour", "hypo", "hyper")


def _deformed_ellipsoid(shape: Tuple[int, int, int], centre: np.ndarray, radii: np.ndarray,
                        rs: np.random.Generator, roughness: float) -> np.ndarray:
    """Signed-ish distance (<= 0 inside) of a randomly rotated, low-frequency deformed ellipsoid."""
    q, _ = np.linalg.qr(rs.normal(size=(3, 3)))
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre)], indexing="ij")
    p = np.stack(grids, -1) @ q.astype(np.float32)
    r = np.sqrt(((p / radii.astype(np.float32)) ** 2).sum(-1))
    if roughness > 0:
        noise = ndimage.gaussian_filter(rs.normal(size=shape).astype(np.float32), sigma=max(radii.min() / 2, 1.0))
        noise /= max(float(np.abs(noise).max()), 1e-6)
        r = r + roughness * noise
    return r - 1.0


def insert_lesion(image: np.ndarray, foreground: np.ndarray, rs: np.random.Generator,
                  is_ct: bool, kind: str = None) -> Tuple[np.ndarray, np.ndarray]:
    """Paste one synthetic lesion into a copy of `image` (D, H, W) inside `foreground`.

    Returns (new image, lesion mask bool). The mask is the lesion proper (core + rim); oedema
    changes the image around it but is not part of the target, as an annotator would draw it.
    """
    kind = kind or KINDS[int(rs.integers(len(KINDS)))]
    idx = np.argwhere(foreground)
    if len(idx) == 0:
        idx = np.argwhere(np.ones_like(foreground))
    centre = idx[rs.integers(len(idx))].astype(np.float32)
    if kind == "nodule":
        radii = rs.uniform(2.0, 7.0, 3)  # 3-10 mm at 1.5 mm
    else:
        radii = rs.uniform(4.0, 18.0, 3)
    radii = np.maximum(radii, radii.max() * 0.5)
    half = int(np.ceil(radii.max() * 2.2)) + 3
    lo = np.maximum(centre.astype(int) - half, 0)
    hi = np.minimum(centre.astype(int) + half + 1, image.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = image[sl].astype(np.float32)
    dist = _deformed_ellipsoid(sub.shape, centre - lo, radii, rs, roughness=rs.uniform(0.0, 0.5))
    lesion = dist <= 0
    if lesion.sum() < 8:
        return image, np.zeros(image.shape, bool)
    fg_sub = foreground[sl]
    bg_vals = sub[fg_sub] if fg_sub.any() else sub.reshape(-1)
    mean, spread = float(np.mean(bg_vals)), float(np.std(bg_vals)) + 1e-3
    sign = {"hypo": -1.0, "hyper": 1.0}.get(kind, 1.0 if (is_ct or rs.random() < 0.5) else -1.0)
    contrast = sign * rs.uniform(0.6, 2.0) * spread
    core_val = mean + contrast
    texture = ndimage.gaussian_filter(rs.normal(size=sub.shape).astype(np.float32), 1.0) * rs.uniform(0.05, 0.3) * spread
    new = sub.copy()
    if kind == "rim_tumour":
        rim = lesion & (dist > -rs.uniform(0.15, 0.35))
        oedema = (dist > 0) & (dist <= rs.uniform(0.3, 0.9))
        new[oedema] = new[oedema] + 0.5 * abs(contrast) * (1 if rs.random() < 0.5 else -1) * 0.6
        new[lesion] = mean - 0.5 * contrast + texture[lesion]  # necrotic core
        new[rim] = mean + 1.3 * abs(contrast) + texture[rim]  # enhancing rim
    else:
        new[lesion] = core_val + texture[lesion]
    # partial volume: blend the edited region with a blurred copy across its edge
    soft = ndimage.gaussian_filter(new, rs.uniform(0.5, 1.2))
    edge = ndimage.binary_dilation(lesion, iterations=2) & ~ndimage.binary_erosion(lesion, iterations=1)
    new[edge] = soft[edge]
    out = image.astype(np.float32, copy=True)
    out[sl] = new
    mask = np.zeros(image.shape, bool)
    mask[sl] = lesion
    return out, mask
