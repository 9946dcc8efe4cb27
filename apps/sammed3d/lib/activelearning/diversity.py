"""Diversity = how unlike the volumes already labelled a volume is, in the encoder's feature space.

A volume's feature vector is its crop embeddings (1, C, s, s, s) pooled over space and crops:
[mean over voxels and crops, standard deviation over voxels and crops] (2C values), then L2
normalised, so that volumes are compared by what the encoder sees, not by intensity scale.
k-center (core-set, Sener & Savarese 2018): a volume's score is its distance to the nearest
labelled (or already handed-out) volume; the greedy choice is the farthest one. With no labelled
volume yet, the score is minus the distance to the pool's mean feature: the first pick is the most
typical volume, every later one fills the biggest hole.
"""
from __future__ import annotations

import base64
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch


def pool_features(embeddings: Iterable[torch.Tensor]) -> np.ndarray:
    """Crop embeddings (each (1, C, s, s, s) or (C, s, s, s)) -> (2C,) float32 unit vector."""
    flat = [e.detach().float().reshape(e.shape[-4], -1) for e in embeddings]  # (C, s^3) each
    if not flat:
        raise ValueError("no embeddings to pool")
    x = torch.cat(flat, dim=1)
    f = torch.cat([x.mean(1), x.std(1, unbiased=False)]).cpu().numpy().astype(np.float64)
    n = np.linalg.norm(f)
    return (f / n if n > 0 else f).astype(np.float32)


def encode_feature(f: np.ndarray) -> str:
    """Compact text form for the datastore (float16, base64)."""
    return base64.b64encode(np.asarray(f, dtype=np.float16).tobytes()).decode("ascii")


def decode_feature(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s.encode("ascii")), dtype=np.float16).astype(np.float32)


def min_distances(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, D), (M, D) -> (N,) Euclidean distance of each row to its nearest centre (inf if M == 0)."""
    features = np.asarray(features, dtype=np.float64)
    if len(centres) == 0:
        return np.full(len(features), np.inf)
    centres = np.asarray(centres, dtype=np.float64)
    d2 = (features ** 2).sum(1)[:, None] + (centres ** 2).sum(1)[None, :] - 2 * features @ centres.T
    return np.sqrt(np.maximum(d2, 0.0)).min(1)


def diversity_scores(candidates: Dict[str, np.ndarray], centres: Sequence[np.ndarray],
                     pool_mean: Optional[np.ndarray] = None) -> Dict[str, float]:
    """k-center score per candidate: distance to the nearest centre; with no centre, minus the
    distance to `pool_mean` (default: the candidates' mean)."""
    ids = list(candidates)
    if not ids:
        return {}
    f = np.stack([candidates[i] for i in ids])
    if len(centres):
        d = min_distances(f, np.stack(list(centres)))
    else:
        mean = f.mean(0) if pool_mean is None else np.asarray(pool_mean)
        d = -min_distances(f, mean[None])
    return {i: float(v) for i, v in zip(ids, d)}


def kcenter_greedy(candidates: Dict[str, np.ndarray], centres: Sequence[np.ndarray], k: int) -> list:
    """k picks, each the candidate farthest from the centres plus the earlier picks."""
    centres = list(centres)
    left = dict(candidates)
    picks = []
    for _ in range(min(k, len(left))):
        scores = diversity_scores(left, centres)
        best = max(scores, key=lambda i: (scores[i], i))
        picks.append(best)
        centres.append(left.pop(best))
    return picks
