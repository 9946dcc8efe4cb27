"""Uncertainty = the model's disagreement with itself when the prompt or the view is perturbed.

SAM-Med3D has no dropout, so MONAI Label's epistemic (MC-dropout) scoring does not apply. Instead,
for one prompt on one crop embedding (computed once, then reused: only the cheap decoder runs),
the decoder is run T times:

* the base include click,
* `n_jitter` include clicks jittered around it (Gaussian, `sigma` voxels of the 1.5 mm grid),
* one mirrored view per flipped axis: the embedding grid is flipped along that axis and the click
  mirrored with it; the logits are flipped back. (The encoder is not re-run: flipping the
  embedding asks the decoder the same question on a mirrored feature map, which a robust decoder
  answers consistently.)

The score is 1 - mean pairwise Dice between the T masks (low-res logits > 0, 32^3: the masks the
user would see): 0 when every perturbation gives the same mask, towards 1 when they disagree.
Two empty masks agree (Dice 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..session.geometry import mirror_point

# decode(embeddings (T, C, s, s, s), coords (T, N, 3) crop voxels, labels (T, N) int64) -> logits (T, 1, L, L, L)
DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Perturbation:
    offset: Tuple[float, float, float]  # added to the click (crop voxels)
    flip: Optional[int]  # spatial axis (0, 1, 2) of the crop that is mirrored, or None


def make_perturbations(n_jitter: int = 4, sigma: float = 3.0, flips: Sequence[int] = (0, 1, 2),
                       seed: int = 0) -> List[Perturbation]:
    """Base + jittered clicks + flipped views; deterministic for a seed (scores are comparable
    across volumes and runs)."""
    rs = np.random.default_rng(seed)
    out = [Perturbation((0.0, 0.0, 0.0), None)]
    for _ in range(int(n_jitter)):
        out.append(Perturbation(tuple(float(x) for x in rs.normal(0.0, sigma, size=3)), None))
    for axis in flips:
        out.append(Perturbation((0.0, 0.0, 0.0), int(axis)))
    return out


def perturbed_inputs(embedding: torch.Tensor, point: Sequence[float], perturbations: Sequence[Perturbation],
                     crop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch the decoder inputs for every perturbation of one include click.

    Args:
        embedding: (1, C, s, s, s) crop embedding; point: click in crop voxel coordinates.
    Returns:
        embeddings (T, C, s, s, s), coords (T, 1, 3) float32, labels (T, 1) int64.
    """
    embs, coords = [], []
    p = np.asarray(point, dtype=np.float64)
    for pert in perturbations:
        c = np.clip(p + np.asarray(pert.offset), 0.0, crop - 1.0)
        e = embedding[0]
        if pert.flip is not None:
            e = e.flip(pert.flip + 1)  # (C, s, s, s): spatial axis a is tensor dim a + 1
            c = mirror_point(c, pert.flip, crop)
        embs.append(e)
        coords.append(c)
    emb = torch.stack(embs)
    coords_t = torch.tensor(np.array(coords)[:, None, :], dtype=torch.float32, device=emb.device)
    labels = torch.ones((len(perturbations), 1), dtype=torch.int64, device=emb.device)
    return emb, coords_t, labels


def unflip(logits: torch.Tensor, perturbations: Sequence[Perturbation]) -> torch.Tensor:
    """(T, 1, L, L, L) logits -> the same with every flipped view mirrored back."""
    out = []
    for i, pert in enumerate(perturbations):
        x = logits[i]
        out.append(x.flip(pert.flip + 1) if pert.flip is not None else x)
    return torch.stack(out)


def disagreement(masks: torch.Tensor) -> float:
    """1 - mean pairwise Dice of (T, ...) masks (bool, or probabilities thresholded at 0.5); 0 = all agree."""
    t = masks.shape[0]
    if t < 2:
        return 0.0
    p = (masks.reshape(t, -1).float() > 0.5).float()
    inter = p @ p.T  # (T, T) sum of products
    sums = p.sum(1)
    denom = sums[:, None] + sums[None, :]
    dice = torch.where(denom > 1e-6, 2 * inter / denom.clamp_min(1e-6), torch.ones_like(denom))
    iu = torch.triu_indices(t, t, offset=1)
    return float(1.0 - dice[iu[0], iu[1]].mean())


def point_uncertainty(decode: DecodeFn, embedding: torch.Tensor, point: Sequence[float], crop: int,
                      perturbations: Sequence[Perturbation]) -> float:
    """Disagreement of the decoder over `perturbations` of one include click on one embedding."""
    emb, coords, labels = perturbed_inputs(embedding, point, perturbations, crop)
    with torch.inference_mode():
        logits = decode(emb, coords, labels)
    return disagreement(unflip(logits.float(), perturbations) > 0)


def model_decoder(model) -> DecodeFn:
    """DecodeFn for a bare lib.model Sam3D: first-click decode (zero previous logits, as the session).
    For offline simulations without an engine (sim_train.py); the server's scoring decodes through
    its engine instead (SegmentationEngine.decode_first_clicks: same numbers, the engine's lock and
    CUDA-graph runner)."""

    def decode(emb, coords, labels):
        n = model.image_size // 4
        zeros = torch.zeros((emb.shape[0], 1, n, n, n), dtype=torch.float32, device=emb.device)
        return model.decode(emb, coords, labels, zeros)

    return decode
