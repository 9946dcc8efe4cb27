"""From-scratch training of the default model (scripts/train_default_model.py): its options, the
recipe's optimiser and step applied to a whole model, and click validation on held-out crops.

The optimiser and the step are lib.training.recipe's, shared with the fine-tuning task and the
active-learning simulation. Here the encoder learns too (unless freeze_encoder), encoding and
decoding run under bf16 autocast on CUDA, and the loss is on the model's own 128^3 grid through the
model's own decode (the reference view, so any model with the Sam3D interface trains the same way).

Validation is the evaluation's simulated annotator (lib.evaluation.clicks.click_or_repeat: first click
at the centre of the target, then the centre of the largest error component), reporting Dice after
1 and 5 clicks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from ..evaluation.clicks import click_or_repeat
from . import recipe
from .losses import dice_score
from .recipe import PARTS, RecipeOptions, bf16_autocast, click_losses, set_lr_scale, set_trainable

__all__ = ["TrainConfig", "build_optimizer", "click_losses", "evaluate_clicks", "set_lr_scale", "summarise",
           "train_step"]


@dataclass
class TrainConfig(RecipeOptions):
    bf16: bool = True  # autocast bf16 on CUDA (ignored on CPU)
    freeze_encoder: bool = False


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """The recipe's AdamW after making every part trainable (the encoder left out with freeze_encoder)."""
    set_trainable(model, PARTS[1:] if cfg.freeze_encoder else PARTS)
    return recipe.build_optimizer(model, cfg)


def train_step(model, optimizer, images: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
               rs: np.random.Generator, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """One recipe step on a batch of crops: images (B, 1, 128, 128, 128) z-normalised, targets 0/1.

    -> {"loss": summed DiceCE / num_clicks, "dice": mean Dice after the last iteration,
        "grad_norm": total gradient norm before clipping}.
    """
    chain = recipe.ClickChain(model, bf16=cfg.bf16, fast=False, bf16_encode=cfg.bf16)
    return recipe.train_step(chain, optimizer, images, targets, cfg, rs, generator)


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
        with bf16_autocast(device, bf16):
            emb = model.encode(img).float()
        low = torch.zeros((b, 1, 32, 32, 32), device=device)
        pred_np = np.zeros_like(gt_np)
        pts: List[List] = [[] for _ in range(b)]
        lab: List[List] = [[] for _ in range(b)]
        for k in range(1, n_clicks + 1):
            for i in range(b):
                # pred_np is empty before the first click, so click 1 is first_click(gt); perfect (or an
                # empty target): the last click is repeated so shapes match
                c = click_or_repeat(pred_np[i], gt_np[i], (pts[i][-1], bool(lab[i][-1])) if pts[i] else None)
                pts[i].append(list(c[0]))
                lab[i].append(int(c[1]))
            sl = slice(None) if accumulate else slice(-1, None)
            coords = torch.tensor([p[sl] for p in pts], dtype=torch.float32, device=device)
            labels = torch.tensor([lb[sl] for lb in lab], dtype=torch.int64, device=device)
            with bf16_autocast(device, bf16):
                low = model.decode(emb, coords, labels, low).float()
            pred = model.upsample_logits(low) > 0
            pred_np = pred[:, 0].cpu().numpy()
            if k in report_at:
                out[f"dice@{k}"].extend(dice_score(pred, gt).tolist())
    return out


def summarise(results: Dict[str, Iterable[float]]) -> Dict[str, float]:
    """Mean of each list of per-crop scores."""
    return {k: float(np.mean(list(v))) if len(list(v)) else float("nan") for k, v in results.items()}
