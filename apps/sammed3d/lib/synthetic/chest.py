"""A synthetic chest CT with two lungs full of vessels, acquired with thick slices (a development case).

Why: the first click on a real lung (the sample chest CT, 3 x 3 x 10 mm) is where the default model is
weakest, and no development case had what makes a lung hard for a geodesic region: a large dark
structure crossed by a tree of bright vessels, walled by ribs, heart and soft tissue, seen through
10 mm slices. This phantom has those properties and perfect labels; it is used to tune the default
model's prior (never to train it) and is never counted as a test case.

    image, labels, spacing = chest_case(seed)   # HU float32 (z, y, x), uint8 labels, (z, y, x) mm
    labels: 1 right lung, 2 left lung (vessels inside a lung belong to it), 3 heart

Built on a 1.5 mm grid (axis 0 cranio-caudal, 1 anterior-posterior, 2 right-left), then "acquired":
a Gaussian slice profile along z and in-plane blur, resampled to `spacing`, plus noise.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .phantoms import _grid, _sub_box, gaussian_blur
from .shapes import FourierField, _deformed, _ellipsoid, _tube_sdf

CHEST_LABELS = {"right lung": 1, "left lung": 2, "heart": 3}
_FINE = 1.5  # mm, the construction grid


def _vessel_tree(rs: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float,
                 depth: int) -> list:
    """Polylines (points (K, 3) mm, radii (K,)) of a random branching tree from `root`."""
    pts = [root]
    d = direction / np.linalg.norm(direction)
    for _ in range(4):
        d = d + rs.normal(0, 0.25, 3)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + d * rs.uniform(8.0, 16.0))
    pts = np.array(pts)
    radii = np.linspace(radius, radius * 0.7, len(pts))
    out = [(pts, radii)]
    if depth > 0:
        for _ in range(int(rs.integers(2, 4))):
            nd = d + rs.normal(0, 0.6, 3)
            out += _vessel_tree(rs, pts[-1], nd, max(0.8, radius * 0.65), depth - 1)
    return out


def chest_case(seed: int, spacing: Sequence[float] = (10.0, 3.0, 3.0),
               shape_mm: Sequence[float] = (270.0, 240.0, 330.0)) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
    """See the module doc. Deterministic in `seed`."""
    rs = np.random.default_rng(20_000 + seed)
    shape = [int(round(s / _FINE)) for s in shape_mm]
    P = _grid(shape, _FINE, "cpu")  # (3, D, H, W) mm, centred
    z, y, x = P[0], P[1], P[2]
    a_y, a_x = rs.uniform(95, 112), rs.uniform(145, 160)  # body: an elliptic cylinder
    body_r = torch.sqrt((y / a_y) ** 2 + (x / a_x) ** 2)
    img = torch.full(shape, -1000.0)
    img[body_r < 1.0] = -100.0  # subcutaneous fat
    inner = body_r < 1.0 - rs.uniform(0.08, 0.14)
    img[inner] = 40.0 + 15.0 * FourierField(rs, 6, (20.0, 60.0))(P)[inner]

    lungs = []
    for side in (-1, 1):  # -1: the patient's right (x < 0 here)
        centre = np.array([rs.uniform(0, 20), rs.uniform(-5, 10), side * rs.uniform(62, 75)])
        radii = np.array([rs.uniform(105, 120), rs.uniform(70, 80), rs.uniform(48, 58)])
        base = _ellipsoid(centre, radii, np.eye(3))
        sdf = _deformed(base, FourierField(rs, 6, (60.0, 160.0)), rs.uniform(4.0, 8.0))
        inside = (sdf(P) < 0) & inner & (x * side > 12)
        lungs.append(inside)
        img[inside] = -860.0 + 30.0 * FourierField(rs, 8, (6.0, 20.0))(P)[inside]
        for pts, rad in _vessel_tree(rs, np.array([centre[0] - 10, centre[1], side * 28.0]),
                                     np.array([rs.normal(0, 0.3), rs.normal(0, 0.3), side * 1.0]),
                                     rs.uniform(4.0, 5.5), depth=3):
            lo, hi = pts.min(0), pts.max(0)  # a tube's SDF only in a box around it (the full grid: minutes)
            box = _sub_box((lo + hi) / 2, float((hi - lo).max()) / 2 + float(rad.max()) + 2.0, shape, _FINE)
            if box is None:
                continue
            vessel = (_tube_sdf(pts, rad)(P[(slice(None), *box)]) < 0) & inside[box]
            img[box][vessel] = 40.0
    heart_c = np.array([rs.uniform(-40, -20), rs.uniform(-45, -25), rs.uniform(-25, -5)])
    heart = (_ellipsoid(heart_c, np.array([55.0, 50.0, 60.0]) * rs.uniform(0.85, 1.05, 3), np.eye(3))(P) < 0) & inner
    img[heart] = 45.0 + 8.0 * FourierField(rs, 4, (15.0, 40.0))(P)[heart]
    spine = (torch.sqrt((y - a_y * 0.72) ** 2 + x ** 2) < 17.0)
    img[spine] = 350.0
    for zc in np.arange(-shape_mm[0] / 2 + 15, shape_mm[0] / 2, rs.uniform(22, 28)):  # ribs: bands of a ring
        ring = (torch.abs(body_r - (1.0 - 0.2)) < 0.035) & (torch.abs(z - float(zc)) < 6.0) & (y < a_y * 0.7)
        img[ring] = 650.0
    labels = torch.zeros(shape, dtype=torch.uint8)
    labels[lungs[0]] = CHEST_LABELS["right lung"]
    labels[lungs[1]] = CHEST_LABELS["left lung"]
    labels[heart] = CHEST_LABELS["heart"]
    for lung in lungs:  # the heart and the ribs cut the lungs; what they cover is theirs
        labels[lung & (img > 300)] = 0
    return _acquire(rs, img, labels, spacing)


def _acquire(rs: np.random.Generator, img: torch.Tensor, labels: torch.Tensor,
             spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
    """Slice profile + in-plane blur, resampling to `spacing` (linear image, nearest labels), noise."""
    sigma = [0.42 * s / _FINE for s in spacing]  # FWHM ~ the slice thickness / pixel size
    blurred = gaussian_blur(img, sigma)
    out_shape = [max(1, int(round(n * _FINE / s))) for n, s in zip(img.shape, spacing)]
    small = F.interpolate(blurred[None, None], size=out_shape, mode="trilinear", align_corners=False)[0, 0]
    lab = F.interpolate(labels[None, None].float(), size=out_shape, mode="nearest")[0, 0]
    small = small + torch.from_numpy(rs.normal(0, 12.0, out_shape).astype(np.float32))
    return small.numpy().astype(np.float32), lab.numpy().astype(np.uint8), tuple(float(s) for s in spacing)
