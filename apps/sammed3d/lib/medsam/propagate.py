"""MedSAM's 3D box protocol: a 3D box -> a mask on the stored grid, slice by slice.

1. The 3D box is Slicer's ROI, [i_min, i_max, j_min, j_max, k_min, k_max] in voxel indices of the
   volume as stored (inclusive), clamped to the volume (lib.session.roi parses, clamps and applies it).
2. The slice axis and display frame come from lib.medsam.slices (largest spacing, else axial).
3. The slice through the box centre, int((s_min + s_max) / 2) as in LiteMedSAM's 3D inference,
   is segmented with the box's in-plane extent.
4. From there the segmentation propagates one slice at a time toward both ends of the box; each
   slice is prompted with the box (256 space, +3 pixels) of its neighbour's mask. A direction
   stops at the end of the box or at the first slice whose mask is empty (the structure ended).
   (LiteMedSAM's script falls back to the centre box on an empty neighbour instead; stopping is the
   MedSAM paper's protocol and avoids segmenting something else beyond the structure's end.)
5. Image encodings are cached per slice by the VolumePredictor, so corrections and repeated
   requests on the same slices only run the decoder.
6. Slice stride k > 1 (`--conf medsam_slice_stride k`, VolumePredictor.slice_stride; default 1 = the
   protocol above): propagation steps k slices at a time, each decoded slice prompted with the box of
   the last decoded one, and every skipped slice is filled from its two decoded neighbours (their
   logits interpolated linearly by distance, thresholded at 0), so only about 1/k of the slices are
   encoded. Where a strided step finds the structure gone, that direction goes on slice by slice
   from the last non-empty slice (the stride-1 protocol), so the structure's ends are decoded.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib.session import roi as roi_tools
from lib.session.errors import SessionError

from .predictor import VolumePredictor
from .preprocess import box256_from_mask, box_to_256

logger = logging.getLogger(__name__)


class BoxError(SessionError):
    """A 3D box the protocol cannot use (wrong length, non-numeric, min > max, outside the volume)."""


@dataclass
class PropagationResult:
    """mask: (ni, nj, nk) uint8 0/1 on the stored grid; the rest describes what was done."""

    mask: np.ndarray
    roi: Tuple[int, int, int, int, int, int]  # clamped stored ROI
    slice_axis: int
    centre: int  # display-slice (= stored index along slice_axis) of the first prompt
    slices: List[int] = field(default_factory=list)  # slices with a non-empty mask, in order
    boxes256: Dict[int, Tuple[float, float, float, float]] = field(default_factory=dict)  # prompt per slice
    iou: Dict[int, float] = field(default_factory=dict)  # the model's IoU estimate per slice
    seconds: float = 0.0


def clamp_roi(roi: Sequence, shape: Sequence[int]) -> Tuple[int, int, int, int, int, int]:
    """Validate a stored ROI and clamp it to the volume (lib.session.roi); BoxError when unusable."""
    return roi_tools.clamp_roi(roi, shape, name="3D box", error=BoxError)


def propagate_box(pred: VolumePredictor, roi: Sequence, clip_to_roi: bool = False,
                  centre: Optional[int] = None,
                  anchors: Optional[Dict[int, Sequence[int]]] = None,
                  stride: Optional[int] = None) -> PropagationResult:
    """Segment the structure in a 3D box by MedSAM's slice-by-slice protocol.

    clip_to_roi: zero the result outside the box (in-plane too); the slice range is always bounded.
    centre: start slice (stored index along the slice axis) instead of the box centre; clamped
    into the box's slice range.
    anchors: {slice: (x0, y0, x1, y1)} extra 2D boxes in display-slice pixels (a user's corrections
    drawn on single slices). Every seed (the centre with the 3D box's extent, and each anchor) is
    segmented with its own box; each seed with a non-empty mask then propagates toward both sides
    up to half way to the next such seed (the seed slices of the centre and anchors are segmented
    first, so an empty seed's slices are reached from its neighbours).
    """
    t0 = time.perf_counter()
    frame = pred.frame
    box = clamp_roi(roi, frame.shape)
    (s0, s1), box2d = frame.roi_to_frame(box)
    start = (s1 - s0) // 2 + s0 if centre is None else min(max(int(centre), s0), s1)
    mask = np.zeros(frame.shape, dtype=np.uint8)
    res = PropagationResult(mask=mask, roi=box, slice_axis=frame.slice_axis, centre=start)
    seeds = {start: box_to_256(box2d, frame.slice_shape)}
    for s, b in (anchors or {}).items():
        if s0 <= int(s) <= s1:
            seeds[int(s)] = box_to_256(b, frame.slice_shape)
    order = sorted(seeds)

    total = s1 - s0 + 1
    progress = {"n": 0}
    stats = getattr(pred, "stats", None)  # stand-in predictors (tests, evaluations) may have none
    takes_ahead = "ahead" in inspect.signature(pred.predict_256).parameters
    k = max(1, int(stride if stride is not None else getattr(pred, "slice_stride", 1)))
    logits_of: Dict[int, np.ndarray] = {}  # decoded slices' logits, kept only when k > 1 (for the fill)

    def run(s: int, box256: np.ndarray, ahead=()) -> np.ndarray:
        t = time.perf_counter()
        encoded = stats["encoded"] if stats is not None else 0
        logits, iou = pred.predict_256(s, box256, ahead) if takes_ahead else pred.predict_256(s, box256)
        m = (logits > 0).numpy()  # sigmoid > 0.5
        if k > 1:
            logits_of[s] = logits.numpy()
        progress["n"] += 1
        how = "" if stats is None else ("encoded, " if stats["encoded"] > encoded else "cached encoding, ")
        logger.info("medsam box: slice %d (%d of at most %d), %s%d pixels, %.2f s", s, progress["n"], total,
                    how, int(m.sum()), time.perf_counter() - t)
        res.boxes256[s] = tuple(float(v) for v in box256)
        res.iou[s] = iou
        if m.any():
            frame.put_slice(mask, s, m.astype(np.uint8))
        return m

    def fill(a: int, b: int) -> List[int]:
        """Slices strictly between decoded slices a and b: their logits interpolated by distance.
        Returns the filled slices whose mask is not empty."""
        filled = []
        for u in range(min(a, b) + 1, max(a, b)):
            w = abs(u - a) / abs(b - a)
            m = ((1.0 - w) * logits_of[a] + w * logits_of[b]) > 0
            progress["n"] += 1
            logger.info("medsam box: slice %d (%d of at most %d), filled from slices %d and %d, %d pixels",
                        u, progress["n"], total, a, b, int(m.sum()))
            if m.any():
                frame.put_slice(mask, u, m.astype(np.uint8))
                filled.append(u)
        return filled

    # `ahead`: the slice propagation will most likely need next, encoded in the same model call
    # (VolumePredictor.encode_batch); at worst one slice per direction is encoded in vain.
    firsts = {seed: run(seed, seeds[seed], [seed + k] if seed + k <= s1 else []) for seed in order}
    live = [seed for seed in order if firsts[seed].any()]  # an empty seed owns no slices
    done = list(live)
    for n, seed in enumerate(live):
        lo = s0 if n == 0 else (live[n - 1] + seed) // 2 + 1
        hi = s1 if n == len(live) - 1 else (seed + live[n + 1]) // 2
        for step in (1, -1):
            prev, s = firsts[seed], seed + step
            if k > 1:
                prev, s = _strided(run, fill, prev, seed, step, k, lo, hi, done)
            while lo <= s <= hi:
                b = box256_from_mask(prev)
                if b is None:
                    break
                prev = run(s, b, [s + step] if lo <= s + step <= hi else [])
                if not prev.any():
                    break
                done.append(s)
                s += step
    res.slices = sorted(set(done))
    if clip_to_roi:
        res.mask = roi_tools.apply_roi(mask, box)
    res.seconds = time.perf_counter() - t0
    return res


def _strided(run, fill, prev: np.ndarray, seed: int, step: int, k: int, lo: int, hi: int, done: List[int]):
    """One direction of a seed's propagation, k slices per step (module docstring, step 6); the last step
    is shortened to end on the range's end. Returns (mask, slice) where slice-by-slice propagation goes
    on: past the range when the structure reached it, else from the last non-empty decoded slice."""
    s = seed
    while True:
        t = s + step * min(k, (hi - s) if step > 0 else (s - lo))
        b = box256_from_mask(prev)
        if t == s or b is None:
            return prev, s + step
        m = run(t, b, [t + step * k] if lo <= t + step * k <= hi else [])
        if not m.any():  # the structure ends between s and t: slice by slice from s
            return prev, s + step
        done.extend(fill(s, t) + [t])
        prev, s = m, t
