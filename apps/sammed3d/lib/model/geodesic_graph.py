"""Geodesic distances over an image-derived cost field: the app's one home for shortest paths.

Every geodesic in the app (the click maps and prior on the S/4 grid, the flood, the refinement
band, the classical geodesic row) is a minimal path length over a local cost (`geodesic_cost`),
26-connected, with skimage.graph.MCP_Geometric's metric: a step from voxel a to its neighbour b
costs |offset * spacing| * (cost[a] + cost[b]) / 2, and the seeds start at 0. Two solvers give the
same numbers (tests/test_geodesic_graph.py compares them); each is used where it is the faster:

* `geodesic_from`: MCP_Geometric itself, for dense fields with few seeds (the 32^3 click maps and
  prior, the flood, the classical row's box of up to 1.5 M voxels). It keeps no edge list.
* `GeodesicGraph`: the passable voxels as a CSR graph, built once with array arithmetic (no sort),
  solved by scipy.sparse.csgraph.dijkstra (compiled, one multi-source solve with min_only). For the
  refinement's band: a sparse field (impassable outside the band) with 10,000-20,000 seed voxels,
  where MCP's `find_costs` spends ~5.7 us of Python per start and its setup walks the whole box;
  the inside and the outside seeds are solved on one graph. On the sample CT's lung crops: build
  25-45 ms, solve 21-47 ms, against MCP's 71-144 ms per solve. On a dense field it is no faster
  (32^3: 21 ms against 16; 110^3: 1.1 s each) and holds 26 edges a voxel at 12 bytes each (82 MB
  for a whole 64^3 crop, 134 MB at the peak of its build): the dense solves stay with MCP.

    graph = GeodesicGraph(cost (Z, Y, X) float, inf or negative = impassable, spacing=(1, 1, 1))
    graph.distance(seeds (K, 3) int, K >= 1) -> (Z, Y, X) float64, inf where no seed reaches
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

# nodes per construction chunk: bounds the (chunk, 26) temporaries (~14 MB), which then reuse memory the
# process already touched (first-touch page faults are costly on the VM we measure on: the sample CT lung's
# first-click refinement took 0.80-0.91 s with 262,144-node chunks, 0.64-0.66 s with these)
_CHUNK = 1 << 16
# the 26 neighbour offsets, in a fixed order (each row of the CSR graph lists them in this order)
_OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)], dtype=np.int64)


def geodesic_cost(image: np.ndarray, gamma: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Local cost per unit length sqrt(1 + (gamma |grad I|)^2), grad per unit of `spacing` (>= 1).
    Computed once per image and shared by the include and the exclude solve."""
    grads = np.gradient(np.asarray(image, dtype=np.float64), *[float(s) for s in spacing])
    return np.sqrt(1.0 + (gamma * gamma) * sum(g * g for g in grads))


class GeodesicGraph:
    """`cost`'s passable voxels (finite, >= 0) as a 26-connected graph with MCP_Geometric's step
    lengths; `distance` solves from one seed set. Build once, solve for several seed sets."""

    def __init__(self, cost: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)):
        cost = np.asarray(cost, dtype=np.float64)
        if cost.ndim != 3:
            raise ValueError(f"GeodesicGraph needs a 3-D cost field, got shape {cost.shape}")
        self.shape = cost.shape
        passable = np.isfinite(cost) & (cost >= 0)
        self.nodes = np.flatnonzero(passable)  # flat voxel index of each graph node
        if 26 * len(self.nodes) >= np.iinfo(np.int32).max:  # its edges are counted in int32
            raise ValueError(f"GeodesicGraph holds at most 82 million passable voxels, got {len(self.nodes)}")
        # node number of each voxel, -1 where impassable; padded by one voxel so that every
        # neighbour lookup stays in the array (the pad is impassable)
        padded = np.full(tuple(s + 2 for s in self.shape), -1, dtype=np.int32)
        padded[1:-1, 1:-1, 1:-1][passable] = np.arange(len(self.nodes), dtype=np.int32)
        self._node_of = padded[1:-1, 1:-1, 1:-1]
        strides = np.array(padded.strides) // padded.itemsize
        steps = _OFFSETS @ strides  # (26,) flat index step to each neighbour
        lengths = np.sqrt(((_OFFSETS * np.asarray(spacing, dtype=np.float64)) ** 2).sum(1))  # (26,)
        node_cost = cost.ravel()[self.nodes]
        flat_padded = np.flatnonzero(np.pad(passable, 1))  # each node's flat index in `padded`, in node order
        n = len(self.nodes)
        # the CSR arrays at their largest (26 edges a node), filled chunk by chunk and used as views: the
        # peak stays near the graph's own size, and int32 indices are what csgraph's solver reads (int64
        # ones it would convert on every solve)
        indices, data = np.empty(26 * n, dtype=np.int32), np.empty(26 * n, dtype=np.float64)
        indptr = np.zeros(n + 1, dtype=np.int32)
        filled = 0
        for lo in range(0, n, _CHUNK):  # chunks bound the (chunk, 26) temporaries
            neighbours = padded.ravel()[flat_padded[lo:lo + _CHUNK, None] + steps]  # (m, 26), -1 = none
            valid = neighbours >= 0
            # row i's entries are its valid neighbours in _OFFSETS order: CSR as it comes, no sort
            step = 0.5 * lengths * (node_cost[lo:lo + _CHUNK, None] + node_cost[np.where(valid, neighbours, 0)])
            counts = valid.sum(1)
            k = int(counts.sum())
            indices[filled:filled + k] = neighbours[valid]
            data[filled:filled + k] = step[valid]
            indptr[lo + 1:lo + 1 + len(counts)] = filled + np.cumsum(counts)
            filled += k
        indices, data = indices[:filled], data[:filled]
        # csgraph reads a stored 0 as "no edge"; a step costs 0 only between two voxels of cost 0
        np.maximum(data, np.finfo(np.float64).tiny, out=data)
        self.graph = sparse.csr_matrix((data, indices, indptr), shape=(n, n), copy=False)

    def distance(self, seeds: np.ndarray) -> np.ndarray:
        """Minimal path length from any of `seeds` ((K, 3) voxel indices, K >= 1) to every voxel;
        a seed on an impassable voxel is 0 there and reaches nothing (as in MCP_Geometric)."""
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 3)
        if len(seeds) == 0:
            raise ValueError("a geodesic distance needs at least one seed")
        if (seeds < 0).any() or (seeds >= np.array(self.shape)).any():
            raise ValueError(f"seeds outside the cost field of shape {self.shape}")
        out = np.full(self.shape, np.inf)
        sources = np.unique(self._node_of[tuple(seeds.T)])
        sources = sources[sources >= 0]
        if len(sources):
            out.ravel()[self.nodes] = csgraph.dijkstra(self.graph, directed=True, indices=sources, min_only=True)
        out[tuple(seeds.T)] = 0.0
        return out


def geodesic_from(cost: np.ndarray, seeds: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Minimal path length over `cost` (geodesic_cost) from any of `seeds` ((K, 3) indices, K >= 1) to
    every voxel, 26-connected (skimage.graph.MCP_Geometric with sampling = spacing). A fresh MCP per
    solve: reusing one for a second seed set measured 5x slower (its reset is not cheap)."""
    from skimage.graph import MCP_Geometric

    mcp = MCP_Geometric(cost, fully_connected=True, sampling=tuple(float(s) for s in spacing))
    # an (K, 3) array, not a list of tuples: MCP takes either, the array without K Python tuples (~30 % of a
    # solve from a band's whole seed shell, before GeodesicGraph took those)
    dist, _ = mcp.find_costs(np.asarray(seeds, dtype=np.intp).reshape(-1, 3))
    return dist
