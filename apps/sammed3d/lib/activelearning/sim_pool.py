"""The simulation's pool: synthetic volumes of four kinds (lib.synthetic.kinds: scanner x contrast x
object type), 128^3 on the model's 1.5 mm grid.

The pool is imbalanced (most volumes are the common kind); the held-out set has the same number of
each kind. The encoder runs once per volume; the embedding, the target and the first evaluation
click are cached on disk (`cache`).
"""
from __future__ import annotations

import os
import time
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..evaluation.clicks import first_click
from ..session.preprocess import normalise as session_normalise
from ..synthetic.kinds import COMMON, KINDS, S, make_volume
from .diversity import pool_features

__all__ = ["KINDS", "S", "Volume", "build_pool", "normalise", "pool_specs"]


def normalise(image: torch.Tensor, ct: bool) -> torch.Tensor:
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
