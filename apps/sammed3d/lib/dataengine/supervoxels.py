"""Supervoxel-derived targets on real volumes (ScribblePrompt's idea, in 3D).

SLIC supervoxels follow real intensity edges; a target is a connected set of neighbouring
supervoxels of similar mean intensity, grown from a random seed. The model so learns to follow
boundaries of any real texture, not only those of the few structures with manual labels.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
from skimage.segmentation import slic


def compute_supervoxels(image: np.ndarray, n_segments: int, compactness: float = 0.1,
                        mask: np.ndarray = None) -> np.ndarray:
    """(D, H, W) intensities -> (D, H, W) int32 supervoxel ids (0 = outside `mask`, ids from 1).

    Intensities are scaled to [0, 1] by the 1st-99th percentiles first, so one compactness works
    for CT and MR alike.
    """
    lo, hi = np.percentile(image, [1, 99])
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    return slic(scaled, n_segments=n_segments, compactness=compactness, channel_axis=None,
                mask=mask, start_label=1, enforce_connectivity=True).astype(np.int32)


class SupervoxelGraph:
    """Supervoxel adjacency, sizes and mean intensities; draws random connected regions."""

    def __init__(self, labels: np.ndarray, image: np.ndarray, seed_mask: np.ndarray = None):
        """`seed_mask`: regions start only in supervoxels mostly inside it (e.g. tissue, not air)."""
        self.labels = labels
        n = int(labels.max()) + 1
        flat = labels.reshape(-1)
        self.size = np.bincount(flat, minlength=n).astype(np.float64)
        self.mean = np.bincount(flat, weights=image.reshape(-1).astype(np.float64), minlength=n) / np.maximum(self.size, 1)
        self.spread = float(np.std(self.mean[1:])) if n > 2 else 1.0
        pairs = []
        for axis in range(3):
            a = np.moveaxis(labels, axis, 0)
            x, y = a[:-1].reshape(-1), a[1:].reshape(-1)
            sel = (x != y) & (x > 0) & (y > 0)
            pairs.append(np.stack([x[sel], y[sel]], 1))
        p = np.unique(np.concatenate(pairs), axis=0)
        self.neighbours: Dict[int, List[int]] = {}
        for a, b in p:
            self.neighbours.setdefault(int(a), []).append(int(b))
            self.neighbours.setdefault(int(b), []).append(int(a))
        ids = np.array(sorted(self.neighbours), dtype=np.int64)
        if seed_mask is not None:
            inside = np.bincount(flat, weights=seed_mask.reshape(-1).astype(np.float64), minlength=n)
            keep = ids[inside[ids] > 0.5 * self.size[ids]]
            ids = keep if len(keep) else ids
        self.ids = ids

    def random_region(self, rs: np.random.Generator, max_parts: int, tolerance: float) -> np.ndarray:
        """Ids of a connected region: from a random seed, repeatedly add the neighbour whose mean
        intensity is closest to the region's, while it is within `tolerance` x the spread of
        supervoxel means (so regions stay inside one tissue) and the region has < max_parts."""
        seed = int(self.ids[rs.integers(len(self.ids))])
        region = {seed}
        frontier = set(self.neighbours.get(seed, ()))
        target = int(rs.integers(1, max_parts + 1))
        while len(region) < target and frontier:
            ref = np.average(self.mean[list(region)], weights=self.size[list(region)])
            cand = np.array(sorted(frontier))
            diff = np.abs(self.mean[cand] - ref)
            best = int(cand[np.argmin(diff + rs.random(len(cand)) * 0.05 * self.spread)])
            if abs(self.mean[best] - ref) > tolerance * self.spread:
                break
            region.add(best)
            frontier.discard(best)
            frontier.update(n for n in self.neighbours.get(best, ()) if n not in region)
        return np.array(sorted(region), dtype=np.int64)
