"""Four kinds of synthetic volume (scanner x contrast x object type), for the active-learning simulation.

128^3 volumes on the model's 1.5 mm grid (the model's crop), each with one target structure near
the centre (N(0, 12 mm) offset: a consistent location, as an organ has), 2-3 distractor
structures, a body, texture, blur and noise. The kinds differ in what a model must generalise over:
CT or MR, bright or dark target, smooth or irregular shape, thin or thick slices.
"""
from __future__ import annotations

import numpy as np
import torch

from .phantoms import gaussian_blur, thick_slices  # the phantoms' scanner effects
from .shapes import FourierField, VectorField, random_shape

S = 128  # crop edge = volume edge (volumes are generated on the model grid)
SPACING = 1.5

# kind -> (modality, object shapes, contrast, noise range, bias amplitude, thick-slice factor)
KINDS = {
    "ct_bright_blob": ("ct", ("ellipsoid", "blob"), "bright", (5.0, 15.0), 0.0, 0),  # the common kind
    "mr_dark_blob": ("mr", ("ellipsoid", "blob"), "dark", (0.03, 0.06), 0.4, 0),
    "ct_dark_lobulated": ("ct", ("lobulated", "ellipsoid"), "dark", (10.0, 20.0), 0.0, 0),
    "mr_thick_irregular": ("mr", ("irregular",), "bright", (0.02, 0.05), 0.2, 4),
}
COMMON = "ct_bright_blob"


def make_volume(seed: int, kind: str):
    """-> image (S, S, S) float32 (HU for CT), target (S, S, S) bool. Deterministic per seed."""
    modality, shapes, contrast, noise_rng, bias, thick = KINDS[kind]
    rs = np.random.default_rng(seed)
    ax = (torch.arange(S, dtype=torch.float32) - (S - 1) / 2) * SPACING
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))
    P = grid + VectorField(rs, rs.uniform(0.0, 4.0), (60.0, 200.0))(grid)
    noise = rs.uniform(*noise_rng)
    if modality == "ct":
        tissue, air = rs.uniform(20.0, 60.0), -1000.0
        obj = {"bright": tissue + rs.uniform(150, 400), "low": tissue + rs.choice([-1, 1]) * rs.uniform(25, 45),
               "dark": tissue - rs.uniform(80, 150)}[contrast]
    else:
        tissue, air = rs.uniform(300.0, 600.0), 0.0
        obj = tissue * {"bright": rs.uniform(1.6, 2.5), "dark": rs.uniform(0.2, 0.45), "low": rs.uniform(1.15, 1.3)}[contrast]
        noise = noise * tissue
    body = ((P / torch.tensor([80.0, 75.0, 85.0]).view(3, 1, 1, 1) * rs.uniform(0.9, 1.1)).norm(dim=0) < 1.0)
    image = torch.where(body, tissue + 0.3 * noise * FourierField(rs, 8, (10.0, 60.0))(P), torch.full((S,) * 3, air))
    # distractors first (unlabelled structures of other kinds/contrasts), the target last (on top)
    for _ in range(int(rs.integers(2, 4))):
        c = rs.uniform(-45, 45, size=3)
        if np.linalg.norm(c) < 30:
            c = c / max(np.linalg.norm(c), 1e-6) * 35
        sdf, _, _ = random_shape(rs, ("ellipsoid", "blob", "tube")[rs.integers(3)], c, rs.uniform(10, 30))
        mu = tissue + (rs.uniform(-200, 300) if modality == "ct" else tissue * rs.uniform(-0.6, 1.0))
        image = torch.where(sdf(P) < 0, torch.full_like(image, float(mu)), image)
    centre = rs.normal(0.0, 8.0 * SPACING, size=3)
    sdf, _, cavity = random_shape(rs, shapes[rs.integers(len(shapes))], centre, rs.uniform(18.0, 36.0))
    target = sdf(P) < 0
    image = torch.where(target, obj + 0.15 * abs(obj - tissue) * FourierField(rs, 6, (5.0, 40.0))(P), image)
    if cavity is not None:
        image = torch.where(cavity(P) < 0, torch.full_like(image, float(tissue)), image)
    image = gaussian_blur(image, [rs.uniform(0.3, 1.0)] * 3)
    if bias > 0:
        image = image * torch.exp(bias * FourierField(rs, 4, (150.0, 400.0))(grid))
    gen = torch.Generator().manual_seed(int(rs.integers(2 ** 62)))
    n1 = torch.randn((S,) * 3, generator=gen) * noise
    if modality == "ct":
        image = image + n1
    else:
        image = torch.sqrt((image + n1) ** 2 + (torch.randn((S,) * 3, generator=gen) * noise) ** 2)
    if thick:
        image = thick_slices(image, int(rs.integers(3)), thick)
    return image.float(), target
