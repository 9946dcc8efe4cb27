"""Random 3D shapes as approximate signed distance functions (mm, negative inside).

Used by `phantoms.py` and `kinds.py`. Every shape is a pure function of a numpy Generator (parameters) and the
coordinates it is evaluated at, so a phantom is the same whichever device or sub-box it is evaluated
on. Coordinates are tensors P of shape (3, d, h, w) in mm, axis order = array axis order.

Random smooth fields are sums of a few random Fourier modes rather than upsampled noise grids: they
are smooth everywhere (no trilinear creases) and can be evaluated on any sub-box of the volume.
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import torch

Sdf = Callable[[torch.Tensor], torch.Tensor]  # P (3, d, h, w) mm -> (d, h, w) signed distance mm

SHAPE_KINDS = ("ellipsoid", "blob", "lobulated", "shell", "tube", "irregular")


def random_rotation(rs: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rs.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class FourierField:
    """Smooth random scalar field: sum of `n_modes` cosines with wavelengths in [lo, hi] mm.

    Normalised to unit variance (each mode has variance a^2 / 2 with a = sqrt(2 / n)).
    """

    def __init__(self, rs: np.random.Generator, n_modes: int, wavelength: Tuple[float, float]):
        dirs = rs.standard_normal((n_modes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rs.uniform(wavelength[0], wavelength[1], size=(n_modes, 1))
        self.k = (2 * np.pi / lam * dirs).astype(np.float32)  # (n, 3) rad / mm
        self.phase = rs.uniform(0, 2 * np.pi, size=n_modes).astype(np.float32)
        self.amp = float(np.sqrt(2.0 / n_modes))

    def __call__(self, P: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(P.shape[1:], dtype=P.dtype, device=P.device)
        for (kz, ky, kx), ph in zip(self.k.tolist(), self.phase.tolist()):
            out += torch.cos(kz * P[0] + ky * P[1] + kx * P[2] + ph)
        return out * self.amp


class VectorField:
    """Smooth random displacement field (3 independent FourierFields) scaled to `amp` mm."""

    def __init__(self, rs: np.random.Generator, amp: float, wavelength: Tuple[float, float], n_modes: int = 6):
        self.fields = [FourierField(rs, n_modes, wavelength) for _ in range(3)]
        self.amp = amp

    def __call__(self, P: torch.Tensor) -> torch.Tensor:
        return torch.stack([f(P) for f in self.fields]) * self.amp


def _ellipsoid(centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> Sdf:
    """Approximate SDF of an ellipsoid: (|R^T (P - c) / radii| - 1) * min radius."""
    c = torch.as_tensor(centre, dtype=torch.float32)
    r = torch.as_tensor(radii, dtype=torch.float32)
    rt = torch.as_tensor(rot.T, dtype=torch.float32)
    scale = float(radii.min())

    def sdf(P: torch.Tensor) -> torch.Tensor:
        d = P - c.to(P.device).view(3, 1, 1, 1)
        q = torch.einsum("ij,j...->i...", rt.to(P.device), d) / r.to(P.device).view(3, 1, 1, 1)
        return (q.norm(dim=0) - 1.0) * scale

    return sdf


def _deformed(base: Sdf, field: FourierField, amp_mm: float) -> Sdf:
    """Perturb a level set by a smooth field: lumpy surfaces, still one piece for small amp."""
    return lambda P: base(P) + amp_mm * field(P)


def _tube_sdf(points: np.ndarray, radii: np.ndarray) -> Sdf:
    """Distance to a polyline minus a radius interpolated along each segment (tapering tube)."""
    a_all = torch.as_tensor(points[:-1], dtype=torch.float32)
    b_all = torch.as_tensor(points[1:], dtype=torch.float32)
    ra, rb = radii[:-1].tolist(), radii[1:].tolist()

    def sdf(P: torch.Tensor) -> torch.Tensor:
        best = None
        for i in range(len(ra)):
            a = a_all[i].to(P.device).view(3, 1, 1, 1)
            ab = (b_all[i] - a_all[i]).to(P.device).view(3, 1, 1, 1)
            t = (((P - a) * ab).sum(0) / (ab * ab).sum().clamp_min(1e-6)).clamp(0, 1)
            d = (P - a - t * ab).norm(dim=0) - (ra[i] + t * (rb[i] - ra[i]))
            best = d if best is None else torch.minimum(best, d)
        return best

    return sdf


def random_shape(rs: np.random.Generator, kind: str, centre: np.ndarray, size_mm: float):
    """Build one random shape.

    Args:
        kind: one of SHAPE_KINDS.
        centre: (3,) mm.
        size_mm: typical radius in mm (tubes use it as half-length).

    Returns:
        (sdf, extent_mm, interior_sdf or None). `extent_mm` bounds the distance of any inside point
        from `centre` (used to evaluate the SDF only in a sub-box). `interior_sdf` is the cavity of a
        shell (painted with its own intensity but not labelled).
    """
    rot = random_rotation(rs)
    if kind in ("ellipsoid", "blob", "shell"):
        radii = size_mm * rs.uniform(0.45, 1.0, size=3)
        radii[rs.integers(3)] = size_mm  # largest axis = size_mm
        base = _ellipsoid(centre, radii, rot)
        if kind == "ellipsoid":
            return base, size_mm * 1.05, None
        if kind == "blob":
            amp = radii.min() * rs.uniform(0.15, 0.35)
            field = FourierField(rs, 8, (0.8 * size_mm, 3.0 * size_mm))
            return _deformed(base, field, amp), size_mm + 2 * amp, None
        thick = float(min(rs.uniform(2.0, 6.0), 0.4 * radii.min()))
        shell = lambda P: (base(P) + thick / 2).abs() - thick / 2  # noqa: E731
        cavity = lambda P: base(P) + thick  # noqa: E731
        return shell, size_mm * 1.05, cavity
    if kind == "lobulated":
        n = int(rs.integers(3, 7))
        offs = rs.standard_normal((n, 3)) * 0.45 * size_mm
        rads = size_mm * rs.uniform(0.35, 0.7, size=n)
        spheres = [_ellipsoid(centre + o, np.full(3, r), np.eye(3)) for o, r in zip(offs, rads)]
        field = FourierField(rs, 6, (0.5 * size_mm, 2.0 * size_mm))
        amp = 0.08 * size_mm

        def sdf(P: torch.Tensor) -> torch.Tensor:
            d = spheres[0](P)
            for s in spheres[1:]:
                d = torch.minimum(d, s(P))
            return d + amp * field(P)

        extent = float(np.max(np.linalg.norm(offs, axis=1) + rads)) + 2 * amp
        return sdf, extent, None
    if kind == "tube":
        n = 16
        s = np.linspace(-1.0, 1.0, n)[:, None]
        axis = rot[:, 0]
        bend = sum(
            rs.uniform(0.1, 0.4) * size_mm * np.sin(k * np.pi * s / 2 + rs.uniform(0, 2 * np.pi)) * rot[:, j]
            for k, j in ((1, 1), (2, 2), (3, 1))
        )
        pts = centre + s * size_mm * axis + bend
        r0 = rs.uniform(1.5, 6.0)
        radii = r0 * np.linspace(1.0, rs.uniform(0.5, 1.2), n)
        extent = float(np.max(np.linalg.norm(pts - centre, axis=1)) + radii.max())
        return _tube_sdf(pts, radii), extent, None
    if kind == "irregular":
        base = _ellipsoid(centre, size_mm * rs.uniform(0.6, 1.0, size=3), rot)
        f1 = FourierField(rs, 8, (1.0 * size_mm, 3.0 * size_mm))
        f2 = FourierField(rs, 8, (0.3 * size_mm, 0.8 * size_mm))
        a1, a2 = 0.3 * size_mm, 0.1 * size_mm
        return (lambda P: base(P) + a1 * f1(P) + a2 * f2(P)), size_mm + 2 * (a1 + a2), None
    raise ValueError(f"unknown shape kind {kind!r}")
