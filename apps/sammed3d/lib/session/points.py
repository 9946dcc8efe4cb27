"""Validate user clicks (stored voxel indices) and work out which ones are new.

Slicer and OHIF send, on every request, ALL clicks placed so far for the segment as two lists
(foreground, background) -- the interleaving order is not sent. `diff_clicks` compares them
with what the label already applied: when both lists only grew, just the new tail is applied;
otherwise the label restarts from the full lists (first include click first, as it centres the
crop, then the other includes, then the excludes).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import SessionError

Point = Tuple[float, float, float]
Click = Tuple[Point, int]  # (stored index, 1 include / 0 exclude)


def parse_points(value, name: str) -> List[Point]:
    """A list of [i, j, k] numbers -> list of float triples; SessionError on anything else."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SessionError(f"{name} must be a list of [i, j, k] voxel indices, got {type(value).__name__}: {value!r:.80}")
    out = []
    for n, p in enumerate(value):
        if isinstance(p, np.ndarray):
            p = p.tolist()
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 3:
            raise SessionError(f"{name}[{n}] must be [i, j, k] (3 numbers), got {p!r:.80}")
        for c in p:
            if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(float(c)):
                raise SessionError(f"{name}[{n}] = {p!r:.80} contains a non-numeric or non-finite value {c!r:.20}")
        out.append(tuple(float(c) for c in p))
    return out


def check_inside(points: Sequence[Point], shape: Tuple[int, int, int], name: str) -> None:
    """Every point must round to a voxel of the volume (index 0 .. n-1 on each axis)."""
    for n, p in enumerate(points):
        if any(not (-0.5 <= c < s - 0.5) for c, s in zip(p, shape)):
            shown = [int(c) if float(c).is_integer() else c for c in p]
            raise SessionError(
                f"{name}[{n}] = {shown} is outside the volume: voxel indices must lie in "
                f"[0, {shape[0] - 1}] x [0, {shape[1] - 1}] x [0, {shape[2] - 1}] (image size {list(shape)})"
            )


def ordered_clicks(fg: Sequence[Point], bg: Sequence[Point]) -> List[Click]:
    """Replay order when restarting: includes (first one centres the crop), then excludes."""
    return [(p, 1) for p in fg] + [(p, 0) for p in bg]


def diff_clicks(
    old_fg: Sequence[Point], old_bg: Sequence[Point], fg: Sequence[Point], bg: Sequence[Point]
) -> Optional[List[Click]]:
    """New clicks when (fg, bg) extends (old_fg, old_bg); None when the label must restart."""
    if len(fg) < len(old_fg) or len(bg) < len(old_bg):
        return None
    if list(fg[: len(old_fg)]) != list(old_fg) or list(bg[: len(old_bg)]) != list(old_bg):
        return None
    return ordered_clicks(fg[len(old_fg):], bg[len(old_bg):])


def validate_request(fg: List[Point], bg: List[Point], shape: Tuple[int, int, int]) -> None:
    """Errors that make a request meaningless whatever the label's state."""
    if not fg and not bg:
        raise SessionError("no clicks: place at least one include (foreground) point on the structure")
    if not fg:
        raise SessionError(
            f"only exclude (background) clicks were given ({len(bg)}); the first click must be an "
            "include (foreground) point on the structure to segment"
        )
    check_inside(fg, shape, "foreground")
    check_inside(bg, shape, "background")


def voxel_indices(points: Sequence[Sequence[float]]) -> List[List[int]]:
    """Click positions (stored indices, maybe fractional) -> the voxel indices they round to (as the click update
    reads them: half up)."""
    return [[int(np.floor(float(c) + 0.5)) for c in p] for p in points]


def ball_mask(shape: Sequence[int], centre: Sequence[int], radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """A bool mask of `shape` holding the voxels within `radius_mm` of voxel `centre` (all of them for inf); the
    distances are worked out only in the ball's box."""
    out = np.zeros(tuple(shape), dtype=bool)
    if not np.isfinite(radius_mm):
        out[...] = True
        return out
    spacing = np.asarray(spacing, dtype=np.float64)
    half = np.floor(radius_mm / spacing).astype(int)
    lo, hi = np.maximum(np.asarray(centre) - half, 0), np.minimum(np.asarray(centre) + half + 1, shape)
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)]
    dist2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = dist2 <= radius_mm ** 2
    return out
