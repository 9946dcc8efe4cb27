"""Where the prompts of an UNLABELED volume come from (it has no clicks of its own to score).

In order of preference (the first source that yields a point wins; docs/activelearning.md):

1. Earlier clicks stored with the image in the datastore (image info key `sammed3d_clicks`:
   {segment: {"foreground": [[i, j, k], ...], "background": [...]}}): the first include click of
   each segment -- where an annotator actually started.
2. An "original" label (MONAI Label's tag for labels that came with the data or from a model):
   the centre of each structure (the evaluation click rule's first click).
3. A location prior learned from the FINAL labels: for every label value, the mean position of
   its structure's centroid, normalised to the volume's field of view in RAS ([0, 1]^3 along R,
   A, S, so it transfers across orientations, spacings and sizes). Mapped back into each
   unlabeled volume's field of view.
4. No final label yet: the centre of the volume.

Pure numpy (index <-> RAS maps: lib.session.geometry); no MONAI Label imports.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..evaluation.clicks import first_click
from ..session.geometry import ras_box, ras_to_stored, stored_to_ras

CLICKS_KEY = "sammed3d_clicks"


def normalised_position(point_ijk, shape, affine) -> np.ndarray:
    lo, hi = ras_box(shape, affine)
    ras = stored_to_ras(point_ijk, affine)
    return (ras - lo) / np.maximum(hi - lo, 1e-6)


def stored_point(fraction, shape, affine) -> List[int]:
    """Normalised RAS position -> nearest stored voxel index inside the volume."""
    lo, hi = ras_box(shape, affine)
    ras = lo + np.asarray(fraction, dtype=np.float64) * (hi - lo)
    ijk = ras_to_stored(ras, affine)
    return [int(np.clip(np.rint(v), 0, n - 1)) for v, n in zip(ijk, shape)]


def structure_centres(label: np.ndarray, max_structures: int = 3, min_voxels: int = 10) -> List[Tuple[int, List[int]]]:
    """[(value, centre (i, j, k))] of the largest structures of a label array (stored order)."""
    values, counts = np.unique(label[label > 0], return_counts=True)
    order = np.argsort(-counts, kind="mergesort")
    out = []
    for idx in order[:max_structures]:
        if counts[idx] < min_voxels:
            break
        c = first_click(label == values[idx])
        if c is not None:
            out.append((int(values[idx]), [int(x) for x in c[0]]))
    return out


class LocationPrior:
    """Mean normalised RAS position of each label value's structure over the labelled volumes."""

    def __init__(self):
        self.sums: Dict[int, np.ndarray] = {}
        self.counts: Dict[int, int] = {}

    def add(self, label: np.ndarray, affine: np.ndarray, max_structures: int = 8) -> None:
        """Add one labelled volume (label array in stored order, its RAS affine)."""
        for value, _ in structure_centres(label, max_structures):
            pts = np.argwhere(label == value)
            centroid = pts.mean(0)
            f = normalised_position(centroid, label.shape, affine)
            self.sums[value] = self.sums.get(value, np.zeros(3)) + f
            self.counts[value] = self.counts.get(value, 0) + 1

    def add_position(self, value: int, fraction) -> None:
        """Add one structure's normalised RAS centroid directly (callers that know it already)."""
        self.sums[value] = self.sums.get(value, np.zeros(3)) + np.asarray(fraction, dtype=np.float64)
        self.counts[value] = self.counts.get(value, 0) + 1

    @classmethod
    def fit(cls, labelled: Iterable[Tuple[np.ndarray, np.ndarray]]) -> "LocationPrior":
        prior = cls()
        for label, affine in labelled:
            prior.add(label, affine)
        return prior

    def __len__(self) -> int:
        return sum(self.counts.values())

    def fractions(self, max_prompts: int = 3) -> List[np.ndarray]:
        """The most often labelled values' mean positions (the volume centre when nothing is known)."""
        if not self.counts:
            return [np.full(3, 0.5)]
        values = sorted(self.counts, key=lambda v: (-self.counts[v], v))[:max_prompts]
        return [self.sums[v] / self.counts[v] for v in values]

    def points(self, shape, affine, max_prompts: int = 3) -> List[List[int]]:
        return [stored_point(f, shape, affine) for f in self.fractions(max_prompts)]

    def to_json(self) -> Dict[str, list]:
        return {str(v): [int(self.counts[v])] + [float(x) for x in self.sums[v] / self.counts[v]] for v in self.counts}


def clicks_from_info(info: Dict, max_prompts: int = 3) -> List[List[float]]:
    """First include click of each segment recorded in the image info (source 1)."""
    out = []
    clicks = info.get(CLICKS_KEY) or {}
    if isinstance(clicks, dict):
        for seg in sorted(clicks):
            fg = (clicks[seg] or {}).get("foreground") or []
            if fg and len(fg[0]) == 3:
                out.append([float(x) for x in fg[0]])
    return out[:max_prompts]


def choose_prompts(info: Dict, shape, affine, original_label: Optional[np.ndarray], prior: Optional[LocationPrior],
                   max_prompts: int = 3) -> Tuple[str, List[List[float]]]:
    """(source name, include points in stored voxel indices) for one unlabeled volume."""
    pts = clicks_from_info(info, max_prompts)
    if pts:
        return "clicks", pts
    if original_label is not None:
        pts = [c for _, c in structure_centres(original_label, max_prompts)]
        if pts:
            return "original", pts
    if prior is not None and len(prior):
        return "prior", prior.points(shape, affine, max_prompts)
    return "centre", [[(n - 1) / 2.0 for n in shape]]
