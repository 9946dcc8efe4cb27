"""Per-label interactive state: applied clicks, the crops in use and their logits, undo history.

A label (segment) of an image owns one or more 128^3 crops on the model grid. Crops sit on a
lattice anchored at the first crop with a step of half a crop (50 % overlap, as the SAM-Med3D
paper's sliding window), so the low-res logits of neighbours line up cell for cell.
States are immutable in the parts the history shares: updating a crop replaces its CropState,
so a snapshot is a shallow copy (logits tensors are never modified in place).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .points import Click, Point

Origin = Tuple[int, int, int]
MAX_HISTORY = 100  # undo depth; each step holds a few 128 KB logits tensors at most


@dataclass(frozen=True)
class CropState:
    """One crop of a label: where it is, its last low-res logits, and growth seed points."""

    origin: Origin  # model-grid index of the crop's voxel (0, 0, 0)
    logits: torch.Tensor  # (1, 1, 32, 32, 32) float32, last decoder output (zeros before any)
    seeds: Tuple[Tuple[Point, int], ...] = ()  # prompts in crop coords added when the crop grew
    decoded: bool = False


@dataclass
class LabelState:
    """Clicks (stored indices) as applied, the crops, and snapshots for undo."""

    volume_key: Tuple
    model_version: str
    image_path: str
    fg: List[Point] = field(default_factory=list)
    bg: List[Point] = field(default_factory=list)
    applied: List[Click] = field(default_factory=list)  # in the order they were applied
    crops: Dict[Origin, CropState] = field(default_factory=dict)
    anchor: Optional[Origin] = None  # origin of the first crop: the lattice's anchor
    history: List[tuple] = field(default_factory=list)

    def snapshot(self) -> None:
        """Remember the current state so the next click can be undone."""
        self.history.append((list(self.fg), list(self.bg), list(self.applied), dict(self.crops), self.anchor))
        if len(self.history) > MAX_HISTORY:
            del self.history[0]

    def undo(self) -> bool:
        """Restore the state before the last click; False when there is nothing to undo."""
        if not self.history:
            return False
        self.fg, self.bg, self.applied, self.crops, self.anchor = self.history.pop()
        return True

    def checkpoint(self) -> tuple:
        """Everything mutable, for rolling a failed request back (see `restore`)."""
        return (list(self.fg), list(self.bg), list(self.applied), dict(self.crops), self.anchor, list(self.history))

    def restore(self, saved: tuple) -> None:
        self.fg, self.bg, self.applied, self.crops, self.anchor, self.history = saved

    def record(self, click: Click) -> None:
        point, lab = click
        (self.fg if lab == 1 else self.bg).append(point)
        self.applied.append(click)
