"""The training click rule (SAM-Med3D's training recipe): one click per crop drawn uniformly from the
error region, labelled 1 for a false negative and 0 for a false positive (batched torch; used by
lib.training.recipe's click chain).

The evaluation rule (centre of the largest error region, the simulated annotator) is
lib.evaluation.clicks. Pure torch: this module must run on the GPU training box, which has no monai.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def sample_click_uniform(
    pred: torch.Tensor, gt: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training click: per batch item one voxel drawn uniformly from the error region.

    Args:
        pred: (B, 1, D, H, W) or (B, D, H, W) bool -- current binary prediction.
        gt:   same shape, bool -- target.
        generator: torch.Generator on pred's device (None: global RNG).

    Returns:
        coords: (B, 1, 3) float32 voxel indices (axis order D, H, W) on pred's device.
        labels: (B, 1) int64: 1 where the click is a false negative (or a fallback inside gt),
                0 for a false positive (or a fallback outside gt).

    When an item has no error, the click is a random voxel inside gt labelled 1, or, with an empty
    gt, a random voxel anywhere labelled 0. Vectorised (random scores + argmax) so it runs on the
    GPU without a host sync per item; boolean ops and one shifted add instead of nested where()s,
    since the trainer calls this up to 11 times per step.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if pred.dim() == 5:
        if pred.shape[1] != 1:
            raise ValueError("expected a single channel")
        pred, gt = pred[:, 0], gt[:, 0]
    if pred.dim() != 4:
        raise ValueError(f"expected (B,[1,]D,H,W), got {tuple(pred.shape)}")
    b, spatial = pred.shape[0], pred.shape[1:]
    pred = pred.reshape(b, -1).bool()
    gt = gt.reshape(b, -1).bool()
    err = pred ^ gt
    has_err = err.any(dim=1, keepdim=True)
    has_gt = gt.any(dim=1, keepdim=True)
    # candidates: the error region; without error, gt; with an empty gt too, everywhere
    others = ~err & (has_err | ~(gt | ~has_gt))
    scores = torch.rand(pred.shape, generator=generator, device=pred.device)
    # Non-candidates move to [-2, -1), so argmax only picks candidates; rand is in [0, 1), so each
    # candidate is equally likely to be the maximum (adding to the candidates instead would round
    # ties into them).
    flat = torch.add(scores, others, alpha=-2.0).argmax(dim=1)  # (B,)
    labels = gt.gather(1, flat[:, None]).long()  # (B, 1): FN -> 1, FP -> 0, fallbacks likewise
    _, h, w = spatial
    coords = torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=1).float()[:, None, :]  # (B, 1, 3)
    return coords, labels
