"""Model-ready training crops: 128^3 at 1.5 mm around one target structure, z-normalised.

Follows the preprocessing the released model was trained with (architecture doc): CT clamped to
[-1000, 1000]; crop or zero-pad to 128^3 centred on the target's bounding-box centre (plus a random
jitter here, because at inference the crop is centred on a click, not on the unknown bounding box);
z-normalise with the mean and unbiased std of voxels > 0, applied to every voxel; random flips.

Volumes must already be on the 1.5 mm grid (phantoms are generated on it; real volumes are
resampled by scripts/prepare_real_volumes.py). Works on CPU or CUDA tensors.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..synthetic.phantoms import generate_phantom_torch

CROP_SIZE = 128


def znormalise(crop: torch.Tensor) -> torch.Tensor:
    """Z-normalise with mean / unbiased std of voxels > 0 (all voxels if fewer than 2 are > 0)."""
    fg = crop[crop > 0]
    if fg.numel() < 2:
        fg = crop.reshape(-1)
    mean, std = fg.mean(), fg.std(unbiased=True)
    return (crop - mean) / std.clamp_min(1e-6)


def crop_or_pad(vol: torch.Tensor, centre: Sequence[int], size: int = CROP_SIZE) -> torch.Tensor:
    """(D, H, W) -> (size, size, size) window starting at centre - size // 2; outside is zero."""
    out = torch.zeros((size,) * 3, dtype=vol.dtype, device=vol.device)
    src, dst = [], []
    for c, n in zip(centre, vol.shape):
        lo = int(c) - size // 2
        a, b = max(lo, 0), min(lo + size, n)
        if b <= a:  # window entirely outside the volume: all padding
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def bbox_centre(mask: torch.Tensor) -> List[int]:
    """Integer centre of the bounding box of a non-empty (D, H, W) mask."""
    idx = torch.nonzero(mask)
    lo, hi = idx.min(0).values, idx.max(0).values
    return [int(v) for v in ((lo + hi + 1) // 2).tolist()]


def make_crop(
    image: torch.Tensor,
    target: torch.Tensor,
    is_ct: bool,
    rs: np.random.Generator,
    jitter: int = 16,
    flip: bool = True,
    size: int = CROP_SIZE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One training crop.

    Args:
        image: (D, H, W) float intensities (HU for CT) on the 1.5 mm grid.
        target: (D, H, W) bool, non-empty.
        jitter: max shift (voxels, per axis, uniform) of the crop centre from the bbox centre.

    Returns:
        image (1, size, size, size) float32 z-normalised, target (1, size, size, size) float32 0/1.
    """
    centre = bbox_centre(target)
    if jitter > 0:
        centre = [c + int(rs.integers(-jitter, jitter + 1)) for c in centre]
    img = image.float()
    if is_ct:
        img = img.clamp(-1000.0, 1000.0)
    img = znormalise(crop_or_pad(img, centre, size))
    tgt = crop_or_pad(target.to(torch.uint8), centre, size)
    if flip:
        dims = [d for d in range(3) if rs.random() < 0.5]
        if dims:
            img, tgt = img.flip(dims), tgt.flip(dims)
    return img[None].contiguous(), tgt[None].float().contiguous()


def pick_target(label: torch.Tensor, allowed: Optional[Sequence[int]], rs: np.random.Generator, min_voxels: int = 30):
    """A random structure value present in `label` (restricted to `allowed` when given), or None."""
    counts = torch.bincount(label.reshape(-1).long())
    values = [v for v in torch.nonzero(counts >= min_voxels).reshape(-1).tolist() if v != 0]
    if allowed is not None:
        values = [v for v in values if v in set(allowed)]
    return int(values[rs.integers(len(values))]) if values else None


def load_npz_volume(path: str):
    """Read a volume written by prepare_real_volumes.py -> (image float32, label, is_ct, train_values).

    `train_values` are the label values allowed for training (held-out structures excluded).
    """
    with np.load(path, allow_pickle=False) as z:
        image = torch.from_numpy(z["image"].astype(np.float32))
        label = torch.from_numpy(z["label"].astype(np.int16))
        is_ct = bool(z["is_ct"])
        train_values = [int(v) for v in z["train_values"]]
    return image, label, is_ct, train_values


class CropDataset(Dataset):
    """Endless-style dataset of training crops from phantoms and (optionally) real .npz volumes.

    Item i is deterministic given (seed, i): it builds phantom `seed * 1_000_003 + i` (or picks a
    real volume with probability `real_fraction`), chooses one labelled structure at random and
    returns make_crop(...) -> (image (1,128,128,128), target (1,128,128,128)).
    Used with a multi-worker DataLoader on CPU, and by the tests; the GPU trainer uses pool.VolumePool.
    """

    def __init__(self, length: int, seed: int = 0, phantom_shape=(144, 144, 144), npz_dir: Optional[str] = None,
                 real_fraction: float = 0.0, jitter: int = 16, flip: bool = True, size: int = CROP_SIZE):
        self.length, self.seed, self.phantom_shape = length, seed, tuple(phantom_shape)
        self.paths = sorted(glob.glob(os.path.join(npz_dir, "*.npz"))) if npz_dir else []
        self.real_fraction = real_fraction if self.paths else 0.0
        self.jitter, self.flip, self.size = jitter, flip, size
        self._cache = {}

    def __len__(self) -> int:
        return self.length

    def _real(self, rs):
        path = self.paths[rs.integers(len(self.paths))]
        if path not in self._cache:
            self._cache[path] = load_npz_volume(path)
        return self._cache[path]

    def __getitem__(self, i: int):
        rs = np.random.default_rng([self.seed, int(i)])
        for attempt in range(10):
            if rs.random() < self.real_fraction:
                image, label, is_ct, allowed = self._real(rs)
            else:
                image, label, mod = generate_phantom_torch(self.seed * 1_000_003 + int(i) + attempt * 7919,
                                                           self.phantom_shape)
                is_ct, allowed = mod == "ct", None
            value = pick_target(label, allowed, rs)
            if value is not None:
                return make_crop(image, label == value, is_ct, rs, self.jitter, self.flip, self.size)
        raise RuntimeError(f"no labelled structure found for item {i}")
