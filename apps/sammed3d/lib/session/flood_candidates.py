"""The first click's intensity flood at several levels: candidates beside the box margins for the first click.

Why: with one click the classical box region fills about half its box, so its answer is only as good as the
box margin chosen (lib.session.margin_choice). A flood of the clicked intensity over a coarse grid is bounded by
the image instead: on the 54 development targets the flood at its best level per target gives a mean Dice of
0.671 after one click against default-v11's 0.511, but no hand rule finds that level (the plateau rule fires on
36 of 54 with 0.374 there; docs/default_model.md, "Seventeenth run"). So the flood's levels become candidates
of the same learned choice as the margins, each with the features the margin candidates have
(lib.session.margin_choice.own_features) measured on the flood's grid.

What: a window of `reach_mm` around the click, averaged to a `grid_mm` grid, normalised as the classical region
is (lib.session.classical_region.normalise_roi); the step cost of lib.model.flood_region.FloodRegion (the
click's 3^3 median and robust spread, a one-sigma dead zone, beta 2); the geodesic distance from the click;
the candidate at level L is {distance < L} (L in cells of the grid at cost 1), brought back to the stored grid by
interpolating the distance (only for the candidate chosen).

    FloodField.solve(image (i, j, k), ct, spacing, point (i, j, k)) -> FloodField
    field.features(levels) -> (n, len(FLOOD_FEATURES)) float array    (on the grid; cheap)
    field.region(level) -> (box slices on the stored grid, bool region in it)
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from lib.model.flood_region import FloodRegion, click_statistics
from lib.model.geodesic_graph import geodesic_from

from .classical_region import normalise_roi
from .margin_choice import FLOOD_FEATURES, own_features

GRID_MM = 2.0
REACH_MM = 100.0
LEVELS = tuple(round(float(v), 4) for v in np.geomspace(4, 256, 13))  # what the candidate tables hold (cells)
_FLOOD = FloodRegion(beta=2.0, tolerance=1.0, max_sigma=np.inf)


class FloodField:
    """The flood distance of one click on the coarse window (see the module doc)."""

    def __init__(self, window: Tuple[slice, ...], zoom: np.ndarray, data: np.ndarray, distance: np.ndarray,
                 sigma: float, ct: bool, shape: Sequence[int]):
        self.window, self.zoom, self.data, self.distance = window, zoom, data, distance
        self.sigma, self.ct, self.shape = float(sigma), bool(ct), tuple(shape)

    @classmethod
    def solve(cls, image: np.ndarray, ct: bool, spacing: Sequence[float], point: Sequence[int],
              grid_mm: float = GRID_MM, reach_mm: float = REACH_MM) -> "FloodField":
        import torch
        import torch.nn.functional as F

        sp = np.asarray(spacing, dtype=np.float64)
        p = np.asarray(point, dtype=np.int64)
        reach = np.ceil(reach_mm / sp).astype(np.int64)
        lo, hi = np.maximum(p - reach, 0), np.minimum(p + reach + 1, image.shape)
        window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        crop = np.ascontiguousarray(image[window], dtype=np.float32)
        size = [max(1, int(round(n * s / grid_mm))) for n, s in zip(crop.shape, sp)]
        small = F.adaptive_avg_pool3d(torch.from_numpy(crop)[None, None], size)[0, 0].numpy()
        zoom = np.array(size, dtype=np.float64) / np.array(crop.shape)  # grid cells per stored voxel
        data = normalise_roi(small, ct, (grid_mm,) * 3, 0.0)
        cell = np.minimum(np.floor((p - lo) * zoom).astype(np.int64), np.array(size) - 1)
        mu, sigma = click_statistics(data, cell[None])
        distance = geodesic_from(_FLOOD.cost(data, mu, sigma), cell[None])
        return cls(window, zoom, data, distance, sigma, ct, image.shape)

    def features(self, levels: Sequence[float]) -> np.ndarray:
        """(len(levels), len(FLOOD_FEATURES)): margin_choice's features of each level's region on the grid (box =
        the window, so `touch` is the share of its shell on the window's faces inside the image, `fill` its share
        of the window), grow_next / overlap_next against the next level, and the flood's own columns."""
        grid = (GRID_MM,) * 3
        grad = np.sqrt(sum(g ** 2 for g in np.gradient(self.data, *grid)))
        whole = tuple(slice(0, n) for n in self.data.shape)
        inner = _inner_faces(self.window, self.shape)
        regions = [self.distance < float(level) for level in levels]
        rows = []
        for i, (level, region) in enumerate(zip(levels, regions)):
            r = own_features(whole, region, self.data, grid, self.data.shape, grad=grad, inner=inner)
            r["ct"] = float(self.ct)
            if region.all():  # no shell in the window: it runs past every face that lies inside the image
                r["touch"] = float(any(lo or hi for lo, hi in inner))
            n, nxt = region.sum(), regions[i + 1].sum() if i + 1 < len(regions) else None
            r["log_margin"], r["ct_log_margin"] = 0.0, 0.0
            r["grow_next"] = float(np.log((nxt + 1.0) / (n + 1.0))) if nxt is not None else 0.0
            r["overlap_next"] = 1.0  # the levels are nested
            r["flood"], r["flood_log_level"] = 1.0, float(np.log(float(level) / 16.0))
            r["flood_log_sigma"] = float(np.log(self.sigma / 0.3))
            rows.append(r)
        best = max([r["contrast"] for r in rows] + [1e-6])
        for r in rows:
            r["contrast_rel"] = r["contrast"] / best
            r["ct_contrast_rel"] = r["ct"] * r["contrast_rel"]
            r["flood_contrast_rel"], r["flood_touch"] = r["contrast_rel"], r["touch"]
        return np.array([[r.get(f, 0.0) for f in FLOOD_FEATURES] for r in rows], dtype=np.float64)

    def region(self, level: float) -> Tuple[Tuple[slice, ...], np.ndarray]:
        """The region {distance < level} on the stored grid: (its box, the bool region in the box), the distance
        interpolated (trilinear) from the grid's cell centres to the stored voxels of the region's box."""
        import torch
        import torch.nn.functional as F

        cells = np.argwhere(self.distance < float(level))  # the click's own cell at least (distance 0, level > 0)
        c_lo, c_hi = np.maximum(cells.min(0) - 1, 0), np.minimum(cells.max(0) + 2, self.distance.shape)
        w_lo = np.array([w.start for w in self.window])
        w_n = np.array([w.stop - w.start for w in self.window])
        v_lo = np.maximum(np.floor(c_lo / self.zoom).astype(np.int64), 0)
        v_hi = np.minimum(np.ceil(c_hi / self.zoom).astype(np.int64), w_n)
        # cell centres of the voxels v_lo..v_hi in grid coordinates, sampled with grid_sample (align_corners=False)
        axes = [(np.arange(a, b) + 0.5) * z - 0.5 for a, b, z in zip(v_lo, v_hi, self.zoom)]
        finite = np.where(np.isfinite(self.distance), self.distance, 1e6).astype(np.float32)
        norm = [torch.from_numpy((2.0 * (x + 0.5) / n - 1.0).astype(np.float32)) for x, n in
                zip(axes, self.distance.shape)]
        gi, gj, gk = torch.meshgrid(*norm, indexing="ij")
        grid = torch.stack([gk, gj, gi], -1)[None]  # grid_sample wants (x, y, z) = (k, j, i)
        d = F.grid_sample(torch.from_numpy(finite)[None, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0, 0].numpy()
        box = tuple(slice(int(w_lo[a] + v_lo[a]), int(w_lo[a] + v_hi[a])) for a in range(3))
        return box, d < float(level)


def _inner_faces(window: Tuple[slice, ...], shape: Sequence[int]):
    """Per axis, whether the window's low / high face lies inside the image."""
    return [(w.start > 0, w.stop < int(n)) for w, n in zip(window, shape)]
