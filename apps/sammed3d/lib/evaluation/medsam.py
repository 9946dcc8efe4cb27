"""MedSAM box row of the evaluation (issue 8 item 3; `--model medsam`): same cases, same action budget.

User model, counted in actions so it compares with SAM-Med3D's clicks (one box = two clicks):
* actions 1-2: a 3D box around the target's extent plus `margin_mm` on every axis (a Slicer ROI
  drawn a little loose), segmented by MedSAM's slice-by-slice protocol (lib.medsam.propagate).
  After 1 action there is no MedSAM result (no row: the summary shows "-").
* then corrections: the error location is chosen by the SAME rule as the SAM-Med3D evaluation
  (lib.evaluation.clicks.next_click: centre of the largest error region) and turned into a
  tighter box, as a MedSAM user would:
  - the click's slice holds no target (a leak past the structure's end): the 3D box's nearest
    slice-axis face moves just past that slice (1 action);
  - an include click outside the 3D box: the nearest faces move out to take it in (1 action);
  - otherwise: a new 2D box on the click's slice, the target's extent there plus the margin
    (2 actions; Dice after the first of the two is the previous Dice). That slice becomes an
    extra propagation seed (propagate_box's `anchors`).
  The box is re-run after each edit; slice encodings are cached, so an edit costs decoder time.
Dice is on the stored grid of the image, as for SAM-Med3D.

Rows have the evaluation's format (lib.evaluation.report) with mode="medsam-box", so they merge
into its summary, CSV, markdown and PNG unchanged:

    python -m lib.evaluation --model medsam (--data DIR | --image F --label F) [--margin-mm 5] [--weights F]
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..medsam.engine import MedSAMEngine
from ..medsam.predictor import VolumePredictor
from ..medsam.propagate import propagate_box
from .cases import iter_targets
from .clicks import next_click
from .metrics import dice

MODE = "medsam-box"
BOX_ACTIONS = 2  # one box = two clicks (two corners)


def box_from_target(gt: np.ndarray, spacing: Sequence[float], margin_mm: float = 5.0) -> Tuple[int, ...]:
    """Stored ROI (i0, i1, j0, j1, k0, k1) of the target's extent plus margin_mm (>= 1 voxel in-plane
    axes, 0 allowed on a thick axis), clamped to the volume."""
    idx = [np.nonzero(gt.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
    if any(len(i) == 0 for i in idx):
        raise ValueError("empty target: no box to draw")
    roi = []
    for a in range(3):
        m = int(round(margin_mm / float(spacing[a])))
        roi += [max(0, int(idx[a][0]) - m), min(gt.shape[a] - 1, int(idx[a][-1]) + m)]
    return tuple(roi)


def edit_box(roi: Sequence[int], point: Sequence[int], include: bool) -> Tuple[Tuple[int, ...], bool]:
    """Apply one correction click to a stored ROI -> (new roi, restart_here).

    restart_here is True for an include click already inside the box (the box cannot take it in
    further; propagation restarts from its slice instead).
    """
    lo = [roi[0], roi[2], roi[4]]
    hi = [roi[1], roi[3], roi[5]]
    inside = all(lo[a] <= point[a] <= hi[a] for a in range(3))
    if include:
        if inside:
            return tuple(roi), True
        for a in range(3):  # move every face the point lies beyond (the nearest such face per axis)
            lo[a], hi[a] = min(lo[a], point[a]), max(hi[a], point[a])
        return (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]), False
    if not inside:  # a false positive outside the box can only come from clipping being off
        return tuple(roi), False
    # nearest face first (cuts the least); never empties the box on an axis
    cands = sorted([(point[a] - lo[a], a, "lo") for a in range(3)] + [(hi[a] - point[a], a, "hi") for a in range(3)])
    for _, a, side in cands:
        if side == "lo" and point[a] + 1 <= hi[a]:
            lo[a] = point[a] + 1
            break
        if side == "hi" and point[a] - 1 >= lo[a]:
            hi[a] = point[a] - 1
            break
    return (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]), False


def slice_box(gt_plane: np.ndarray, margin_px: int) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a display slice's target plus a margin, clamped to the slice."""
    rows, cols = np.nonzero(gt_plane)
    h, w = gt_plane.shape
    return (max(0, int(cols.min()) - margin_px), max(0, int(rows.min()) - margin_px),
            min(w - 1, int(cols.max()) + margin_px), min(h - 1, int(rows.max()) + margin_px))


def medsam_target_dices(pred: VolumePredictor, gt: np.ndarray, spacing: Sequence[float], num_actions: int = 10,
                        margin_mm: float = 5.0) -> List[Optional[float]]:
    """Dice after each of `num_actions` user actions (None where no result exists yet: action 1)."""
    gt = gt.astype(bool)
    frame = pred.frame
    roi = box_from_target(gt, spacing, margin_mm)
    margin_px = max(1, int(round(margin_mm / float(spacing[frame.row_axis]))))
    out: List[Optional[float]] = [None] * min(num_actions, BOX_ACTIONS - 1)
    if num_actions < BOX_ACTIONS:
        return out
    anchors: Dict[int, Tuple[int, int, int, int]] = {}
    mask = propagate_box(pred, roi, clip_to_roi=True).mask
    out.append(dice(mask, gt))
    while len(out) < num_actions:
        click = next_click(mask, gt, spacing)
        if click is None:
            out.append(out[-1])
            continue
        point, include = click
        s = frame.point_to_frame(point)[0]
        plane = frame.slice_of(gt, s)
        a = frame.slice_axis
        inside = all(roi[2 * b] <= point[b] <= roi[2 * b + 1] for b in range(3))
        if not plane.any():  # leak past the structure's end: pull the nearest slice face in
            roi = _cut_slice_face(roi, a, point[a])
        elif include and not inside:
            roi, _ = edit_box(roi, point, include=True)
        else:
            anchors[s] = slice_box(plane, margin_px)
            out.append(out[-1])  # first corner of the new box
            if len(out) == num_actions:
                break
        mask = propagate_box(pred, roi, clip_to_roi=True, anchors=anchors).mask
        out.append(dice(mask, gt))
    return out[:num_actions]


def _cut_slice_face(roi: Sequence[int], axis: int, s: int) -> Tuple[int, ...]:
    """Move the slice-axis face nearest to slice s just past it (keeps at least one slice)."""
    r = list(roi)
    lo, hi = r[2 * axis], r[2 * axis + 1]
    if s - lo <= hi - s and s + 1 <= hi:
        r[2 * axis] = s + 1
    elif s - 1 >= lo:
        r[2 * axis + 1] = s - 1
    return tuple(r)


def evaluate_medsam(engine: MedSAMEngine, pairs, values: Optional[Sequence[int]], num_actions: int,
                    margin_mm: float = 5.0, modality: Optional[str] = None, log=print) -> List[Dict]:
    """Rows {mode, case, value, clicks, dice} like lib.evaluation.loop.evaluate (clicks = actions)."""
    rows = []
    for case, image_path, value, gt in iter_targets(pairs, values, log):
        t = time.perf_counter()
        entry_spacing = engine.volume(image_path).image.GetSpacing()
        pred, window = engine.predictor_for(image_path, box_from_target(gt, entry_spacing, margin_mm), modality)
        dices = medsam_target_dices(pred, gt, entry_spacing, num_actions, margin_mm)
        log(f"  [{MODE}] {case} label {value} ({window}): "
            + " ".join("-" if d is None else f"{d:.3f}" for d in dices) + f"  ({time.perf_counter() - t:.1f}s)")
        rows += [dict(mode=MODE, case=case, value=value, clicks=n + 1, dice=d)
                 for n, d in enumerate(dices) if d is not None]
    return rows

