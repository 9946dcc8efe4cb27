"""Geodesic distance maps of the clicks over the image, on the model's S/4 grid (DeepIGeoS idea).

Why: a convolutional decoder trained for minutes on a CPU has not yet learned where a structure's
edges are; a geodesic distance from the clicks, weighted by the image gradient, already follows
them (the classical geodesic row of the evaluation reaches Dice 0.46 / 0.74 after 1 / 5 clicks on
the development cases). Given as input maps, the decoder starts from that region and learns what
to add (Wang et al., DeepIGeoS, TPAMI 2018, feed the same kind of map to a CNN).

The image enters through one extra embedding channel: the crop's intensity averaged over each
S/4 cell (ClickUNet3D.encode appends it), so the engine's embedding cache holds it and a click
costs two 32^3 shortest-path solves (about 20 ms each on one core), not a pass over the crop.

    maps = GeodesicMaps(gamma=20.0, taus=(3.0, 12.0))
    maps(intensity (B, g, g, g), coords (B, N, 3) crop voxel indices, labels (B, N), cell=4)
        -> (B, 2 * len(taus), g, g, g): exp(-d / tau) from the include clicks, then the exclude
           clicks, for each tau; zeros for a polarity without clicks.

Distances are in cells (the crop grid is isotropic); the local cost of a step is
sqrt(1 + (gamma * |grad I|)^2) per cell, grad taken per cell on the cell-mean intensity,
26-connected (lib.model.geodesic_graph). No parameters: nothing here learns.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .geodesic_graph import geodesic_cost, geodesic_from


class GeodesicSolves:
    """The geodesic work of one decode step, memoised: GeodesicMaps and GeodesicPrior read the same cell
    intensities, so with the same gamma they share the cost field and the include clicks' solve (one
    32^3 solve of about 20 ms saved per click). Keyed by (sample, gamma[, seeds]); make one per step."""

    def __init__(self, intensity: np.ndarray):
        self.intensity = intensity  # (B, g, g, g) float
        self._costs, self._dists = {}, {}

    def cost(self, i: int, gamma: float) -> np.ndarray:
        key = (i, float(gamma))
        if key not in self._costs:
            self._costs[key] = geodesic_cost(self.intensity[i], gamma)
        return self._costs[key]

    def distance(self, i: int, gamma: float, seeds: np.ndarray) -> np.ndarray:
        seeds = np.ascontiguousarray(seeds, dtype=np.int64)
        key = (i, float(gamma), seeds.shape, seeds.tobytes())
        if key not in self._dists:
            self._dists[key] = geodesic_from(self.cost(i, gamma), seeds)
        return self._dists[key]


def _solves(intensity: torch.Tensor, solves: Optional[GeodesicSolves]) -> GeodesicSolves:
    return solves if solves is not None else GeodesicSolves(intensity.detach().float().cpu().numpy())


class GeodesicMaps(nn.Module):
    """Click coordinates + cell intensities -> exp(-geodesic distance / tau) maps (see module doc)."""

    def __init__(self, gamma: float, taus: Sequence[float]):
        super().__init__()
        self.gamma = float(gamma)
        self.taus = [float(t) for t in taus]

    @property
    def num_channels(self) -> int:
        return 2 * len(self.taus)

    def forward(self, intensity: torch.Tensor, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                cell: float = 4.0, solves: Optional[GeodesicSolves] = None) -> torch.Tensor:
        """intensity (B, g, g, g); coords (B, N, 3) crop voxel indices (tensor-axis order) or None;
        labels (B, N) 1 include / 0 exclude (other values ignored); `cell`: voxels per cell;
        `solves`: the step's shared GeodesicSolves (ClickUNet3D.decode passes one)."""
        b, g = intensity.shape[0], intensity.shape[-1]
        out = np.zeros((b, self.num_channels, g, g, g), dtype=np.float32)
        if coords is not None and coords.shape[1] > 0 and self.taus:
            solves = _solves(intensity, solves)
            cells = np.clip(np.floor(coords.detach().float().cpu().numpy() / cell), 0, g - 1).astype(np.int64)
            labs = labels.detach().cpu().numpy()
            for i in range(b):
                for p, polarity in enumerate((1, 0)):
                    seeds = cells[i][labs[i] == polarity]
                    if not len(seeds):
                        continue
                    dist = solves.distance(i, self.gamma, seeds)
                    for t, tau in enumerate(self.taus):
                        out[i, 2 * t + p] = np.exp(-dist / tau)
        return torch.from_numpy(out).to(intensity.device)


def box_face_seeds(cells: np.ndarray, grid: int, margin: int) -> np.ndarray:
    """Seeds (K, 3) on the faces of the clicks' bounding box plus `margin` cells that lie strictly inside
    the grid (a face on or beyond the grid's border is not a seed: the structure may continue past the
    crop), as lib.session.classical_region.roi_box's inner faces."""
    lo, hi = cells.min(0) - margin, cells.max(0) + margin
    axes = [np.arange(max(lo[a], 0), min(hi[a], grid - 1) + 1) for a in range(3)]
    faces = []
    for a in range(3):
        for v in (lo[a], hi[a]):
            if 0 < v < grid - 1:
                rng = [np.array([v]) if b == a else axes[b] for b in range(3)]
                faces.append(np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3))
    return np.concatenate(faces) if faces else np.zeros((0, 3), dtype=np.int64)


_UNSET = object()  # PriorGrowth.margin's level not given (None is a level: no plateau)


class PriorGrowth:
    """How far GeodesicPrior's box grows for a structure larger than it (a lung, a liver, white matter).

    Why: a fixed box (7 cells = 42 mm) keeps a first click on a low-contrast structure from leaking, but
    it also cuts a large structure at 42 mm around the clicks (default-v3: a lung 0.30 after 3 clicks).
    The image says which case it is. The region {d_include < T} grows with T like T^3 through
    homogeneous image; once it has filled a structure walled by edges it nearly stops growing
    (crossing an edge costs a lot), so
    d log V / d log T drops. The first T past which that slope falls below `slope` gives the structure's
    extent; the box's margin grows to cover it (never below the base margin, at most `max_margin`). Where
    no such plateau appears (a weak edge, a leak) the base margin stays. No extra solve: it reads the
    include distance the prior needs anyway (16 threshold counts on the 32^3 grid).
    """

    THRESHOLDS = np.geomspace(2.0, 64.0, 16)  # T, in units of the cost (cells at cost 1)
    # a "plateau" holding over half the crop is the crop (or the volume's padding) filling up, not a
    # structure's wall (measured on the development phantoms: 85-98 % of the grid); a lung fills roughly a
    # quarter of a 192 mm crop
    MAX_FILL = 0.5
    # the box's faces go this many cells past the plateau region, so the background seeds lie beyond the
    # wall, not on it (2 measured the same on the development table: Dice@1/3/5 0.454/0.591/0.696 vs 0.451/
    # 0.607/0.698 with 1)
    SLACK = 1

    def __init__(self, max_margin: int, slope: float, until_exclude: bool = False, cap: float = 0.0):
        self.max_margin, self.slope = int(max_margin), float(slope)
        # cap > 0: where the box grew past its base margin, the region also stops at {d_include < cap x the
        # plateau's level}. Why: a grown box's faces can all lie beyond the crop (a brain in a head CT: 20
        # cells), and a face outside the crop is no seed, so nothing but the crop's edge bounded the region
        # (development head CT: one click in the brain gave 4x the intracranial contents, the air outside
        # the head included); the plateau is the wall the growth found (docs/default_model.md, "Tenth run")
        self.cap = float(cap)
        # grow only while the user has placed no exclude click. Why: an exclude click says the region went
        # too far; a box grown past a weak wall (a heart in the mediastinum, the intracranial contents at the
        # skull base) then keeps leaking, while the base box lets the exclude clicks and the image cut it
        # (development CT cases: Dice@5 0.626 -> 0.722; docs/default_model.md, "Sixth run")
        self.until_exclude = bool(until_exclude)

    def applies(self, n_exclude: int) -> bool:
        """Whether the box may grow for a click set with `n_exclude` exclude clicks."""
        return not (self.until_exclude and n_exclude > 0)

    def plateau_threshold(self, d_fg: np.ndarray, min_level: float = 0.0) -> Optional[float]:
        """The first threshold T >= min_level at which the region {d_fg < T} stops growing (None when it
        never does)."""
        t = self.THRESHOLDS
        volumes = np.array([np.count_nonzero(d_fg < x) for x in t], dtype=np.float64)
        slopes = np.diff(np.log(volumes + 1.0)) / np.diff(np.log(t))
        ok = (volumes[1:] > 1) & (volumes[1:] <= self.MAX_FILL * d_fg.size) & (t[1:] >= min_level)
        flat = np.nonzero((slopes < self.slope) & ok)[0]
        return float(t[flat[0] + 1]) if len(flat) else None

    def extent(self, d_fg: np.ndarray, box_cells: np.ndarray, level: Optional[float]) -> int:
        """Cells the plateau region {d_fg < level} reaches beyond the clicks' bounding box (0 without a level)."""
        if level is None:
            return 0
        region = np.argwhere(d_fg < level)
        lo, hi = box_cells.min(0), box_cells.max(0)
        return int(np.maximum(lo - region, region - hi).max(initial=0))

    def margin(self, d_fg: np.ndarray, box_cells: np.ndarray, base: int, level=_UNSET) -> int:
        """The margin to use: the plateau region's extent plus SLACK cells, within [base, max_margin]
        (`level`: plateau_threshold(d_fg) when the caller has it, None included: no plateau)."""
        level = self.plateau_threshold(d_fg) if level is _UNSET else level
        return int(min(max(base, self.extent(d_fg, box_cells, level) + self.SLACK), max(base, self.max_margin)))

    def bound(self, d_fg: np.ndarray, level: Optional[float], clip: float) -> Optional[np.ndarray]:
        """The cap's logits clip(cap x level - d_fg) for a box grown to a plateau at `level`, or None (no cap)."""
        if not self.cap or level is None:
            return None
        return np.clip(self.cap * level - d_fg, -clip, clip)


class GeodesicPrior(nn.Module):
    """The classical geodesic region (lib.evaluation.classical's `geodesic` row) on the S/4 grid, as
    logits the decoder adds its output to: the model starts from the classical answer and learns
    what to change (a residual), instead of having to learn from scratch what the classical tool
    gets for free.

    logit = clip(d_background - d_include, -clip, clip), d in cells over geodesic_cost(gamma) of the
    cell-mean intensity; background seeds: the exclude clicks and the faces of the clicks' bounding
    box plus `margin` cells that lie inside the crop (the classical row's region of interest). No
    include click: -clip everywhere; no background seed: +clip everywhere.

    prior(intensity (B, g, g, g), coords (B, N, 3), labels (B, N), cell) -> (B, 1, g, g, g)
    """

    def __init__(self, gamma: float, margin: int, clip: float, grow: Optional["PriorGrowth"] = None,
                 flood=None):
        super().__init__()
        self.gamma, self.margin, self.clip = float(gamma), int(margin), float(clip)
        self.grow = grow
        # lib.model.flood_region.FloodRegion or None: where the clicked tissue is walled, its region
        # decides instead of the box competition below
        self.flood = flood
        # per sample of the last forward: whether the flood decided it (a large walled tissue), read by the
        # engine, which then skips the small-structure check (lib.session.fine_region) for that crop; and
        # whether the box grew to a plateau (lib.session.plain_region: neither is the plain box competition)
        self.last_flooded: list = []
        self.last_grown: list = []

    def _box_region(self, solves: GeodesicSolves, i: int, fg: np.ndarray, ex: np.ndarray, clicks: np.ndarray,
                    g: int) -> np.ndarray:
        """Sample i's cells nearer the include clicks than the exclude clicks and the box faces (g^3 logits)."""
        d_fg = solves.distance(i, self.gamma, fg)  # the maps' include solve when gammas match
        grows = self.grow is not None and self.grow.applies(len(ex))
        level = self.grow.plateau_threshold(d_fg) if grows else None
        margin = self.grow.margin(d_fg, clicks, self.margin, level) if grows else self.margin
        bg = np.concatenate([ex, box_face_seeds(clicks, g, margin)])
        if not len(bg):
            region = np.full((g, g, g), self.clip, dtype=np.float32)
        else:
            region = np.clip(solves.distance(i, self.gamma, bg) - d_fg, -self.clip, self.clip)
        self.last_grown[i] = margin > self.margin
        bound = self.grow.bound(d_fg, level, self.clip) if margin > self.margin else None  # grown: a plateau
        return region if bound is None else np.minimum(region, bound).astype(np.float32)

    def forward(self, intensity: torch.Tensor, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                cell: float = 4.0, solves: Optional[GeodesicSolves] = None) -> torch.Tensor:
        b, g = intensity.shape[0], intensity.shape[-1]
        out = np.full((b, 1, g, g, g), -self.clip, dtype=np.float32)
        self.last_flooded, self.last_grown = [False] * b, [False] * b
        if coords is not None and coords.shape[1] > 0:
            solves = _solves(intensity, solves)
            cells = np.clip(np.floor(coords.detach().float().cpu().numpy() / cell), 0, g - 1).astype(np.int64)
            labs = labels.detach().cpu().numpy()
            for i in range(b):
                valid = (labs[i] == 0) | (labs[i] == 1)
                fg, ex = cells[i][labs[i] == 1], cells[i][labs[i] == 0]
                if not len(fg):
                    continue
                region = self.flood(solves.intensity[i], fg, ex, self.clip) if self.flood is not None else None
                self.last_flooded[i] = region is not None
                if region is None:
                    region = self._box_region(solves, i, fg, ex, cells[i][valid], g)
                out[i, 0] = region
                out[i, 0][tuple(fg.T)] = self.clip  # a click keeps its own label
                if len(ex):
                    out[i, 0][tuple(ex.T)] = -self.clip
        return torch.from_numpy(out).to(intensity.device)
