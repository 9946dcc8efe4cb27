"""Synthetic 3D phantoms with perfect labels: training data for the embedded default model and an
active-learning pool that costs nothing to ship.

A phantom is a "body" (deformed ellipsoid of tissue in air) holding several labelled objects of
random kinds (ellipsoids, deformed blobs, lobulated shapes, shells with a cavity, curved tapering
tubes, irregular organ-like shapes), painted in order so later objects occlude earlier ones. Each
object is brighter or darker than what surrounds it, with its own smooth texture. A random
"scanner" then applies blur (partial volume), an MR bias field, Gaussian (CT) or Rician (MR) noise
and, sometimes, thick slices along one axis (a thick-slice scan resampled to the 1.5 mm grid).

Intensities: CT phantoms are in Hounsfield units (air -1000, fat about -100, soft tissue 20-80,
bone up to 1500); MR phantoms are positive with an arbitrary global scale.

Deterministic: the same (seed, shape, spacing, device) gives the same volume. All parameters and
smooth fields come from a numpy Generator; only the full-resolution noise uses a torch Generator on
the target device, so CPU and CUDA phantoms differ only in their noise.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .shapes import SHAPE_KINDS, FourierField, VectorField, random_shape

# (low, high) HU of tissue classes an object or body can be made of.
_CT_CLASSES = ((-950.0, -600.0), (-150.0, -60.0), (10.0, 90.0), (100.0, 350.0), (350.0, 1500.0))
_CT_BODY = (-120.0, 60.0)


def _grid(shape: Sequence[int], spacing: float, device) -> torch.Tensor:
    """(3, D, H, W) coordinates in mm, origin at the volume centre."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * spacing for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def gaussian_blur(vol: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of a (D, H, W) tensor; sigma per axis in voxels (0 = none)."""
    x = vol[None, None]
    for axis, s in enumerate(sigma):
        if s < 0.2:
            continue
        r = int(math.ceil(3 * s))
        t = torch.arange(-r, r + 1, dtype=vol.dtype, device=vol.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = (k / k.sum()).view([1, 1] + [len(t) if a == axis else 1 for a in range(3)])
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad lists the last axis first
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k)
    return x[0, 0]


def thick_slices(vol: torch.Tensor, axis: int, factor: int) -> torch.Tensor:
    """Average `factor` slices along `axis` then resample back linearly: a thick-slice acquisition."""
    x = vol.movedim(axis, -1)[None]  # (1, A, B, N)
    n = x.shape[-1]
    pooled = F.avg_pool1d(x.reshape(1, -1, n), factor, ceil_mode=True)
    up = F.interpolate(pooled, size=n, mode="linear", align_corners=False)
    return up.reshape(x.shape)[0].movedim(-1, axis)


def _object_intensity(rs: np.random.Generator, modality: str, bg: float, noise: float) -> float:
    """Mean intensity of an object, different enough from its background `bg` to be visible.

    Contrast-to-noise ratios down to about 1.2 are allowed on purpose: low-contrast organs exist.
    """
    for _ in range(20):
        if modality == "ct":
            lo, hi = _CT_CLASSES[rs.integers(len(_CT_CLASSES))]
            mu = rs.uniform(lo, hi)
        else:
            mu = bg * (rs.uniform(0.15, 0.8) if rs.random() < 0.5 else rs.uniform(1.25, 3.0))
        if abs(mu - bg) >= 1.2 * noise:
            return float(mu)
    return float(bg + (3.0 if rs.random() < 0.5 else -3.0) * max(noise, 1e-3))


def _scanner(rs: np.random.Generator, modality: str, tissue: float) -> dict:
    """Random acquisition: blur (voxels), noise sd, bias amplitude, thick-slice axis/factor."""
    iso = rs.uniform(0.0, 1.2)
    return {
        "blur": [max(0.0, iso + rs.uniform(-0.2, 0.2)) for _ in range(3)],
        "noise": rs.uniform(3.0, 40.0) if modality == "ct" else tissue * rs.uniform(0.01, 0.08),
        "bias": rs.uniform(0.0, 0.4) if modality == "mr" else 0.0,
        "thick_axis": int(rs.integers(3)) if rs.random() < 0.3 else None,
        "thick_factor": int(rs.choice([2, 3, 4, 6])),
        "scale": float(10 ** rs.uniform(-1.5, 1.0)) if modality == "mr" else 1.0,
    }


def _sub_box(centre_mm: np.ndarray, extent_mm: float, shape, spacing: float):
    """Slices of the voxel box that holds a sphere (centre, extent) in the volume, or None."""
    sl = []
    for c, n in zip(centre_mm, shape):
        ci = c / spacing + (n - 1) / 2
        lo = max(0, int(math.floor(ci - extent_mm / spacing)) - 1)
        hi = min(n, int(math.ceil(ci + extent_mm / spacing)) + 2)
        if hi <= lo:
            return None
        sl.append(slice(lo, hi))
    return tuple(sl)


def generate_phantom_torch(
    seed: int,
    shape: Sequence[int] = (128, 128, 128),
    spacing: float = 1.5,
    device="cpu",
    modality: Optional[str] = None,
    n_objects: Optional[int] = None,
    min_voxels: int = 30,
) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """One random phantom on `device`.

    Args:
        seed: any int; same seed -> same phantom.
        shape: (D, H, W) voxels; spacing: isotropic voxel size in mm (objects are sized in mm).
        modality: "ct" or "mr"; None draws one.
        n_objects: number of objects (None: 3-9); about a quarter of them are unlabelled
            distractors (background structure that a click elsewhere must not pull in).
        min_voxels: objects left with fewer voxels (occluded or clipped) are removed from the label.

    Returns:
        image (D, H, W) float32, label (D, H, W) int16 with values 0..K (K objects, some values may
        be absent when removed), modality.
    """
    rs = np.random.default_rng(seed)
    modality = modality or ("ct" if rs.random() < 0.5 else "mr")
    shape = tuple(int(s) for s in shape)
    half = np.array(shape, dtype=np.float64) * spacing / 2
    grid = _grid(shape, spacing, device)
    # One smooth deformation of space for the whole phantom: no shape is a perfect primitive.
    warp = VectorField(rs, rs.uniform(0.0, 6.0), (60.0, 200.0))
    P = grid + warp(grid)

    if modality == "ct":
        air, tissue = -1000.0, rs.uniform(*_CT_BODY)
    else:
        air, tissue = 0.0, rs.uniform(150.0, 900.0)
    scan = _scanner(rs, modality, tissue)
    # The body: usually larger than the field of view, sometimes with its edge (air) visible.
    body_r = half * rs.uniform(0.7, 1.6, size=3)
    body_c = rs.uniform(-0.2, 0.2, size=3) * half
    q = (P - torch.as_tensor(body_c, dtype=torch.float32, device=device).view(3, 1, 1, 1)) / torch.as_tensor(
        body_r, dtype=torch.float32, device=device
    ).view(3, 1, 1, 1)
    body = q.norm(dim=0) < 1.0
    texture = FourierField(rs, 12, (8.0, 60.0))(P)
    tex_amp = rs.uniform(0.0, 1.5) * scan["noise"] if modality == "ct" else tissue * rs.uniform(0.0, 0.08)
    image = torch.where(body, tissue + tex_amp * texture, torch.full_like(texture, air))
    label = torch.zeros(shape, dtype=torch.int16, device=device)

    n_obj = int(n_objects if n_objects is not None else rs.integers(3, 10))
    for k in range(1, n_obj + 1):
        kind = SHAPE_KINDS[rs.integers(len(SHAPE_KINDS))]
        size = float(np.exp(rs.uniform(np.log(5.0), np.log(70.0))))
        if kind == "tube":
            size = rs.uniform(20.0, 70.0)
        centre = rs.uniform(-0.75, 0.75, size=3) * half
        sdf, extent, cavity = random_shape(rs, kind, centre, size)
        mu = _object_intensity(rs, modality, tissue, scan["noise"])
        obj_tex = FourierField(rs, 8, (3.0, 3.0 * size))
        obj_tex_amp = abs(mu - tissue) * rs.uniform(0.0, 0.25)
        cav_mu = _object_intensity(rs, modality, mu, scan["noise"]) if cavity is not None else None
        labelled = k == 1 or rs.random() < 0.75
        box = _sub_box(centre, extent, shape, spacing)
        if box is None:
            continue
        Pb = P[(slice(None),) + box]
        inside = sdf(Pb) < 0
        vals = mu + obj_tex_amp * obj_tex(Pb)
        image[box] = torch.where(inside, vals, image[box])
        label[box] = torch.where(inside, torch.full_like(label[box], k if labelled else 0), label[box])
        if cavity is not None:
            hole = cavity(Pb) < 0
            image[box] = torch.where(hole, torch.full_like(vals, cav_mu), image[box])
    for k in range(1, n_obj + 1):
        if int((label == k).sum()) < min_voxels:
            label[label == k] = 0

    image = gaussian_blur(image, scan["blur"])
    if scan["bias"] > 0:
        image = image * torch.exp(scan["bias"] * FourierField(rs, 4, (150.0, 400.0))(grid))
    gen = torch.Generator(device=device).manual_seed(int(rs.integers(2**62)))
    n1 = torch.randn(shape, generator=gen, device=device) * scan["noise"]
    if modality == "ct":
        image = image + n1
    else:  # Rician magnitude noise: background is small and positive, as in real MR
        n2 = torch.randn(shape, generator=gen, device=device) * scan["noise"]
        image = torch.sqrt((image + n1) ** 2 + n2**2)
    if scan["thick_axis"] is not None:
        image = thick_slices(image, scan["thick_axis"], scan["thick_factor"])
    image = image * scan["scale"]
    return image.float(), label, modality


def generate_phantom(seed: int, shape: Sequence[int] = (128, 128, 128), spacing: float = 1.5, **kw):
    """numpy form of `generate_phantom_torch` on CPU: (image float32, label int16, modality)."""
    image, label, modality = generate_phantom_torch(seed, shape, spacing, device="cpu", **kw)
    return image.numpy(), label.numpy(), modality
