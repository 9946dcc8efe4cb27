"""A pool of volumes resident on the training device, from which batches of crops are drawn.

Why: a 144^3 phantom costs ~2 s on one CPU core but a few ms on a GPU, and the GPU consumes a batch
in well under a second. So phantoms are generated on the device itself, kept in a pool, and a few of
them are replaced each step (each phantom has several structures, and crops differ by target,
jitter and flip, so reuse over a few dozen steps is cheap diversity). Real volumes (.npz from
prepare_real_volumes.py) stay in the pool permanently.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from .crops import CROP_SIZE, load_npz_volume, make_crop, pick_target
from ..synthetic.phantoms import generate_phantom_torch


class VolumePool:
    """Phantoms (refreshed round-robin) plus fixed real volumes, all on `device`.

    Each entry: (image (D,H,W) float32, label (D,H,W) int16, is_ct, allowed values or None).
    """

    def __init__(self, device, n_phantoms: int = 48, phantom_shape=(144, 144, 144), seed: int = 0,
                 npz_dir: Optional[str] = None, real_fraction: float = 0.0, jitter: int = 16):
        self.device = torch.device(device)
        self.phantom_shape = tuple(phantom_shape)
        self.seed, self.jitter = seed, jitter
        self.phantoms: List[Tuple] = []
        self.next_seed = seed * 1_000_003
        self.real: List[Tuple] = []
        for path in sorted(glob.glob(os.path.join(npz_dir, "*.npz"))) if npz_dir else []:
            image, label, is_ct, allowed = load_npz_volume(path)
            if allowed:
                self.real.append((image.to(self.device), label.to(self.device), is_ct, allowed))
        self.real_fraction = real_fraction if self.real else 0.0
        self._slot = 0
        for _ in range(n_phantoms):
            self.phantoms.append(self._new_phantom())

    def _new_phantom(self):
        image, label, mod = generate_phantom_torch(self.next_seed, self.phantom_shape, device=self.device)
        self.next_seed += 1
        return image, label, mod == "ct", None

    def refresh(self, k: int) -> None:
        """Replace the k oldest phantoms by new ones."""
        for _ in range(k):
            self.phantoms[self._slot] = self._new_phantom()
            self._slot = (self._slot + 1) % len(self.phantoms)

    def sample(self, batch: int, rs: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> images (B, 1, 128, 128, 128) z-normalised, targets (B, 1, 128, 128, 128) float 0/1."""
        imgs, tgts = [], []
        while len(imgs) < batch:
            src = self.real if rs.random() < self.real_fraction else self.phantoms
            image, label, is_ct, allowed = src[rs.integers(len(src))]
            value = pick_target(label, allowed, rs)
            if value is None:
                continue
            img, tgt = make_crop(image, label == value, is_ct, rs, self.jitter, True, CROP_SIZE)
            imgs.append(img)
            tgts.append(tgt)
        return torch.stack(imgs), torch.stack(tgts)
