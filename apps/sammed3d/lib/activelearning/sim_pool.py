"""The simulation's pool: synthetic volumes of four kinds (scanner x contrast x object type).

128^3 volumes on the model's 1.5 mm grid (the model's crop), each with one target structure near
the centre (N(0, 12 mm) offset: a consistent location, as an organ has), 2-3 distractor
structures, a body, texture, blur and noise. The pool is imbalanced (most volumes are the common
kind); the held-out set has the same number of each kind. The encoder runs once per volume; the
embedding, the target and the first evaluation click are cached on disk (`cache`).
"""
from __future__ import annotations

import os
import time
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..interaction.clicks import first_click
from ..training.phantoms import _gaussian_blur, _thick_slices  # reuse the generator's scanner effects
from ..training.shapes import FourierField, VectorField, random_shape
from .diversity import pool_features

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


# ----------------------------------------------------------------------------------------- volumes
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
    image = _gaussian_blur(image, [rs.uniform(0.3, 1.0)] * 3)
    if bias > 0:
        image = image * torch.exp(bias * FourierField(rs, 4, (150.0, 400.0))(grid))
    gen = torch.Generator().manual_seed(int(rs.integers(2 ** 62)))
    n1 = torch.randn((S,) * 3, generator=gen) * noise
    if modality == "ct":
        image = image + n1
    else:
        image = torch.sqrt((image + n1) ** 2 + (torch.randn((S,) * 3, generator=gen) * noise) ** 2)
    if thick:
        image = _thick_slices(image, int(rs.integers(3)), thick)
    return image.float(), target


def normalise(image: torch.Tensor, ct: bool) -> torch.Tensor:
    from ..session.preprocess import normalise as session_normalise

    return session_normalise(image.numpy(), ct)  # the session's own model-input normalisation


# ----------------------------------------------------------------------------------------- the pool
class Volume:
    """One cached volume: embedding (1, C, 8, 8, 8), target (S, S, S) bool, its 32^3 loss-grid
    version, the first evaluation click (crop voxels), pooled features, target centroid."""

    def __init__(self, vid: str, kind: str, emb: torch.Tensor, target: torch.Tensor, click):
        self.id, self.kind, self.emb, self.target, self.click = vid, kind, emb, target, click
        self.target_low = (F.avg_pool3d(target[None, None].float(), 4) >= 0.5).float()[0]  # (1, 32, 32, 32)
        self.feature = pool_features([emb])
        self.centroid = torch.nonzero(target).float().mean(0).numpy() / (S - 1)


def pool_specs(n_pool: int, common_frac: float, n_heldout_per_kind: int, seed: int) -> List[Tuple[str, str, int]]:
    """[(id, kind, volume seed)]: the imbalanced pool, then the balanced held-out set."""
    kinds = list(KINDS)
    n_common = int(round(n_pool * common_frac))
    rare = [k for k in kinds if k != COMMON]
    pool_kinds = [COMMON] * n_common + [rare[i % len(rare)] for i in range(n_pool - n_common)]
    held_kinds = [k for k in kinds for _ in range(n_heldout_per_kind)]
    specs = [(f"pool{i:03d}", k, seed * 100_000 + i) for i, k in enumerate(pool_kinds)]
    specs += [(f"test{i:03d}", k, seed * 100_000 + 50_000 + i) for i, k in enumerate(held_kinds)]
    return specs


def build_pool(model, n_pool: int, common_frac: float, n_heldout_per_kind: int, seed: int, cache: str, log):
    """-> (pool volumes, held-out volumes); embeddings cached on disk under `cache`."""
    os.makedirs(cache, exist_ok=True)
    vols = []
    specs = pool_specs(n_pool, common_frac, n_heldout_per_kind, seed)
    t0 = time.time()
    for n, (vid, kind, s) in enumerate(specs, 1):
        path = os.path.join(cache, f"{vid}_{kind}_{s}.pt")
        if os.path.exists(path):
            d = torch.load(path)
        else:
            image, target = make_volume(s, kind)
            x = normalise(image, KINDS[kind][0] == "ct")
            with torch.inference_mode():
                emb = model.encode(x).float()
            d = {"emb": emb.clone(), "target": target.clone(), "click": list(first_click(target.numpy())[0])}
            torch.save(d, path)
        vols.append(Volume(vid, kind, d["emb"], d["target"], d["click"]))
        if n % 10 == 0 or n == len(specs):
            log(f"pool: {n}/{len(specs)} volumes ready ({time.time() - t0:.0f} s)")
    return [v for v in vols if v.id.startswith("pool")], [v for v in vols if v.id.startswith("test")]
