"""The SAM-Med3D training recipe, shared by every training path: the optimiser and one step.

Used by from-scratch training (lib.training.loop, scripts/train_default_model.py), the fine-tuning
task (lib.trainers.finetune) and the active-learning simulation (lib.activelearning.sim_train).
It touches a model only through the Sam3D interface (image_encoder, prompt_encoder, mask_decoder;
encode, decode, upsample_logits, image_size), so any model with that interface trains with it.

    opts = RecipeOptions(lr=8e-4)
    set_trainable(model, PARTS)
    optimizer = build_optimizer(model, opts)
    chain = ClickChain(model, bf16=True, loss_size=128)        # what DDP wraps, if anything
    rs, gen = click_rngs(seed, device)
    train_step(chain, optimizer, images, targets, opts, rs, gen)  # -> {"loss", "dice", "grad_norm"}

The step (public SAM-Med3D `interaction()`): the encoder runs once per batch (or the caller passes
precomputed embeddings); then `num_clicks` (11) decoder iterations, each with the newest click only
(drawn uniformly in the error region of the current prediction) plus the previous low-res logits
(zeros at first). At one random iteration (0-based index in [2, 9), as the code's
np.random.randint(2, 9)) and at the last one the decoder gets the mask alone, no point. DiceCE with
sigmoid on the trilinearly upsampled logits, summed over iterations. The low-res logits are fed back
without detaching, as in the public code, so gradients flow through the chain of refinements.
Gradients are clipped by total norm, then one AdamW step: the encoder at lr, the prompt encoder and
mask decoder at decoder_lr_ratio * lr (the paper's ratios).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..model.build import model_click_mode
from ..model.precision import autocast
from ..model.training_view import training_view
from .clicks import sample_click_uniform
from .losses import dice_ce_loss, dice_score

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class RecipeOptions:
    """What every training path sets the same way (TrainConfig and FineTuneOptions extend it)."""
    lr: float = 8e-4  # encoder lr (paper); prompt encoder + decoder get lr * decoder_lr_ratio
    decoder_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    num_clicks: int = 11  # simulated click iterations per step (SAM-Med3D)
    grad_clip: float = 1.0  # total gradient norm; <= 0: no clipping


def set_trainable(model, parts: Sequence[str]) -> List[str]:
    """requires_grad per part; -> names of the parts that learn (in PARTS order)."""
    for name in PARTS:
        for p in getattr(model, name).parameters():
            p.requires_grad_(name in parts)
    return [p for p in PARTS if p in parts]


def build_optimizer(model, opts: RecipeOptions) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad: the encoder's at lr, the prompt encoder's and mask
    decoder's at lr * decoder_lr_ratio. Each group keeps its lr in 'base_lr' for set_lr_scale."""
    groups = []
    enc = [p for p in model.image_encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": opts.lr, "base_lr": opts.lr, "name": "encoder"})
    dec = [p for m in (model.prompt_encoder, model.mask_decoder) for p in m.parameters() if p.requires_grad]
    if dec:
        lr = opts.lr * opts.decoder_lr_ratio
        groups.append({"params": dec, "lr": lr, "base_lr": lr, "name": "prompt+decoder"})
    # foreach: the same update as the per-parameter loop (bit-identical), one kernel per op over
    # all tensors instead of one per parameter (the CPU default is the loop).
    return torch.optim.AdamW(groups, weight_decay=opts.weight_decay, foreach=True)


def set_lr_scale(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Set every group's lr to base_lr * scale (warm-up / cosine schedules)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * scale


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; fp32 otherwise (CPU autocast is slower here)."""
    return autocast("bf16" if enabled and torch.device(device).type == "cuda" else "fp32", device)


def click_rngs(seed: int, device) -> Tuple[np.random.Generator, torch.Generator]:
    """The click chain's random sources from one seed: (mask-only iteration draw, click draws)."""
    return np.random.default_rng(seed), torch.Generator(device=device).manual_seed(seed)


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


def click_losses(model, emb: torch.Tensor, targets: torch.Tensor, num_clicks: int, rs: np.random.Generator,
                 generator: Optional[torch.Generator], bf16: bool,
                 history: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the simulated-click chain on precomputed embeddings.

    Args:
        model: the model or a view of it (lib.model.training_view): decode and upsample_logits.
        emb: (B, C, 8, 8, 8) image embeddings (with grad unless the encoder is frozen).
        targets: (B, 1, L, L, L) float 0/1 on the grid model.upsample_logits returns (the crop's
            128^3 for the model itself; a view may upsample to a coarser loss grid).
        bf16: decode under bf16 autocast (CUDA only).
        history: every iteration gets all clicks so far (the server's click mode "all") and none is
            mask-only; False: SAM-Med3D's rule (newest click only, mask-only iterations).
    Returns:
        (summed loss over iterations (scalar), Dice per item after the last iteration (B,)).
    """
    b = emb.shape[0]
    gt = targets > 0.5
    # mask input: 4x the embedding grid (32^3 for 128^3 crops), whatever resolution the loss uses
    low = torch.zeros((b, 1) + tuple(4 * s for s in emb.shape[2:]), device=emb.device, dtype=torch.float32)
    pred = torch.zeros_like(gt)
    mask_only = set() if history else {int(rs.integers(2, 9)), num_clicks - 1}
    total = torch.zeros((), device=emb.device)
    seen_c: List[torch.Tensor] = []
    seen_l: List[torch.Tensor] = []
    for it in range(num_clicks):
        if it in mask_only and it > 0:
            coords = labels = None
        else:
            coords, labels = sample_click_uniform(pred, gt, generator)
            if history:
                seen_c.append(coords)
                seen_l.append(labels)
                coords, labels = torch.cat(seen_c, dim=1), torch.cat(seen_l, dim=1)
        with bf16_autocast(emb.device, bf16):
            low = model.decode(emb, coords, labels, low).float()
        up = model.upsample_logits(low)
        total = total + dice_ce_loss(up, targets)
        pred = (up > 0).detach()
    return total, dice_score(pred, gt)


def trains_on_click_history(model) -> bool:
    """True for a model whose config says it sees every click (click_mode "all", e.g. ClickUNet3D with
    geodesic maps): fine-tuning and the active-learning simulation then train it as it is served."""
    return model_click_mode(model) == "all"


class ClickChain(nn.Module):
    """The learned forward pass as one module (what DDP wraps): [encode] + the simulated-click chain.

    All three parts are registered (DDP syncs them at start and reduces the gradients of the parts
    that learn); the full model is held unregistered to reuse its encode/decode.

    Args:
        bf16: decode under bf16 autocast (CUDA only).
        loss_size: edge of the DiceCE grid; None: whatever grid model.upsample_logits returns (the
            targets are used as given, so a fully convolutional model may train on smaller crops).
        fast: decode through TrainingView when the model is a Sam3D (same function, less data
            movement); False: the model's own decode (the reference).
        bf16_encode: encode under bf16 autocast too. From-scratch training does (speed); the
            fine-tuning task does not, so the embeddings it trains on are the fp32 ones its
            embedding cache and the served model compute.
    """

    def __init__(self, model, bf16: bool = False, loss_size: Optional[int] = None, fast: bool = True,
                 bf16_encode: bool = False):
        super().__init__()
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self._model = (model,)
        self.bf16, self.bf16_encode, self.fast = bf16, bf16_encode, fast
        self.loss_size = int(loss_size) if loss_size else None

    def train(self, mode: bool = True):
        self._model[0].train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor, targets: torch.Tensor, rs: np.random.Generator,
                generator: Optional[torch.Generator], num_clicks: int, encode: bool):
        """x: images (B, 1, S, S, S) when encode, else their embeddings; targets (B, 1, S, S, S) 0/1
        (or already on the loss grid). -> (summed loss, Dice per item), as click_losses."""
        model = self._model[0]
        if encode:
            learns = any(p.requires_grad for p in self.image_encoder.parameters())
            with contextlib.nullcontext() if learns else torch.no_grad(), bf16_autocast(x.device, self.bf16_encode):
                x = model.encode(x)
        view = training_view(model, self.loss_size, self.fast)
        if self.loss_size is not None:
            targets = loss_targets(targets, self.loss_size)
        return click_losses(view, x.float(), targets, num_clicks, rs, generator, self.bf16,
                            history=trains_on_click_history(model))


def train_step(chain: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, targets: torch.Tensor,
               opts: RecipeOptions, rs: np.random.Generator, generator: Optional[torch.Generator],
               encode: bool = True) -> Dict[str, float]:
    """One optimiser step: the click chain, backward, clipping over the optimiser's parameters, AdamW.

    Args:
        chain: a ClickChain, or DistributedDataParallel around one.
        x: images (B, 1, S, S, S), or their embeddings when encode is False.
        rs, generator: the chain's random sources (click_rngs(seed, device), or long-lived ones).
    Returns:
        {"loss": summed DiceCE / num_clicks, "dice": mean Dice after the last iteration,
         "grad_norm": total gradient norm before clipping}.
    """
    chain.train()
    optimizer.zero_grad(set_to_none=True)
    loss, dice = chain(x, targets, rs, generator, opts.num_clicks, encode)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gnorm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip if opts.grad_clip > 0 else float("inf"))
    optimizer.step()
    return {"loss": float(loss.detach()) / opts.num_clicks, "dice": float(dice.mean()), "grad_norm": float(gnorm)}
