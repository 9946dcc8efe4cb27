"""A correction click changes the mask the way it asks: an include click only adds, an exclude click only
removes, and (mode "piece") only where it was placed.

Why: the model re-decodes every crop a click falls in from all the clicks so far, so a click that fixes
one edge can also move another one the user had already accepted (development cases, default-v6: a chest
phantom's lung 0.93 -> 0.79 at its fifth click, a phantom object 0.69 -> 0.61 at its fourth); an annotator
then has to chase a mistake the tool made, not one they asked about. (A click whose own change is wrong,
e.g. a test-table caudate 0.56 -> 0.17 at its second click, is not undone by this.)

What: of what the model now proposes, only the change the click's sign asks for is taken

    added   = proposed & ~shown        an include click takes `added`            ("monotone")
    removed = shown & ~proposed        an exclude click drops `removed`
                                       ... or only the connected piece the click lies in ("piece",
                                       FocalClick's progressive merge, Chen et al., CVPR 2022)

and everything else stays as shown. A first click, a reset, edited clicks and a new model take the
proposal whole (there is no accepted mask to keep); so does a click the model did not follow at its own
voxel (keeping the shown mask would leave the user clicking the same spot for ever). An undo gets back the
mask those clicks showed (lib.session.state.LabelState.shown_for).
Measured on the development cases (docs/default_model.md, "Ninth run"): "monotone" chosen.

With a focus (`local_update_focus` [factor, minimum mm, share]; twenty-third run), a change larger than `share` of
the shown mask is kept within factor x the click's distance to the shown mask's nearest voxel that already has the
click's label (at least the minimum) of the click: the simulated annotator, like a user, clicks the middle of an
error, so that distance says how large the error is, and a click by the edge cannot flood what lies around the
structure (development: a 4 mm nodule grown to 13 times its size by an include click beside two exclude clicks).

    LocalUpdate(mode)(shown (Z, Y, X) bool, proposed (Z, Y, X) bool, clicks [((z, y, x), 1|0)]) -> bool mask
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .points import ball_mask, voxel_indices

MODES = ("monotone", "piece")
# --conf local_update / --local-update: "auto" serves what the model's config asks for (local_update)
LOCAL_SWITCH = ("auto", "off") + MODES
Box = Tuple[slice, slice, slice]
Click = Tuple[Sequence[float], int]  # (voxel index, 1 include / 0 exclude)
# pieces that touch along an edge or a corner are one change (a thin structure's voxels often do)
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


class LocalUpdate:
    """Merge the model's proposal into the shown mask for the new clicks (see the module doc)."""

    def __init__(self, mode: str = "monotone", focus: Optional[Sequence[float]] = None):
        if mode not in MODES:
            raise ValueError(f"local_update must be one of {', '.join(MODES)}, got {mode!r}")
        if focus is not None and not (len(focus) in (2, 3) and all(float(v) >= 0 for v in focus)
                                      and float(focus[0]) > 0 and float(focus[1]) > 0):
            raise ValueError(f"local_update_focus must be None or [factor > 0, minimum mm > 0(, share >= 0)], "
                             f"got {focus!r}")
        self.mode = mode
        self.focus = None if focus is None else (float(focus[0]), float(focus[1]),
                                                 float(focus[2]) if len(focus) > 2 else 0.0)

    def __call__(self, shown: np.ndarray, proposed: np.ndarray, clicks: Sequence[Click],
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """shown, proposed: (Z, Y, X) bool; clicks: (voxel index, 1 include / 0 exclude) -> the mask to show."""
        out = shown.copy()
        for point, lab in clicks:
            idx = tuple(voxel_indices([point])[0])
            want = lab == 1
            if any(not 0 <= i < n for i, n in zip(idx, shown.shape)):  # beyond both masks: empty in each
                if want:
                    return proposed.copy()  # an include click the model did not follow
                continue
            if shown[idx] != want != proposed[idx]:
                return proposed.copy()  # the model did not follow the click at its voxel
            change = (proposed & ~shown) if want else (shown & ~proposed)
            if self.focus is not None and change.sum() > self.focus[2] * shown.sum():  # a large change only
                change &= ball_mask(shown.shape, idx, self._reach(shown, idx, want, spacing), spacing)
            if self.mode == "monotone":
                out[change] = want
            elif change[idx]:  # "piece"; a click on a voxel that already had its label asks for nothing here
                out[_component_at(change, idx)] = want
        return out

    def _reach(self, shown: np.ndarray, idx, want: bool, spacing) -> float:
        """How far from the click its change may reach (mm): `focus` = (factor, minimum): the factor times the
        click's distance to the shown mask's nearest voxel that already has the click's label (the annotator
        clicks the middle of an error, so that distance is about the error's own size), at least the minimum;
        inf where the grid holds no such voxel."""
        factor, least = self.focus[:2]
        spacing = np.asarray(spacing, dtype=np.float64)
        target = shown if want else ~shown
        half = np.ceil(least / spacing).astype(int)
        while True:  # a growing window: the nearest such voxel is usually close
            lo = np.maximum(np.asarray(idx) - half, 0)
            hi = np.minimum(np.asarray(idx) + half + 1, shown.shape)
            found = np.argwhere(target[tuple(slice(a, b) for a, b in zip(lo, hi))])
            if len(found):
                d = np.sqrt((((found + lo - np.asarray(idx)) * spacing) ** 2).sum(1)).min()
                if d <= (half * spacing).min():  # nearer than any voxel outside the window
                    return max(least, factor * float(d))
            if (lo == 0).all() and (hi == np.asarray(shown.shape)).all():
                return max(least, factor * float(d)) if len(found) else np.inf
            half = half * 2

    def update(self, shown: "ShownMask", proposed: np.ndarray, boxes: Sequence[Box],
               clicks: Sequence[Click], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Tuple[np.ndarray, "ShownMask"]:
        """The same on a volume: `proposed` (uint8, full size, zero outside `boxes`, the pasted crops) is
        changed in place to the mask to show. The work is done inside the box holding both masks (a whole
        CT's voxels, every click, would cost a second). -> (proposed, what to keep as shown)"""
        region = union_box(list(boxes) + ([shown.box] if shown.box is not None else []))
        if region is None:
            return proposed, ShownMask(proposed)
        offset = np.array([s.start for s in region])
        local = [(np.asarray(p, dtype=np.float64) - offset, lab) for p, lab in clicks]
        merged = self(shown.full(region), proposed[region].astype(bool), local, spacing)
        proposed[region] = merged
        return proposed, ShownMask(merged, region, proposed.shape)

    def describe(self) -> str:
        focus = "" if self.focus is None else (f", within {self.focus[0]:g} times the click's distance to the shown "
                                               f"edge (at least {self.focus[1]:g} mm) of it")
        return {"monotone": "monotone (an include click only adds, an exclude only removes",
                "piece": "piece (a click changes only the connected piece it lies in"}[self.mode] + focus + ")"


class ShownMask:
    """The mask a label last returned, kept as its bounding box packed 8 voxels a byte (a structure is a
    small part of a volume, and a server holds one per label). ShownMask(mask) for a whole volume's mask,
    ShownMask(sub, region, shape) for `sub` = mask[region]."""

    def __init__(self, mask: np.ndarray, region: Optional[Box] = None, shape=None):
        self.shape = tuple(shape if shape is not None else mask.shape)
        found = ndimage.find_objects(mask.astype(np.uint8))
        self.box = self._bits = None
        if found:
            inner = found[0]
            self._bits = np.packbits(mask[inner].astype(bool))
            self.box = inner if region is None else \
                tuple(slice(r.start + i.start, r.start + i.stop) for r, i in zip(region, inner))
        self.nbytes = 0 if self._bits is None else self._bits.nbytes

    @property
    def piece(self) -> Optional[np.ndarray]:
        """The mask inside `box` (bool), unpacked."""
        if self.box is None:
            return None
        size = tuple(b.stop - b.start for b in self.box)
        return np.unpackbits(self._bits, count=int(np.prod(size))).reshape(size).view(bool)

    def full(self, region: Optional[Box] = None) -> np.ndarray:
        """The mask as bool, on the volume or on its `region` (slices with starts and stops)."""
        region = region or tuple(slice(0, n) for n in self.shape)
        out = np.zeros(tuple(r.stop - r.start for r in region), dtype=bool)
        if self.box is not None:
            inter = [slice(max(b.start, r.start), min(b.stop, r.stop)) for b, r in zip(self.box, region)]
            if all(i.start < i.stop for i in inter):
                dst = tuple(slice(i.start - r.start, i.stop - r.start) for i, r in zip(inter, region))
                src = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, self.box))
                out[dst] = self.piece[src]
        return out


def union_box(boxes: Sequence[Box]) -> Optional[Box]:
    """The smallest box (slices) holding every box in `boxes`; None for none."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _component_at(mask: np.ndarray, point: Tuple[int, ...]) -> np.ndarray:
    """The connected piece of `mask` containing `point`, labelled only over `mask`'s bounding box (the
    change is usually a small part of the region)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]  # mask[point] is True, so there is one
    labels, _ = ndimage.label(mask[box], structure=_CONNECTIVITY)
    piece = np.zeros(mask.shape, dtype=bool)
    piece[box] = labels == labels[tuple(p - s.start for p, s in zip(point, box))]
    return piece


def resolve_local(mode: Optional[str], config: Optional[dict]) -> Optional[LocalUpdate]:
    """--conf local_update / --local-update `mode` for a model whose config is `config`: "auto" (or None)
    the config's local_update (absent or None: off, so the released SAM-Med3D answers as its public code),
    "off", or a mode of MODES."""
    mode = str(mode or "auto").strip().lower()
    if mode not in LOCAL_SWITCH:
        raise ValueError(f"local_update must be one of {', '.join(LOCAL_SWITCH)}, got {mode!r}")
    if mode == "auto":
        mode = (config or {}).get("local_update") or "off"
    return None if mode == "off" else LocalUpdate(mode, (config or {}).get("local_update_focus"))
