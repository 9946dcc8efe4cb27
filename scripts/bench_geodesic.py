"""Geodesic solvers side by side: skimage's MCP_Geometric (the reference, and the fallback without numba) and
lib.model.geodesic_graph's compiled Dijkstra (one solve after the other, and two at once on two threads; its
bucket queue, and the binary heap it falls back to), on the fields the app solves, with the distances compared.

    .venv/bin/python scripts/bench_geodesic.py [--reps 5]

Fields: a refinement band (a spherical shell passable, 1-voxel seed shells inside and outside, as
lib.session.refine builds it for a lung-sized crop at 3 mm: ~100,000 voxels, ~20,000 seeds per side),
solved from both sides; a dense 32^3 field from one click (the S/4 click maps and prior); a textured
90 x 87 x 81 box at 1 mm (the plain region's box on a 1 mm brain MR: 634,000 voxels, gamma 300), from one
click and from the box's faces.
Numbers in docs/benchmarks.md ("Geodesic solver").
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps", "sammed3d"))
from lib.model import dijkstra_kernel  # noqa: E402
from lib.model.geodesic_graph import (_OFFSETS, _lengths, _mcp_geometric, geodesic_cost, geodesic_from,  # noqa: E402
                                      geodesic_from_each, warm_up)


def band_field(size: int = 64, inner: float = 22.0, outer: float = 28.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((size,) * 3)
    r = np.sqrt(sum((a - size / 2.0) ** 2 for a in (z, y, x)))
    cost = geodesic_cost(rng.normal(size=(size,) * 3) * 0.05 + (r > 25), gamma=60.0)
    cost[(r < inner - 1) | (r > outer + 1)] = np.inf
    return cost, np.argwhere((r >= inner - 1) & (r < inner)), np.argwhere((r > outer) & (r <= outer + 1))


def best(fn, reps: int):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times)), out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    reached = np.isfinite(a)
    return bool((reached == np.isfinite(b)).all() and np.allclose(a[reached], b[reached], rtol=1e-12, atol=1e-9))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    warm_up()  # compile (or load numba's cache) outside the timings
    cost, inside, outside = band_field()
    print(f"band: {int(np.isfinite(cost).sum())} passable voxels, seeds {len(inside)} inside / {len(outside)} outside")
    mcp = lambda c, seeds: _mcp_geometric(c, seeds, (1.0, 1.0, 1.0))  # noqa: E731
    ref = best(lambda: (mcp(cost, inside), mcp(cost, outside)), args.reps)
    serial = best(lambda: (geodesic_from(cost, inside), geodesic_from(cost, outside)), args.reps)
    both = best(lambda: geodesic_from_each(cost, [inside, outside]), args.reps)
    same = all(_same(a, b) and _same(a, c) for a, b, c in zip(ref[2], serial[2], both[2]))
    print(f"| refinement band, both sides | MCP_Geometric {ref[0]:.3f} s (median {ref[1]:.3f}) | "
          f"kernel {serial[0]:.3f} s (median {serial[1]:.3f}) | kernel, two threads {both[0]:.3f} s "
          f"(median {both[1]:.3f}) | same distances: {same} |")
    dense = geodesic_cost(np.random.default_rng(1).normal(size=(32,) * 3), gamma=20.0)
    click = np.array([[16, 16, 16]])
    ref = best(lambda: mcp(dense, click), args.reps)
    new = best(lambda: geodesic_from(dense, click), args.reps)
    heap = best(lambda: _heap(dense, click), args.reps)
    print(f"| dense 32^3, one click | MCP_Geometric {ref[0]:.4f} s | kernel {new[0]:.4f} s | heap {heap[0]:.4f} s | "
          f"same distances: {_same(ref[2], new[2])}, buckets = heap: {np.array_equal(new[2], heap[2])} |")
    box = _mr_box()
    faces = np.argwhere(np.pad(np.zeros(tuple(n - 2 for n in box.shape), bool), 1, constant_values=True))
    centre = np.array([[n // 2 for n in box.shape]])
    ref = best(lambda: (mcp(box, centre), mcp(box, faces)), max(1, args.reps // 3))
    serial = best(lambda: (geodesic_from(box, centre), geodesic_from(box, faces)), args.reps)
    both = best(lambda: geodesic_from_each(box, [centre, faces]), args.reps)
    heap = best(lambda: (_heap(box, centre), _heap(box, faces)), args.reps)
    same = all(_same(a, b) and np.array_equal(b, c) and np.array_equal(b, d)
               for a, b, c, d in zip(ref[2], serial[2], both[2], heap[2]))
    print(f"| 1 mm MR box, click and faces | MCP_Geometric {ref[0]:.3f} s | kernel {serial[0]:.3f} s (median "
          f"{serial[1]:.3f}) | kernel, two threads {both[0]:.3f} s | heap {heap[0]:.3f} s (median {heap[1]:.3f}) | "
          f"same distances (buckets = heap bit for bit): {same} |")
    return 0


def _heap(cost: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The binary-heap kernel alone (what geodesic_from falls back to where buckets do not apply)."""
    out = np.full(cost.shape, np.inf)
    dijkstra_kernel.solve(np.ascontiguousarray(cost, dtype=np.float64), np.ascontiguousarray(seeds, dtype=np.int64),
                          _lengths((1.0, 1.0, 1.0)), _OFFSETS, out)
    return out


def _mr_box(shape=(90, 87, 81), seed: int = 2) -> np.ndarray:
    """A smooth random texture with a brighter ellipsoid, normalised, at gamma 300 (the plain region's cost)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    blob = ((z - 45) / 20.0) ** 2 + ((y - 43) / 15.0) ** 2 + ((x - 40) / 18.0) ** 2 <= 1
    image = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 0.3 + blob
    return geodesic_cost((image - image.mean()) / image.std(), gamma=300.0)


if __name__ == "__main__":
    sys.exit(main())
