"""Randomised contrast, intensity, resolution and orientation for training crops (torch, any device).

Appearance is randomised after the crop is cut and before z-normalisation, so the model sees the
same structure under many contrasts (a SynthSeg-style lesson: contrast-agnostic edges generalise
to scanners and sequences it never saw).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def randomise_appearance(crop: torch.Tensor, rs: np.random.Generator, is_ct: bool) -> torch.Tensor:
    """(D, H, W) intensities (HU for CT) -> the same shape IN THE SAME UNITS: gamma, a random
    monotone or (rarely) non-monotone remap, bias field, blur or thick slices, noise, applied on
    [0, 1] and mapped back to the crop's own 0.5-99.5 % range. Staying in the original units keeps
    the server's normalisation (lib.session.preprocess.normalise: CT clamp, statistics of voxels
    > 0) meaningful: the sampler applies exactly that afterwards. Voxels that were exactly 0
    (outside the volume, MR air) stay 0."""
    x = crop.float()
    zero = crop == 0
    if is_ct:
        x = x.clamp(-1000.0, 1000.0)
    lo, hi = torch.quantile(x.reshape(-1)[::7], torch.tensor([0.005, 0.995], device=x.device))
    span = (hi - lo).clamp_min(1e-6)
    if is_ct and rs.random() < 0.5:  # a random CT window (what matters is the structure's contrast)
        c, w = rs.uniform(-600, 300), rs.uniform(300, 2000)
        x = x.clamp(c - w / 2, c + w / 2)
        wlo, whi = max(float(lo), c - w / 2), min(float(hi), c + w / 2)
        x = ((x - wlo) / max(whi - wlo, 1e-6)).clamp(0, 1)
    else:
        x = ((x - lo) / span).clamp(0, 1)
    if rs.random() < 0.8:
        x = x ** float(np.exp(rs.normal(0, 0.35)))
    if rs.random() < 0.15:  # non-monotone remap: a random smooth curve over [0, 1]
        knots = torch.tensor(rs.uniform(0, 1, 6), dtype=x.dtype, device=x.device)
        pos = x * (len(knots) - 1)
        i0 = pos.floor().long().clamp(0, len(knots) - 2)
        frac = pos - i0
        x = knots[i0] * (1 - frac) + knots[i0 + 1] * frac
    elif rs.random() < 0.1:
        x = 1 - x  # inverted contrast (e.g. T1 <-> T2-like)
    if rs.random() < 0.5:  # smooth multiplicative bias field
        coarse = torch.tensor(rs.normal(0, 0.15, (1, 1, 3, 3, 3)), dtype=x.dtype, device=x.device)
        bias = F.interpolate(coarse, size=x.shape, mode="trilinear", align_corners=True)[0, 0].exp()
        x = x * bias
    r = rs.random()
    if r < 0.25:  # thick slices along a random axis (resolution)
        axis = int(rs.integers(3))
        f = int(rs.integers(2, 5))
        size = list(x.shape)
        small = list(size)
        small[axis] = max(size[axis] // f, 1)
        x = F.interpolate(F.interpolate(x[None, None], size=small, mode="area"), size=size, mode="trilinear",
                          align_corners=False)[0, 0]
    elif r < 0.45:
        k = 3
        w = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k
            x = F.conv3d(F.pad(x[None, None], [1, 1, 1, 1, 1, 1], mode="replicate"), w.view(shape),
                         padding=0)[0, 0][tuple(slice(1, -1) if a != axis else slice(None) for a in range(3))]
    if rs.random() < 0.7:
        gen = torch.Generator(device=x.device).manual_seed(int(rs.integers(2**62)))  # deterministic per sample
        x = x + torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * float(rs.uniform(0, 0.06))
    out = lo + x.clamp(0, 1) * span
    return torch.where(zero, torch.zeros_like(out), out)


def randomise_orientation(img: torch.Tensor, tgt: torch.Tensor, rs: np.random.Generator):
    """Random flips and axis permutation of (D, H, W) pairs (orientation-agnostic clicks)."""
    dims = [d for d in range(3) if rs.random() < 0.5]
    if dims:
        img, tgt = img.flip(dims), tgt.flip(dims)
    if rs.random() < 0.5:
        perm = [int(p) for p in rs.permutation(3)]
        img, tgt = img.permute(perm), tgt.permute(perm)
    return img.contiguous(), tgt.contiguous()
