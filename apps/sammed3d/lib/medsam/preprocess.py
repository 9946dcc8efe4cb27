"""MedSAM's intensity windowing and LiteMedSAM's 256x256 input / output mapping for one slice.

Volume (once): MedSAM's pre_CT_MR.py. CT: clip to a window (default soft tissue, level 40 /
width 400 HU) and scale to 0..255; other modalities: clip to the 0.5-99.5 percentiles of the
non-zero voxels, scale to 0..255 and keep zeros at 0. Stored as uint8, as MedSAM's training data.

Slice (per call): LiteMedSAM's inference code. Resize the longest side to 256 keeping the aspect
ratio (pixel-area weights, OpenCV's INTER_AREA), min-max normalise to [0, 1], pad bottom/right to
256x256, repeat to 3 channels. Boxes map to 256 space by truncating coord * 256 / max(H, W);
the output logits are cropped to the un-padded part and resized bilinearly back to the slice.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 256
# (level, width) in HU; MedSAM's pre_CT_MR.py default is soft tissue
CT_WINDOWS = {"soft_tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}
DEFAULT_CT_WINDOW = "soft_tissue"
NEIGHBOUR_BOX_MARGIN = 3  # pixels in 256 space added around a neighbour's mask (MedSAM's get_bbox256)

Window = Union[None, str, Tuple[float, float]]


def window_volume(vol: np.ndarray, is_ct: bool, window: Window = None) -> np.ndarray:
    """Any-dtype volume -> uint8 volume 0..255 (same shape), as MedSAM preprocesses.

    window: CT preset name (see CT_WINDOWS) or (level, width); ignored for non-CT unless given
    explicitly ("percentile" forces the MR rule on CT).
    """
    v = np.asarray(vol, dtype=np.float32)
    if window == "percentile" or (not is_ct and window is None):
        nz = v[v > 0] if np.any(v > 0) else v.ravel()
        if nz.size > 2_000_000:  # percentiles of a fixed subsample: same answer to < 0.1 %, far cheaper
            nz = nz[:: nz.size // 2_000_000 + 1]
        lo, hi = (float(x) for x in np.percentile(nz, [0.5, 99.5]))
        out = np.clip(v, lo, hi)
        out = (out - out.min()) / max(float(out.max() - out.min()), 1e-8) * 255.0
        out[v == 0] = 0
        return out.astype(np.uint8)
    level, width = CT_WINDOWS[window or DEFAULT_CT_WINDOW] if isinstance(window, (str, type(None))) else window
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo, hi = level - width / 2.0, level + width / 2.0
    return ((np.clip(v, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)


@lru_cache(maxsize=32)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of pixel-area resampling along one axis (rows sum to 1).

    Output pixel o covers [o, o+1) * n_in / n_out of the input; each input pixel is weighted by
    its overlap. Downscaling averages (INTER_AREA), integer upscaling replicates pixels.
    """
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    hi = lo + scale
    i = np.arange(n_in)[None, :]
    w = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resized_shape(h: int, w: int, target: int = IMAGE_SIZE) -> Tuple[int, int]:
    """(new_h, new_w) with the longest side `target` (rounded as LiteMedSAM: int(x + 0.5))."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def slice_input(plane: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """2D uint8 (H, W) slice -> model input (1, 3, 256, 256) float32 in [0, 1], and (new_h, new_w)."""
    h, w = plane.shape
    nh, nw = resized_shape(h, w)
    img = area_matrix(h, nh) @ plane.astype(np.float32) @ area_matrix(w, nw).T
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1e-8)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out[:nh, :nw] = img
    t = torch.from_numpy(out)[None, None].expand(1, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous()
    return t, (nh, nw)


def box_to_256(box: Sequence[float], slice_shape: Tuple[int, int]) -> np.ndarray:
    """(x0, y0, x1, y1) in slice pixels -> the same box in 256 space (LiteMedSAM's resize_box_to_256)."""
    ratio = IMAGE_SIZE / max(slice_shape)
    return np.array([int(c * ratio) for c in box], dtype=np.float32)


def box256_from_mask(mask: np.ndarray, margin: int = NEIGHBOUR_BOX_MARGIN) -> Optional[np.ndarray]:
    """Box (x0, y0, x1, y1) in 256 space around a slice-grid mask (H, W), plus `margin`; None if empty.

    As LiteMedSAM's 3D inference: the mask is resized to 256 space first (area weights, kept
    where at least half covered, as OpenCV's INTER_AREA on a 0/1 uint8 image), then boxed.
    """
    if not mask.any():
        return None
    h, w = mask.shape
    nh, nw = resized_shape(h, w)
    small = (area_matrix(h, nh) @ mask.astype(np.float32) @ area_matrix(w, nw).T) >= 0.5
    if not small.any():  # a speck smaller than one 256-space pixel: box its centre pixel instead
        ys, xs = np.nonzero(mask)
        ratio = IMAGE_SIZE / max(h, w)
        y, x = int(ys.mean() * ratio), int(xs.mean() * ratio)
        ys, xs = np.array([y]), np.array([x])
    else:
        ys, xs = np.nonzero(small)
    x0, x1 = max(0, int(xs.min()) - margin), min(IMAGE_SIZE, int(xs.max()) + margin)
    y0, y1 = max(0, int(ys.min()) - margin), min(IMAGE_SIZE, int(ys.max()) + margin)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def logits_to_slice(logits: torch.Tensor, new_hw: Tuple[int, int], slice_shape: Tuple[int, int]) -> torch.Tensor:
    """(1, 1, 256, 256) low-res logits -> (H, W) logits on the slice grid (crop padding, bilinear)."""
    nh, nw = new_hw
    cropped = logits[..., :nh, :nw]
    return F.interpolate(cropped, size=tuple(slice_shape), mode="bilinear", align_corners=False)[0, 0]
