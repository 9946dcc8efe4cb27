"""Per-label interactive state: applied clicks, the crops in use and their logits; and CropEmbedding, one
encoded crop as the engine hands it to active-learning scoring.

A label (segment) of an image owns one or more 128^3 crops on the model grid. Crops sit on a
lattice anchored at the first crop with a step of half a crop (50 % overlap, as the SAM-Med3D
paper's sliding window), so the low-res logits of neighbours line up cell for cell.
Updating a crop replaces its CropState (logits tensors are never modified in place), so the copy
that rolls a failed request back (`checkpoint`) is shallow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import torch

from .local_update import ShownMask, union_box
from .points import Click, Point

if TYPE_CHECKING:  # geometry reads SimpleITK; the state needs only the name
    from .geometry import ModelGrid
    from .local_update import LocalUpdate

Origin = Tuple[int, int, int]
SHOWN_KEPT = 32  # shown masks a label keeps for undo (packed bounding boxes)


@dataclass(frozen=True)
class CropState:
    """One crop of a label: where it is, its last low-res logits, and growth seed points."""

    origin: Origin  # model-grid index of the crop's voxel (0, 0, 0)
    logits: torch.Tensor  # (1, 1, 32, 32, 32) float32, last decoder output (zeros before any)
    seeds: Tuple[Tuple[Point, int], ...] = ()  # prompts in crop coords added when the crop grew
    decoded: bool = False

    @classmethod
    def fresh(cls, origin, zeros: torch.Tensor) -> "CropState":
        """A crop not decoded yet, from `zeros` logits."""
        return cls(tuple(int(x) for x in origin), zeros, (), False)


class CropMask:
    """A crop's pasted mask as memoised by SegmentationEngine._crop_mask (sized for its byte-bounded
    cache): valid while the label's crop is this very CropState and the prompts in it are `prompts`."""

    def __init__(self, crop: CropState, prompts: tuple, piece):
        self.crop, self.prompts, self.piece = crop, prompts, piece  # piece: (slices, uint8 box) or None
        # the crop state is held too (its logits: what the identity check keeps alive)
        self.nbytes = 1024 + crop.logits.element_size() * crop.logits.numel() + \
            (piece[1].nbytes if piece is not None else 0)


@dataclass
class LabelState:
    """Clicks (stored indices) as applied, and the crops."""

    volume_key: Tuple
    model_version: str
    image_path: str
    fg: List[Point] = field(default_factory=list)
    bg: List[Point] = field(default_factory=list)
    applied: List[Click] = field(default_factory=list)  # in the order they were applied
    crops: Dict[Origin, CropState] = field(default_factory=dict)
    anchor: Optional[Origin] = None  # origin of the first crop: the lattice's anchor
    shown: Optional["ShownMask"] = None  # the mask last returned, when the engine has a click update
    # the mask returned for each click lists (fg, bg) of this label's recent requests: an undo or an edited
    # click restarts the label, and a request whose clicks were shown before gets that mask back
    shown_for: Dict[tuple, "ShownMask"] = field(default_factory=dict)
    # whether the model's last decodes were all its plain box competition (lib.session.plain_region)
    plain: bool = False
    # the warped atlas structure that answers this label (lib.session.atlas_prior.Nucleus), decided at its first
    # include click and grown by later ones
    atlas: Optional[tuple] = None
    atlas_click: Optional[Point] = None
    atlas_seen: int = 0  # how many of its include clicks the atlas has read

    def checkpoint(self) -> tuple:
        """Everything mutable, for rolling a failed request back (see `restore`)."""
        return (list(self.fg), list(self.bg), list(self.applied), dict(self.crops), self.anchor, self.shown,
                dict(self.shown_for), self.plain)

    def restore(self, saved: tuple) -> None:
        self.fg, self.bg, self.applied, self.crops, self.anchor, self.shown, self.shown_for, self.plain = saved

    def carry_shown(self, old: Optional["LabelState"], fg: List[Point], bg: List[Point]) -> None:
        """On a restart from `old` (same volume and model) to the clicks (fg, bg): keep the masks shown for
        click lists that are prefixes of these (the ones an undo can come back to)."""
        if old is not None:
            self.shown_for = {k: v for k, v in old.shown_for.items()
                              if tuple(fg[:len(k[0])]) == k[0] and tuple(bg[:len(k[1])]) == k[1]}

    def show(self, proposed: np.ndarray, boxes, local: Optional["LocalUpdate"], new: Optional[List[Click]],
             spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
        """The mask to return for `proposed` (uint8, the union of the crops pasted at `boxes`) after the
        clicks `new` (None: the label restarted): with `local`, the shown mask changed only as those clicks
        ask (lib.session.local_update; `spacing`: the stored grid's, mm), written into `proposed` in place; the
        result is kept as shown."""
        if local is None:
            return proposed
        key = (tuple(self.fg), tuple(self.bg))
        if new is not None and self.shown is not None:
            proposed, self.shown = local.update(self.shown, proposed, boxes, new, spacing)
        elif new is None and key in self.shown_for:  # an undo: what these clicks showed before
            self.shown = self.shown_for[key]
            proposed[...] = 0
            if self.shown.box is not None:
                proposed[self.shown.box] = self.shown.piece
        else:
            region = union_box(boxes)
            self.shown = ShownMask(proposed[region], region, proposed.shape) if region else ShownMask(proposed)
        self.shown_for.pop(key, None)
        self.shown_for[key] = self.shown
        while len(self.shown_for) > SHOWN_KEPT:  # the oldest first (dicts keep insertion order)
            self.shown_for.pop(next(iter(self.shown_for)))
        return proposed

    def record(self, click: Click) -> None:
        point, lab = click
        (self.fg if lab == 1 else self.bg).append(point)
        self.applied.append(click)


class CropEmbedding:
    """One encoded 128^3 crop of the model grid: `embedding` (1, C, s, s, s) on the engine's
    device, the crop's first grid voxel `origin`, and `to_crop` mapping stored voxel indices to
    the crop's continuous coordinates (tensor-axis order, what the decoder takes)."""

    def __init__(self, origin, embedding: torch.Tensor, grid: ModelGrid, crop: int):
        self.origin = tuple(int(x) for x in origin)
        self.embedding = embedding
        self.grid = grid
        self.crop = int(crop)

    def to_crop(self, points) -> np.ndarray:
        """(N, 3) stored indices -> (N, 3) crop coordinates."""
        return self.grid.stored_to_grid(np.asarray(points, dtype=np.float64)) - np.array(self.origin, dtype=np.float64)
