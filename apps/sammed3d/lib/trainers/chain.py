"""The learned forward pass of a fine-tuning step: [encode] + the simulated-click chain (ClickChain),
on the loss grid (loss_size^3). Imported by lib.trainers.finetune (and re-exported there)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from lib.training.loop import click_losses

from .fastchain import TrainingView


class _LossGrid:
    """Model view for click_losses on a coarser loss grid (loss_size^3 instead of 128^3).

    upsample_logits goes to loss_size; clicks drawn on that grid are mapped to crop voxel
    coordinates (voxel centres) before the decoder sees them. loss_size == crop size: the recipe.
    """

    def __init__(self, model, loss_size: int):
        self.model, self.size = model, int(loss_size)
        self.scale = model.image_size / self.size

    def decode(self, emb, coords, labels, mask_input):
        if coords is not None and self.scale != 1:
            coords = coords * self.scale + (self.scale - 1) / 2
        return self.model.decode(emb, coords, labels, mask_input)

    def upsample_logits(self, low):
        return nn.functional.interpolate(low.float(), size=(self.size,) * 3, mode="trilinear", align_corners=False)


def loss_targets(targets: torch.Tensor, loss_size: int) -> torch.Tensor:
    """(B, 1, S, S, S) 0/1 -> (B, 1, L, L, L) 0/1 by area fraction >= 0.5 (identity when L == S)."""
    if targets.shape[-1] == loss_size:
        return targets
    k = targets.shape[-1] // loss_size
    return (nn.functional.avg_pool3d(targets.float(), k) >= 0.5).float()


def resolve_loss_size(loss_size: int, device: torch.device, crop: int) -> int:
    """0 (auto): the recipe's full crop on CUDA, half of it on CPU (8x less work per click)."""
    size = loss_size or (crop if device.type == "cuda" else crop // 2)
    if size > crop or crop % size or size < 4 * 8:
        raise ValueError(f"loss_size must divide the crop size {crop} and be >= 32, got {size}")
    return size


class ClickChain(nn.Module):
    """The learned forward pass as one module (what DDP wraps): [encode] + the simulated-click chain.

    All three parts are registered (DDP syncs them at start and reduces the gradients of the
    parts that learn); the full model is held unregistered to reuse its encode/decode.
    """

    def __init__(self, model, bf16: bool, loss_size: int, fast: bool = True):
        super().__init__()
        self.loss_size = loss_size
        self.fast = fast  # TrainingView (same function, less data movement); False: Sam3D.decode + F.interpolate
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self._model = (model,)
        self.bf16 = bf16

    def forward(self, x: torch.Tensor, targets: torch.Tensor, seed: int, num_clicks: int, encode: bool):
        model = self._model[0]
        if encode:
            learns = any(p.requires_grad for p in self.image_encoder.parameters())
            with contextlib.nullcontext() if learns else torch.no_grad():
                x = model.encode(x)
        rs = np.random.default_rng(seed)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        if self.fast:
            view = TrainingView(model, self.loss_size)
        else:
            view = model if self.loss_size == model.image_size else _LossGrid(model, self.loss_size)
        return click_losses(view, x.float(), loss_targets(targets, self.loss_size), num_clicks, rs, gen, self.bf16)
