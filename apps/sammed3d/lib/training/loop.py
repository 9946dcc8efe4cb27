"""The SAM-Med3D training step with click simulation, the optimiser recipe, and click validation.

Training step (public SAM-Med3D `interaction()`): the encoder runs once per batch; then
`num_clicks` (11) decoder iterations, each with the newest click only (drawn uniformly in the error
region of the current prediction) plus the previous low-res logits (zeros at first). At one random
iteration (0-based index in [2, 9), as the code's np.random.randint(2, 9)) and at the last one the
decoder gets the mask alone, no point. DiceCE with sigmoid on the 128^3 trilinearly upsampled
logits, summed over iterations. The low-res logits are fed back without detaching, as in the
public code, so gradients flow through the chain of refinements.

Validation follows the evaluation rule (clicks.next_click_from_error, centre of the largest error
component), reporting Dice after 1 and 5 clicks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..interaction.clicks import first_click, next_click_from_error, sample_click_uniform
from .losses import dice_ce_loss, dice_score


@dataclass
class TrainConfig:
    lr: float = 8e-4  # encoder learning rate (paper)
    decoder_lr_ratio: float = 0.1  # prompt encoder + mask decoder lr = ratio * lr (paper)
    weight_decay: float = 0.1
    num_clicks: int = 11
    grad_clip: float = 1.0
    bf16: bool = True  # autocast bf16 on CUDA (ignored on CPU)
    freeze_encoder: bool = False


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: encoder at lr, prompt encoder + decoder at decoder_lr_ratio * lr.

    With freeze_encoder the encoder's parameters get requires_grad=False and are left out.
    Each group keeps its base lr in 'base_lr' so a schedule can scale it.
    """
    for p in model.image_encoder.parameters():
        p.requires_grad_(not cfg.freeze_encoder)
    dec = [p for m in (model.prompt_encoder, model.mask_decoder) for p in m.parameters() if p.requires_grad]
    groups = [{"params": dec, "lr": cfg.lr * cfg.decoder_lr_ratio, "base_lr": cfg.lr * cfg.decoder_lr_ratio,
               "name": "prompt+decoder"}]
    if not cfg.freeze_encoder:
        groups.insert(0, {"params": list(model.image_encoder.parameters()), "lr": cfg.lr, "base_lr": cfg.lr,
                          "name": "encoder"})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def set_lr_scale(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Set every group's lr to base_lr * scale (warm-up / cosine schedules)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * scale


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def click_losses(model, emb: torch.Tensor, targets: torch.Tensor, num_clicks: int, rs: np.random.Generator,
                 generator: Optional[torch.Generator], bf16: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the simulated-click chain on precomputed embeddings.

    Args:
        emb: (B, C, 8, 8, 8) image embeddings (with grad unless the encoder is frozen).
        targets: (B, 1, 128, 128, 128) float 0/1 (the size model.upsample_logits returns; a model
            wrapper may upsample to a smaller loss grid and give targets on that grid).
    Returns:
        (summed loss over iterations (scalar), Dice per item after the last iteration (B,)).
    """
    b = emb.shape[0]
    gt = targets > 0.5
    # mask input: 4x the embedding grid (32^3 for 128^3 crops), whatever resolution the loss uses
    low = torch.zeros((b, 1) + tuple(4 * s for s in emb.shape[2:]), device=emb.device, dtype=torch.float32)
    pred = torch.zeros_like(gt)
    mask_only = {int(rs.integers(2, 9)), num_clicks - 1}
    total = torch.zeros((), device=emb.device)
    for it in range(num_clicks):
        if it in mask_only and it > 0:
            coords = labels = None
        else:
            coords, labels = sample_click_uniform(pred, gt, generator)
        with _autocast(emb.device, bf16):
            low = model.decode(emb, coords, labels, low).float()
        up = model.upsample_logits(low)
        total = total + dice_ce_loss(up, targets)
        pred = (up > 0).detach()
    return total, dice_score(pred, gt)


def train_step(model, optimizer, images: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
               rs: np.random.Generator, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """One optimiser step on a batch.

    Args:
        images: (B, 1, 128, 128, 128) z-normalised crops; targets: (B, 1, 128, 128, 128) 0/1.
    Returns:
        {"loss": summed DiceCE / num_clicks, "dice": mean Dice after the last iteration,
         "grad_norm": total gradient norm before clipping}.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    enc_ctx = torch.no_grad() if cfg.freeze_encoder else contextlib.nullcontext()
    with enc_ctx, _autocast(images.device, cfg.bf16):
        emb = model.encode(images)
    loss, dice = click_losses(model, emb.float(), targets, cfg.num_clicks, rs, generator, cfg.bf16)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    optimizer.step()
    return {"loss": float(loss.detach()) / cfg.num_clicks, "dice": float(dice.mean()), "grad_norm": float(gnorm)}


@torch.no_grad()
def evaluate_clicks(model, images: torch.Tensor, targets: torch.Tensor, n_clicks: int = 5,
                    report_at: Sequence[int] = (1, 5), accumulate: bool = False, bf16: bool = False,
                    batch: int = 4) -> Dict[str, List[float]]:
    """Interactive Dice with the evaluation click rule on held-out crops.

    Args:
        images, targets: (N, 1, 128, 128, 128) crops on any device (moved to the model's device).
        accumulate: False feeds only the newest click plus the previous logits (as in training);
            True passes all clicks so far (as the official inference does).
    Returns:
        {"dice@k": [Dice per crop after k clicks] for k in report_at}.
    """
    model.eval()
    device = next(model.parameters()).device
    out = {f"dice@{k}": [] for k in report_at}
    for s in range(0, images.shape[0], batch):
        img = images[s:s + batch].to(device)
        gt = targets[s:s + batch].to(device) > 0.5
        gt_np = gt[:, 0].cpu().numpy()
        b = img.shape[0]
        with _autocast(device, bf16):
            emb = model.encode(img).float()
        low = torch.zeros((b, 1, 32, 32, 32), device=device)
        pred_np = np.zeros_like(gt_np)
        pts: List[List] = [[] for _ in range(b)]
        lab: List[List] = [[] for _ in range(b)]
        for k in range(1, n_clicks + 1):
            for i in range(b):
                c = first_click(gt_np[i]) if k == 1 else next_click_from_error(pred_np[i], gt_np[i])
                if c is None:  # perfect (or empty target): repeat the last click so shapes match
                    c = (pts[i][-1], bool(lab[i][-1])) if pts[i] else ((0, 0, 0), False)
                pts[i].append(list(c[0]))
                lab[i].append(int(c[1]))
            sl = slice(None) if accumulate else slice(-1, None)
            coords = torch.tensor([p[sl] for p in pts], dtype=torch.float32, device=device)
            labels = torch.tensor([lb[sl] for lb in lab], dtype=torch.int64, device=device)
            with _autocast(device, bf16):
                low = model.decode(emb, coords, labels, low).float()
            pred = model.upsample_logits(low) > 0
            pred_np = pred[:, 0].cpu().numpy()
            if k in report_at:
                out[f"dice@{k}"].extend(dice_score(pred, gt).tolist())
    return out


def summarise(results: Dict[str, Iterable[float]]) -> Dict[str, float]:
    """Mean of each list of per-crop scores."""
    return {k: float(np.mean(list(v))) if len(list(v)) else float("nan") for k, v in results.items()}
