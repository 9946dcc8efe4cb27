"""Geodesic distances over an image-derived cost field: the app's one home for shortest paths.

Every geodesic in the app (the click maps and prior on the S/4 grid, the flood, the refinement
band, the classical geodesic row) is a minimal path length over a local cost (`geodesic_cost`),
26-connected, with skimage.graph.MCP_Geometric's metric: a step from voxel a to its neighbour b
costs |offset * spacing| * (cost[a] + cost[b]) / 2, and the seeds start at 0.

The solve is lib.model.dijkstra_kernel (numba; a bucket queue, a binary heap where buckets do not apply):
no edge list, a quarter of MCP_Geometric's time on a dense 32^3 field and a quarter of the CSR graph + scipy
dijkstra's on a refinement band (which the refinement used before; scripts/bench_geodesic.py), and it releases
the GIL, so `geodesic_from_each` solves two seed sets on two cores at once. Without numba (a machine that did not install
requirements.txt, e.g. a bare GPU box) MCP_Geometric solves instead: the same distances
(tests/test_geodesic_graph.py), slower.

    geodesic_from(cost (Z, Y, X) float, inf or negative = impassable, seeds (K, 3) int, K >= 1,
                  spacing=(1, 1, 1)) -> (Z, Y, X) float64, inf where no seed reaches
    geodesic_from_each(cost, [seeds, ...], spacing) -> [distance, ...]   (concurrently)
    nearest_seed_set(cost, [seeds, ...], spacing) -> (Z, Y, X) int32: the nearest set's index (first on a tie),
        -1 where none reaches, in one solve
"""
from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

import numpy as np

try:  # the compiled solver (requirements.txt); MCP_Geometric where numba is missing
    from . import dijkstra_kernel
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatch
    dijkstra_kernel = None

# the 26 neighbour offsets, in a fixed order (the kernel's step lengths follow it)
_OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)], dtype=np.int64)
_NO_SETS, _NO_LABELS = np.zeros(0, np.int32), np.zeros((0, 0, 0), np.int32)  # solve_buckets without labels
_POOL = None  # (pid, two worker threads), made on first use in each process (the kernel releases the GIL)


def geodesic_cost(image: np.ndarray, gamma: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Local cost per unit length sqrt(1 + (gamma |grad I|)^2), grad per unit of `spacing` (>= 1).
    Computed once per image and shared by the include and the exclude solve."""
    grads = np.gradient(np.asarray(image, dtype=np.float64), *[float(s) for s in spacing])
    return np.sqrt(1.0 + (gamma * gamma) * sum(g * g for g in grads))


def geodesic_from(cost: np.ndarray, seeds: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Minimal path length over `cost` (geodesic_cost; inf or negative = impassable) from any of `seeds`
    ((K, 3) voxel indices, K >= 1) to every voxel, 26-connected with MCP_Geometric's metric (module doc);
    inf where no seed reaches, and a seed on an impassable voxel is 0 there and reaches nothing."""
    cost, seeds = _checked(cost, seeds)
    spacing = tuple(float(s) for s in spacing)
    if dijkstra_kernel is None:
        return _mcp_geometric(cost, seeds, spacing)
    out, lengths = np.full(cost.shape, np.inf), _lengths(spacing)
    if not dijkstra_kernel.solve_buckets(cost, seeds, lengths, _OFFSETS, out, _NO_SETS, _NO_LABELS):
        dijkstra_kernel.solve(cost, seeds, lengths, _OFFSETS, out)  # a cost of 0, or a huge cost range
    return out


def _checked(cost: np.ndarray, seeds: np.ndarray):
    """(cost float64 C-contiguous, seeds (K, 3) int64 C-contiguous) as the kernels take them; ValueError naming
    what is wrong: not 3-D, too many voxels for the kernels' int32 voxel numbers, no seed, a seed outside."""
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if cost.ndim != 3:
        raise ValueError(f"a geodesic distance needs a 3-D cost field, got shape {cost.shape}")
    if cost.size >= np.iinfo(np.int32).max:  # the kernels hold int32 voxel numbers
        raise ValueError(f"a geodesic distance holds at most {np.iinfo(np.int32).max - 1} voxels, got {cost.size}")
    seeds = np.ascontiguousarray(np.asarray(seeds, dtype=np.int64).reshape(-1, 3))
    if len(seeds) == 0:
        raise ValueError("a geodesic distance needs at least one seed")
    if (seeds < 0).any() or (seeds >= np.array(cost.shape)).any():
        raise ValueError(f"seeds outside the cost field of shape {cost.shape}")
    return cost, seeds


def _lengths(spacing: Sequence[float]) -> np.ndarray:
    """The 26 steps' lengths in mm, in _OFFSETS' order."""
    return np.sqrt(((_OFFSETS * np.asarray(spacing, dtype=np.float64)) ** 2).sum(1))


def nearest_seed_set(cost: np.ndarray, seed_sets: Sequence[np.ndarray],
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Per voxel, the index of the seed set at the least geodesic distance (the first listed on a tie), -1 where
    none reaches: what comparing geodesic_from of each set gives (np.argmin), in ONE solve that settles each
    voxel once (lib.model.dijkstra_kernel.solve_buckets, labelling as it goes) instead of one solve per set. Why:
    the plain region only needs which side is nearer; one thread does what two did, the other stays free."""
    sets = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in seed_sets]
    if not sets or any(len(s) == 0 for s in sets):
        raise ValueError("a nearest seed set needs seed sets of at least one seed each")
    cost, seeds = _checked(cost, np.concatenate(sets))
    which = np.concatenate([np.full(len(s), k, np.int32) for k, s in enumerate(sets)])
    nearest = np.full(cost.shape, -1, np.int32)
    if dijkstra_kernel is not None and dijkstra_kernel.solve_buckets(cost, seeds, _lengths(spacing), _OFFSETS,
                                                                    np.full(cost.shape, np.inf), which, nearest):
        return nearest
    dist = np.stack(geodesic_from_each(cost, sets, spacing))  # without numba, or where buckets do not apply
    nearest = np.argmin(dist, axis=0).astype(np.int32)
    nearest[~np.isfinite(dist).any(axis=0)] = -1
    return nearest


def geodesic_from_each(cost: np.ndarray, seed_sets: Sequence[np.ndarray],
                       spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> List[np.ndarray]:
    """geodesic_from for each seed set over the same cost, two at a time on two threads (the refinement's
    inside and outside, the classical row's two labels): the compiled kernel runs without the GIL."""
    global _POOL
    if dijkstra_kernel is None or len(seed_sets) < 2:
        return [geodesic_from(cost, seeds, spacing) for seeds in seed_sets]
    cost = np.ascontiguousarray(cost, dtype=np.float64)  # one copy for both threads
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child (a data loader worker) has no pool threads
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="geodesic"))
    return list(_POOL[1].map(lambda seeds: geodesic_from(cost, seeds, spacing), seed_sets))


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now, so that a server's first click does not: the bucket
    queue, and the heap it falls back to (a field with a cost of 0)."""
    geodesic_from_each(np.ones((2, 2, 2)), [np.zeros((1, 3), np.int64)] * 2)
    geodesic_from(np.zeros((2, 2, 2)), np.zeros((1, 3), np.int64))


def _mcp_geometric(cost: np.ndarray, seeds: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """skimage's MCP_Geometric (the fallback and the reference the kernel is tested against). A seed on an
    impassable voxel: 0 there, as the kernel (MCP leaves it so)."""
    from skimage.graph import MCP_Geometric

    mcp = MCP_Geometric(cost, fully_connected=True, sampling=tuple(spacing))
    dist, _ = mcp.find_costs(np.asarray(seeds, dtype=np.intp))
    return dist
