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

    LocalUpdate(mode)(shown (Z, Y, X) bool, proposed (Z, Y, X) bool, clicks [((z, y, x), 1|0)]) -> bool mask
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .points import voxel_indices

MODES = ("monotone", "piece")
# --conf local_update / --local-update: "auto" serves what the model's config asks for (local_update)
LOCAL_SWITCH = ("auto", "off") + MODES
Box = Tuple[slice, slice, slice]
Click = Tuple[Sequence[float], int]  # (voxel index, 1 include / 0 exclude)
# pieces that touch along an edge or a corner are one change (a thin structure's voxels often do)
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


class LocalUpdate:
    """Merge the model's proposal into the shown mask for the new clicks (see the module doc)."""

    def __init__(self, mode: str = "monotone"):
        if mode not in MODES:
            raise ValueError(f"local_update must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def __call__(self, shown: np.ndarray, proposed: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
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
            if self.mode == "monotone":
                out[change] = want
            elif change[idx]:  # "piece"; a click on a voxel that already had its label asks for nothing here
                out[_component_at(change, idx)] = want
        return out

    def update(self, shown: "ShownMask", proposed: np.ndarray, boxes: Sequence[Box],
               clicks: Sequence[Click]) -> Tuple[np.ndarray, "ShownMask"]:
        """The same on a volume: `proposed` (uint8, full size, zero outside `boxes`, the pasted crops) is
        changed in place to the mask to show. The work is done inside the box holding both masks (a whole
        CT's voxels, every click, would cost a second). -> (proposed, what to keep as shown)"""
        region = union_box(list(boxes) + ([shown.box] if shown.box is not None else []))
        if region is None:
            return proposed, ShownMask(proposed)
        offset = np.array([s.start for s in region])
        local = [(np.asarray(p, dtype=np.float64) - offset, lab) for p, lab in clicks]
        merged = self(shown.full(region), proposed[region].astype(bool), local)
        proposed[region] = merged
        return proposed, ShownMask(merged, region, proposed.shape)

    def describe(self) -> str:
        return {"monotone": "monotone (an include click only adds, an exclude only removes)",
                "piece": "piece (a click changes only the connected piece it lies in)"}[self.mode]


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
    return None if mode == "off" else LocalUpdate(mode)
