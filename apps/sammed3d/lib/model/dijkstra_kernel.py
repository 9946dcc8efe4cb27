"""Compiled multi-source Dijkstra on a 3-D voxel grid (numba), for lib.model.geodesic_graph.

Why compiled: every click solves several geodesic fields (the S/4 click maps, prior and flood on
32^3 cells; the refinement's band on 64^3 with 10,000-20,000 seed voxels per side). skimage's
MCP_Geometric spends Python time per seed and scipy's csgraph needs a CSR graph built per band
(26 edges a voxel) and holds the GIL; this solves on the grid itself, with no edge list, in about
half their time (scripts/bench_geodesic.py), and releases the GIL, so two seed sets solve on two
cores at once.

What: MCP_Geometric's metric exactly (fully connected, `sampling` = spacing): a step from voxel a to
its neighbour b costs |offset * spacing| * (cost[a] + cost[b]) / 2; a voxel whose cost is not
finite and >= 0 is impassable; seeds start at 0, and a seed on an impassable voxel is 0 there and
reaches nothing. The same candidate sums as any Dijkstra, so the same numbers
(tests/test_geodesic_graph.py: equal to MCP_Geometric).

Two queues:
- `solve_buckets` (used first): Dial's bucket queue. Every step costs at least w = min length x min cost
  (> 0: geodesic_cost is >= 1), so voxels whose distances lie in the same bucket [b w, (b + 1) w) cannot
  improve one another and settle in any order: O(1) per queue operation instead of a heap's O(log n), half
  the binary heap's time (a 1 mm MR box of 634,000 voxels solved from a click and from its faces: 0.447 ->
  0.221 s, scripts/bench_geodesic.py) and bit for bit its distances. The buckets are doubly linked lists
  through the voxels (a decrease-key moves a voxel between lists) on a ring of max step / w + 3 buckets. It
  declines (returns False, `out` untouched) where a cost of 0 or a ring too large for the grid (a cost range
  over ~10^6) makes buckets pointless.
- `solve`: a binary heap with decrease-key (one entry per voxel: with 26 neighbours a lazy heap pushes several
  entries per voxel and measured 2x slower), for every field.

    solve(cost (Z, Y, X) float64 C-contiguous, seeds (K, 3) int64, lengths (26,) float64,
          offsets (26, 3) int64, out (Z, Y, X) float64 filled with inf) -> None (fills `out`)
    solve_buckets(the same, seed_set (K,) int32, nearest (Z, Y, X) int32 filled with -1, or size 0) -> bool
        (True: `out` filled, and with a full-size `nearest` each voxel's nearest seed set, the lower on a tie,
        -1 where none reaches; False: not applicable, use solve)
"""
from __future__ import annotations

import os

# numba's compiled-code cache stays in the app folder: by default it falls back to ~/.cache when the source
# folder is read-only; with this it then only compiles in memory (a warning, 1.2-1.5 s at server start)
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"))

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402


@njit(cache=True, nogil=True)
def _sift_up(heap, keys, where, i, voxel, key):
    """Place `voxel` with `key` at heap slot i or above."""
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        moved = heap[parent]
        heap[i], keys[i], where[moved] = moved, keys[parent], i
        i = parent
    heap[i], keys[i], where[voxel] = voxel, key, i


@njit(cache=True, nogil=True)
def solve(cost, seeds, lengths, offsets, out):
    nz, ny, nx = cost.shape
    py, px = ny + 2, nx + 2
    flat, dist = cost.ravel(), out.ravel()
    # passable voxels in a one-voxel padded copy: a neighbour lookup needs no bounds test
    passable = np.zeros((nz + 2) * py * px, dtype=np.bool_)
    for z in range(nz):
        for y in range(ny):
            row, src = ((z + 1) * py + y + 1) * px + 1, (z * ny + y) * nx
            for x in range(nx):
                c = flat[src + x]
                passable[row + x] = c >= 0.0 and c < np.inf
    step_padded, step_flat = np.empty(26, np.int64), np.empty(26, np.int64)
    for k in range(26):
        step_padded[k] = (offsets[k, 0] * py + offsets[k, 1]) * px + offsets[k, 2]
        step_flat[k] = (offsets[k, 0] * ny + offsets[k, 1]) * nx + offsets[k, 2]
    where = np.full(flat.size, -1, np.int32)  # heap slot; -1 never queued, -2 settled
    heap, keys, n = np.empty(flat.size, np.int32), np.empty(flat.size, np.float64), 0
    for s in range(seeds.shape[0]):
        z, y, x = seeds[s, 0], seeds[s, 1], seeds[s, 2]
        i = (z * ny + y) * nx + x
        if where[i] != -1:
            continue  # a repeated seed
        dist[i] = 0.0
        if passable[((z + 1) * py + y + 1) * px + x + 1]:
            heap[n], keys[n], where[i] = i, 0.0, n  # all keys 0: already a heap
            n += 1
        else:
            where[i] = -2  # a seed on a wall: 0 there, reaches nothing
    while n > 0:
        i, d = heap[0], keys[0]
        where[i] = -2
        n -= 1
        if n > 0:  # the last entry to the root, sifted down
            voxel, key, h = heap[n], keys[n], 0
            while True:
                c = 2 * h + 1
                if c >= n:
                    break
                if c + 1 < n and keys[c + 1] < keys[c]:
                    c += 1
                if keys[c] >= key:
                    break
                heap[h], keys[h], where[heap[c]] = heap[c], keys[c], h
                h = c
            heap[h], keys[h], where[voxel] = voxel, key, h
        z = i // (ny * nx)
        y = (i - z * ny * nx) // nx
        x = i - (z * ny + y) * nx
        ip = ((z + 1) * py + y + 1) * px + x + 1
        ca = flat[i]
        for k in range(26):
            if not passable[ip + step_padded[k]]:
                continue
            j = i + step_flat[k]
            slot = where[j]
            if slot == -2:
                continue
            nd = d + lengths[k] * 0.5 * (ca + flat[j])
            if nd < dist[j]:
                dist[j] = nd
                if slot == -1:
                    n += 1
                    _sift_up(heap, keys, where, n - 1, j, nd)
                else:
                    _sift_up(heap, keys, where, slot, j, nd)


@njit(cache=True, nogil=True)
def solve_buckets(cost, seeds, lengths, offsets, out, seed_set, nearest):
    nz, ny, nx = cost.shape
    py, px = ny + 2, nx + 2
    size = (nz + 2) * py * px
    flat = cost.ravel()
    # one-voxel padded copies (a neighbour needs no bounds test): state 0 impassable or padding, 1 open, 2 settled
    state, padded = np.zeros(size, np.uint8), np.zeros(size, np.float64)
    low, high = np.inf, 0.0
    for z in range(nz):
        for y in range(ny):
            row, src = ((z + 1) * py + y + 1) * px + 1, (z * ny + y) * nx
            for x in range(nx):
                c = flat[src + x]
                padded[row + x] = c
                if c >= 0.0 and c < np.inf:
                    state[row + x] = 1
                    low, high = min(low, c), max(high, c)
    step, half = np.empty(26, np.int64), np.empty(26, np.float64)
    for k in range(26):
        step[k] = (offsets[k, 0] * py + offsets[k, 1]) * px + offsets[k, 2]
        half[k] = 0.5 * lengths[k]
    if high == 0.0 or not low > 0.0:
        return low == np.inf and _seeds_only(seeds, seed_set, nz, ny, nx, out, nearest)  # every voxel a wall
    width = lengths.min() * low * (1.0 - 1e-9)  # below the least step, also after rounding
    ring = lengths.max() * high / width + 3.0
    if ring > 4.0 * size + 1e6 or size >= 2 ** 31 - 1:  # the lists hold int32 voxel numbers
        return False
    ring_size, inverse = int(ring), 1.0 / width
    head = np.full(ring_size, -1, np.int32)
    nxt, prv = np.empty(size, np.int32), np.empty(size, np.int32)
    dist, queued, count = np.full(size, np.inf), np.zeros(size, np.bool_), 0
    track = nearest.size > 0  # label each voxel with the seed set that reaches it first (ties: the lower set)
    label = np.full(size if track else 1, -1, np.int32)
    for s in range(seeds.shape[0]):
        i = ((seeds[s, 0] + 1) * py + seeds[s, 1] + 1) * px + seeds[s, 2] + 1
        if track and (label[i] < 0 or seed_set[s] < label[i]):
            label[i] = seed_set[s]
        dist[i] = 0.0
        if state[i] == 1 and not queued[i]:
            queued[i] = True
            count += 1
            nxt[i], prv[i] = head[0], -1
            if head[0] >= 0:
                prv[head[0]] = i
            head[0] = i
    current = 0
    while count > 0:
        bucket = current % ring_size
        i = head[bucket]
        if i < 0:
            current += 1
            continue
        after = nxt[i]  # i is its list's first voxel: the list now starts at the next
        head[bucket] = after
        if after >= 0:
            prv[after] = -1
        queued[i], state[i] = False, 2
        count -= 1
        d, ca = dist[i], padded[i]
        for k in range(26):
            j = i + step[k]
            if state[j] != 1:
                continue
            nd = d + half[k] * (ca + padded[j])
            old = dist[j]
            if track and nd <= old and (nd < old or label[i] < label[j]):
                label[j] = label[i]  # settled voxels' labels are final: their equal-distance paths came first
            if nd < old:
                dist[j] = nd
                if queued[j]:  # a decrease-key: out of its old bucket's list (inlined: the hot path)
                    before, after = prv[j], nxt[j]
                    if before >= 0:
                        nxt[before] = after
                    else:
                        head[int(old * inverse) % ring_size] = after
                    if after >= 0:
                        prv[after] = before
                else:
                    queued[j] = True
                    count += 1
                b = int(nd * inverse) % ring_size
                first = head[b]
                nxt[j], prv[j] = first, -1
                if first >= 0:
                    prv[first] = j
                head[b] = j
    o, n = out.ravel(), nearest.ravel()
    for z in range(nz):
        for y in range(ny):
            row, dst = ((z + 1) * py + y + 1) * px + 1, (z * ny + y) * nx
            for x in range(nx):
                o[dst + x] = dist[row + x]
                if track:
                    n[dst + x] = label[row + x]
    return True


@njit(cache=True, nogil=True)
def _seeds_only(seeds, seed_set, nz, ny, nx, out, nearest):
    """Every voxel impassable: each seed is 0 at itself (and labelled with its set) and reaches nothing."""
    o, n = out.ravel(), nearest.ravel()
    for s in range(seeds.shape[0]):
        i = (seeds[s, 0] * ny + seeds[s, 1]) * nx + seeds[s, 2]
        o[i] = 0.0
        if n.size > 0 and (n[i] < 0 or seed_set[s] < n[i]):
            n[i] = seed_set[s]
    return True
