"""The simulation's model steps: fine-tune the decoder on cached embeddings, evaluate, score.

Fine-tuning (`fine_tune_decoder`) is the training recipe (lib.training.recipe, as the fine-tuning
task uses it) on cached embeddings (the encoder is frozen, so a volume's embedding never changes):
`ClickChain` runs the SAM-Med3D click chain (the newest click drawn uniformly from the error
region, the previous low-res logits fed back, mask-only iterations) with DiceCE on the 32^3 loss
grid; the trainable parts are chosen with `set_trainable`, the optimiser is `build_optimizer`
(AdamW, one lr for all learning parts) and `train_step` clips gradients at 1. Every round starts again from the base weights, so a curve point measures the
labelled set, not the number of rounds.

Evaluation (`evaluate`) is the evaluation's simulated annotator (`lib.evaluation.clicks`):
the first click is the centre of the target (computed at 128^3 and cached); later clicks go to
the centre of the largest error region, found on the 32^3 low-res grid (cheap) and mapped to
crop voxel centres; each decode gets the newest click and the previous low-res logits (the
session's default "newest" click mode). Dice is measured on the full 128^3 mask (trilinear
upsampling of the logits).

Uncertainty (`uncertainty_scores`) is the server's `point_uncertainty` (jittered and mirrored
first-click decodes, 1 - mean pairwise Dice) with the current fine-tuned decoder, at a click from
the location prior learned from the labelled volumes.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.clicks import next_click_from_error
from ..training.losses import dice_score
from ..training.recipe import ClickChain, RecipeOptions, build_optimizer, click_rngs, set_trainable, train_step
from .prompts import LocationPrior
from .sim_pool import S, Volume
from .uncertainty import Perturbation, model_decoder, point_uncertainty

LOW = S // 4  # the decoder's low-res grid (32^3), also the loss grid


def fine_tune_decoder(model, base_state: Dict[str, torch.Tensor], labelled: Sequence[Volume], steps: int, batch: int,
                      lr: float, num_clicks: int, parts: Sequence[str] = ("mask_decoder",), seed: int = 0,
                      weight_decay: float = 0.0) -> List[float]:
    """Reset `model` to `base_state`, then train `parts` on the labelled volumes' cached embeddings.

    Batches cycle through the labelled volumes in a seeded random order (each volume once per
    pass). Returns the loss of every step (DiceCE summed over the chain / num_clicks).
    """
    model.load_state_dict(base_state)
    set_trainable(model, parts)
    opts = RecipeOptions(lr=lr, decoder_lr_ratio=1.0, weight_decay=weight_decay, num_clicks=num_clicks, grad_clip=1.0)
    opt = build_optimizer(model, opts)
    chain = ClickChain(model, bf16=False, loss_size=LOW)
    rs = np.random.default_rng(seed)
    order: List[int] = []
    losses = []
    for _ in range(steps):
        idx = []
        while len(idx) < min(batch, max(len(labelled), 1) * 4):
            if not order:
                order = list(rs.permutation(len(labelled)))
            idx.append(order.pop())
        emb = torch.cat([labelled[i].emb for i in idx])
        tgt = torch.stack([labelled[i].target_low for i in idx])  # already on the loss grid
        rs_click, gen = click_rngs(int(rs.integers(2 ** 31)), emb.device)
        losses.append(train_step(chain, opt, emb, tgt, opts, rs_click, gen, encode=False)["loss"])
    model.eval()
    set_trainable(model, ())
    return losses


@torch.no_grad()
def evaluate(model, held: Sequence[Volume], n_clicks: int = 1, batch: int = 8) -> Dict[int, Dict[str, float]]:
    """-> {k: {kind: mean Dice after k clicks, ..., "mean": over all volumes}} for k = 1..n_clicks."""
    per: Dict[int, Dict[str, List[float]]] = {k: {} for k in range(1, n_clicks + 1)}
    for s in range(0, len(held), batch):
        vs = held[s:s + batch]
        b = len(vs)
        emb = torch.cat([v.emb for v in vs])
        gt = torch.stack([v.target for v in vs])[:, None]
        gt_low = torch.stack([v.target_low for v in vs])[:, 0].numpy() > 0.5
        low = torch.zeros(b, 1, LOW, LOW, LOW)
        coords = torch.tensor([[v.click] for v in vs], dtype=torch.float32)
        labels = torch.ones(b, 1, dtype=torch.long)
        for k in range(1, n_clicks + 1):
            low = model.decode(emb, coords, labels, low).float()
            pred = F.interpolate(low, size=(S,) * 3, mode="trilinear", align_corners=False) > 0
            for v, d in zip(vs, dice_score(pred, gt).tolist()):
                per[k].setdefault(v.kind, []).append(d)
            if k == n_clicks:
                break
            pred_low = (low[:, 0] > 0).numpy()
            nxt = []
            for i in range(b):
                c = next_click_from_error(pred_low[i], gt_low[i])
                if c is None:  # perfect on the low-res grid: repeat the last click
                    nxt.append((coords[i, 0].tolist(), bool(labels[i, 0])))
                else:
                    nxt.append(([4 * x + 1.5 for x in c[0]], c[1]))  # low-res cell -> crop voxel centre
            coords = torch.tensor([[p] for p, _ in nxt], dtype=torch.float32)
            labels = torch.tensor([[int(l)] for _, l in nxt], dtype=torch.long)
    out = {}
    for k, kinds in per.items():
        out[k] = {kind: float(np.mean(x)) for kind, x in kinds.items()}
        out[k]["mean"] = float(np.mean([x for xs in kinds.values() for x in xs]))
    return out


@torch.no_grad()
def uncertainty_scores(model, cands: Sequence[Volume], labelled: Sequence[Volume],
                       perts: Sequence[Perturbation]) -> Dict[str, float]:
    """Server uncertainty of each candidate at the location prior's click (prior from the labels)."""
    prior = LocationPrior()
    for v in labelled:
        prior.add_position(1, v.centroid)
    point = np.clip(prior.fractions(1)[0] * (S - 1), 0, S - 1)
    decode = model_decoder(model)
    return {v.id: point_uncertainty(decode, v.emb, point, S, perts) for v in cands}
