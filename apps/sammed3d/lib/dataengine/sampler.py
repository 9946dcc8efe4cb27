"""TrainingSampler: (image crop, target crop) pairs from real backgrounds and phantoms.

Per sample: a real volume (prepare_real_volumes.py .npz) or a synthetic phantom; on a real
volume the target is one of its licensed labels, a supervoxel region, or a synthetic lesion
pasted into it; then a crop around the target (centre jittered, as a click is never exactly at
the centre), randomised appearance and orientation, and the server's z-normalisation.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from skimage.filters import threshold_otsu

from ..session.preprocess import normalise
from ..training.crops import bbox_centre, crop_or_pad, load_npz_volume, pick_target
from ..synthetic.phantoms import generate_phantom_torch
from .augment import randomise_appearance, randomise_orientation
from .lesions import insert_lesion
from .supervoxels import SupervoxelGraph, compute_supervoxels

# share of samples per source; real volumes split their share between the three target kinds
MIX = {"phantom": 0.3, "label": 0.15, "supervoxel": 0.35, "lesion": 0.2}


class _RealVolume:
    def __init__(self, path: str, cache_dir: Optional[str], n_segments: int):
        image, label, is_ct, train_values = load_npz_volume(path)
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.image = image.numpy()
        self.label = label.numpy()
        self.is_ct = is_ct
        self.train_values = [v for v in train_values if int((self.label == v).sum()) >= 50]
        # tissue, not air or background noise: Otsu's threshold (the median put the air of a head
        # scan, which fills most of its field of view, into the "foreground")
        self.foreground = self.image > threshold_otsu(self.image[::2, ::2, ::2])
        slic_mask = self.image > np.percentile(self.image, 50)  # the cached supervoxels were made with this
        sv_path = os.path.join(cache_dir, f"{self.name}.supervoxels{n_segments}.npy") if cache_dir else None
        if sv_path and os.path.exists(sv_path):
            sv = np.load(sv_path)
        else:
            sv = compute_supervoxels(self.image, n_segments, mask=slic_mask)
            if sv_path:
                np.save(sv_path, sv)
        self.graph = SupervoxelGraph(sv, self.image, seed_mask=self.foreground)


class TrainingSampler:
    """Draws training pairs; deterministic given (seed, index).

    Args:
        npz_dir: folder of training .npz volumes (their `train_values` are the licensed labels).
        crop: crop edge in 1.5 mm voxels (64 trains 8x cheaper than the 128 served; the model is
            fully convolutional).
        cache_dir: where supervoxel maps are cached (computed once per volume).
    """

    def __init__(self, npz_dir: Optional[str], crop: int = 64, seed: int = 0, cache_dir: Optional[str] = None,
                 n_segments: int = 6000, mix: Optional[Dict[str, float]] = None, phantom_size: int = 88,
                 window: int = 128):
        # `window`: the crop the server cuts and normalises (128^3); a smaller training crop is cut
        # from its centre AFTER the server's normalisation, so intensities match serving.
        self.crop, self.seed, self.phantom_size, self.window = int(crop), int(seed), int(phantom_size), int(window)
        paths = sorted(glob.glob(os.path.join(npz_dir, "*.npz"))) if npz_dir else []
        self.real: List[_RealVolume] = [_RealVolume(p, cache_dir or npz_dir, n_segments) for p in paths]
        mix = dict(mix or MIX)
        if not self.real:
            mix = {"phantom": 1.0}
        if not any(v.train_values for v in self.real):
            mix.pop("label", None)
        total = sum(mix.values())
        self.kinds = list(mix)
        self.probs = np.array([mix[k] / total for k in self.kinds])

    def sample(self, index: int, crop: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, str]:
        """-> (image (1, C, C, C) normalised as the server does, target (1, C, C, C) 0/1 float, kind)."""
        size = int(crop or self.crop)
        window = max(size, self.window)
        rs = np.random.default_rng([self.seed, int(index)])
        for attempt in range(20):
            kind = self.kinds[int(rs.choice(len(self.kinds), p=self.probs))]
            got = getattr(self, f"_{kind}")(rs, window)
            if got is None:
                continue
            image, target, is_ct = got
            centre = bbox_centre(target)
            j = max(2, window // 10)  # a click is never exactly at the centre of the served crop
            centre = [c + int(rs.integers(-j, j + 1)) for c in centre]
            img = crop_or_pad(image.float(), centre, window)
            tgt = crop_or_pad(target.to(torch.uint8), centre, window)
            if int(tgt.sum()) < 20:
                continue
            img = normalise(randomise_appearance(img, rs, is_ct).numpy(), is_ct)[0, 0]
            img, tgt = randomise_orientation(img, tgt, rs)
            if size < window:
                a = (window - size) // 2
                sub = (slice(a, a + size),) * 3
                img, tgt = img[sub], tgt[sub]
                if int(tgt.sum()) < 20:
                    continue
            return img[None].contiguous(), tgt[None].float().contiguous(), kind
        raise RuntimeError(f"no usable training target for sample {index}")

    def batch(self, indices, crop: Optional[int] = None):
        items = [self.sample(i, crop) for i in indices]
        return torch.stack([a for a, _, _ in items]), torch.stack([b for _, b, _ in items]), [k for _, _, k in items]

    # ---------------------------------------------------------------- sources
    def _phantom(self, rs, size):
        n = self.phantom_size  # smaller than the window: the rest is outside-the-volume zeros, as served
        image, label, mod = generate_phantom_torch(int(rs.integers(2**31)), (n,) * 3)
        v = pick_target(label, None, rs)
        return None if v is None else (image, label == v, mod == "ct")

    def _volume(self, rs, need_labels=False) -> Optional[_RealVolume]:
        vols = [v for v in self.real if v.train_values] if need_labels else self.real
        return vols[int(rs.integers(len(vols)))] if vols else None

    def _label(self, rs, size):
        vol = self._volume(rs, True)
        if vol is None:
            return None
        v = vol.train_values[int(rs.integers(len(vol.train_values)))]
        return torch.from_numpy(vol.image), torch.from_numpy(vol.label == v), vol.is_ct

    def _supervoxel(self, rs, size):
        vol = self._volume(rs)
        max_parts = int(rs.choice([1, 3, 8, 20, 60]))
        ids = vol.graph.random_region(rs, max_parts, tolerance=float(rs.uniform(0.3, 1.2)))
        mask = np.isin(vol.graph.labels, ids)
        return torch.from_numpy(vol.image), torch.from_numpy(mask), vol.is_ct

    def _lesion(self, rs, size):
        vol = self._volume(rs)
        # cut a region first so the lesion is pasted into a small array, not the whole volume
        fg = np.argwhere(vol.foreground)
        c = fg[rs.integers(len(fg))]
        half = size // 2 + 8
        lo = np.maximum(c - half, 0)
        hi = np.minimum(c + half, vol.image.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_fg = vol.foreground[sl].copy()
        core = np.zeros_like(sub_fg)
        m = [max(1, (b - a) // 4) for a, b in zip(lo, hi)]
        core[m[0]:-m[0], m[1]:-m[1], m[2]:-m[2]] = True
        image, mask = insert_lesion(vol.image[sl], sub_fg & core, rs, vol.is_ct)
        if mask.sum() < 20:
            return None
        return torch.from_numpy(image), torch.from_numpy(mask), vol.is_ct
