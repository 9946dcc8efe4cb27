"""DiceCE loss with sigmoid, as MONAI's DiceCELoss(sigmoid=True) computes it (monai is not available
on the GPU training box, so it is written here in torch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (per item and channel, then averaged) + mean binary cross-entropy.

    Args:
        logits: (B, C, D, H, W) raw logits (any float dtype; computed in float32).
        target: same shape, 0/1.
    Returns:
        scalar loss = (1 - dice) + bce, with MONAI's smoothing (1e-5 in numerator and denominator).
    """
    logits = logits.float()
    target = target.float()
    prob = torch.sigmoid(logits)
    dims = tuple(range(2, logits.dim()))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return dice.mean() + bce


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per item of boolean (B, ...) tensors -> (B,); 1.0 when both are empty."""
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    inter = (p & t).sum(1).float()
    total = p.sum(1).float() + t.sum(1).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
