"""lib.model.geodesic_graph: the compiled Dijkstra gives MCP_Geometric's distances, alone and two at a time."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.graph import MCP_Geometric

import lib.model.geodesic_graph as geodesic_graph
from lib.model.geodesic_graph import geodesic_cost, geodesic_from, geodesic_from_each


_NONE = (geodesic_graph._NO_SETS, geodesic_graph._NO_LABELS)  # solve_buckets without labels


def _mcp(cost, seeds, spacing=(1.0, 1.0, 1.0)):
    return MCP_Geometric(cost, fully_connected=True, sampling=spacing).find_costs(seeds)[0]


def test_the_compiled_kernel_is_what_serves():
    """requirements.txt installs numba: the fallback must not be silently what users get."""
    assert geodesic_graph.dijkstra_kernel is not None


@pytest.mark.parametrize("trial", range(8))
def test_same_distances_as_mcp_geometric_with_walls_and_anisotropic_spacing(trial):
    rng = np.random.default_rng(trial)
    shape = tuple(int(n) for n in rng.integers(4, 24, 3))
    cost = geodesic_cost(rng.normal(size=shape), gamma=float(rng.choice([1.0, 20.0])))
    cost[rng.random(shape) < 0.25] = np.inf  # walls: some voxels cannot be reached at all
    spacing = tuple(float(s) for s in rng.choice([0.7, 1.0, 1.5, 3.0], 3))
    seeds = np.stack([rng.integers(0, n, 12) for n in shape], axis=1)  # repeats and walls among them
    expected, got = _mcp(cost, seeds, spacing), geodesic_from(cost, seeds, spacing)
    reached = np.isfinite(expected)
    assert (np.isfinite(got) == reached).all()
    assert reached.sum() > 12 and (~reached).any()
    np.testing.assert_allclose(got[reached], expected[reached], rtol=1e-12, atol=1e-9)
    # two seed sets at once (the refinement's inside and outside) answer as one at a time
    both = geodesic_from_each(cost, [seeds, seeds[:3]], spacing)
    np.testing.assert_array_equal(both[0], got)
    np.testing.assert_allclose(both[1], _mcp(cost, seeds[:3], spacing), rtol=1e-12, atol=1e-9)


def test_a_band_with_many_seeds_matches_and_unreached_voxels_stay_infinite():
    """The refinement's case: passable only in a shell, thousands of seed voxels on one side."""
    z, y, x = np.indices((40, 40, 40))
    r = np.sqrt((z - 20.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2)
    cost = 1.0 + 4.0 * (np.abs(x - 20) < 2)  # a ridge across the shell
    cost[(r < 9) | (r > 15)] = np.inf
    seeds = np.argwhere((r >= 9) & (r < 10))
    assert len(seeds) > 1000
    got = geodesic_from(cost, seeds)
    np.testing.assert_allclose(got, _mcp(cost, seeds), rtol=1e-12, atol=1e-9)
    assert np.isinf(got[20, 20, 20])  # inside the walled core


def test_zero_cost_voxels_and_a_float32_field_are_solved_as_mcp():
    rng = np.random.default_rng(5)
    cost = rng.random((9, 11, 7)).astype(np.float32)
    cost[3:6] = 0.0  # free passage: steps of length 0
    seeds = np.array([[0, 0, 0], [8, 10, 6]])
    np.testing.assert_allclose(geodesic_from(cost, seeds), _mcp(cost.astype(np.float64), seeds), rtol=1e-12,
                               atol=1e-12)


def test_seed_on_a_wall_is_zero_and_reaches_nothing_as_in_mcp():
    cost = np.ones((5, 5, 5))
    cost[2, 2, 2] = np.inf
    cost[0, 0, 0] = -1.0  # negative = impassable, as MCP reads it
    seeds = np.array([[2, 2, 2]])
    got = geodesic_from(cost, seeds)
    assert got[2, 2, 2] == 0.0 and np.isinf(got).sum() == 124
    np.testing.assert_array_equal(np.isinf(got), np.isinf(_mcp(cost, seeds)))
    got = geodesic_from(cost, np.array([[2, 2, 2], [4, 4, 4]]))
    np.testing.assert_allclose(got, _mcp(cost, np.array([[2, 2, 2], [4, 4, 4]])))


def test_without_numba_mcp_solves_the_same(monkeypatch):
    rng = np.random.default_rng(3)
    cost = geodesic_cost(rng.normal(size=(12, 10, 14)), gamma=20.0)
    cost[rng.random(cost.shape) < 0.2] = np.inf
    seeds = np.array([[1, 2, 3], [10, 8, 12]])
    compiled = geodesic_from_each(cost, [seeds, seeds[:1]], (1.0, 2.0, 0.5))
    monkeypatch.setattr(geodesic_graph, "dijkstra_kernel", None)
    fallback = geodesic_from_each(cost, [seeds, seeds[:1]], (1.0, 2.0, 0.5))
    for a, b in zip(compiled, fallback):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("trial", range(6))
def test_the_bucket_queue_gives_the_binary_heaps_distances_bit_for_bit(trial):
    """dijkstra_kernel.solve_buckets (what serves) against the heap kernel: the same numbers, not just close ones,
    on textured fields with walls and anisotropic spacing (a repeated seed and a seed on a wall among them)."""
    from scipy import ndimage

    from lib.model import dijkstra_kernel

    rng = np.random.default_rng(100 + trial)
    shape = tuple(int(n) for n in rng.integers(6, 40, 3))
    spacing = tuple(float(s) for s in rng.choice([0.5, 1.0, 1.5, 4.0], 3))
    cost = geodesic_cost(ndimage.gaussian_filter(rng.normal(size=shape), 1.0), float(rng.choice([10.0, 300.0])), spacing)
    cost[rng.random(shape) < 0.1] = np.inf
    seeds = np.ascontiguousarray(np.stack([rng.integers(0, n, 9) for n in shape], axis=1))
    seeds[1] = seeds[0]
    lengths = np.sqrt(((geodesic_graph._OFFSETS * np.asarray(spacing)) ** 2).sum(1))
    heap, buckets = np.full(shape, np.inf), np.full(shape, np.inf)
    dijkstra_kernel.solve(cost, seeds, lengths, geodesic_graph._OFFSETS, heap)
    assert dijkstra_kernel.solve_buckets(cost, seeds, lengths, geodesic_graph._OFFSETS, buckets, *_NONE)
    np.testing.assert_array_equal(buckets, heap)
    assert np.isfinite(heap).sum() > 100


def test_the_bucket_queue_matches_the_heap_on_ties_wide_cost_ranges_and_every_kind_of_wall():
    """Small random fields the app never makes but a ring could alias on: exact ties (costs on a 0.1 grid), cost
    ranges up to e^12 (a ring far larger than the grid), spacings 0.1-10 mm, walls of inf, negative and NaN cost."""
    from lib.model import dijkstra_kernel

    rng = np.random.default_rng(7)
    solved = 0
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(2, 16, 3))
        spacing = tuple(float(s) for s in rng.choice([0.1, 0.5, 1.0, 3.0, 10.0], 3))
        kinds = (lambda: rng.uniform(1, 2, shape).round(1), lambda: np.exp(rng.uniform(-6, 6, shape)),
                 lambda: geodesic_cost(rng.normal(size=shape), 300.0, spacing))
        cost = kinds[trial % 3]()
        cost[rng.random(shape) < 0.3] = rng.choice([np.inf, -1.0, np.nan])
        k = int(rng.integers(1, 12))
        seeds = np.ascontiguousarray(np.stack([rng.integers(0, n, k) for n in shape], axis=1))
        lengths = np.sqrt(((geodesic_graph._OFFSETS * np.asarray(spacing)) ** 2).sum(1))
        heap, buckets = np.full(shape, np.inf), np.full(shape, np.inf)
        dijkstra_kernel.solve(cost, seeds, lengths, geodesic_graph._OFFSETS, heap)
        if dijkstra_kernel.solve_buckets(cost, seeds, lengths, geodesic_graph._OFFSETS, buckets, *_NONE):
            np.testing.assert_array_equal(buckets, heap)
            solved += 1
    assert solved >= 40  # the rest declined (a ring over the cap): the heap answers them


def test_the_bucket_queue_declines_where_buckets_do_not_apply():
    """A cost of 0 (no least step) or a cost range too wide for the ring: the heap solves (same answers as MCP)."""
    from lib.model import dijkstra_kernel

    lengths = np.sqrt(((geodesic_graph._OFFSETS * 1.0) ** 2).sum(1))
    seeds = np.array([[0, 0, 0]])
    for cost in (np.zeros((5, 5, 5)), np.where(np.indices((6, 6, 6)).sum(0) % 2 == 0, 1e-3, 1e7)):
        out = np.full(cost.shape, np.inf)
        assert not dijkstra_kernel.solve_buckets(cost, seeds, lengths, geodesic_graph._OFFSETS, out, *_NONE)
        assert np.isinf(out).all()  # untouched
        np.testing.assert_allclose(geodesic_from(cost, seeds), _mcp(cost, seeds), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_the_nearest_seed_set_is_the_argmin_of_each_sets_distance(compiled, monkeypatch):
    """nearest_seed_set (one labelling solve) against np.argmin over geodesic_from of each set, ties to the first
    set, -1 where none reaches: on exact ties (costs on a 0.1 grid), walls and anisotropic spacing; and with the
    MCP fallback."""
    from lib.model.geodesic_graph import nearest_seed_set

    if not compiled:
        monkeypatch.setattr(geodesic_graph, "dijkstra_kernel", None)
    rng = np.random.default_rng(11)
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(3, 18, 3))
        spacing = tuple(float(s) for s in rng.choice([0.5, 1.0, 3.0], 3))
        cost = rng.uniform(1, 2, shape).round(1) if trial % 2 else geodesic_cost(rng.normal(size=shape), 30.0, spacing)
        cost[rng.random(shape) < 0.2] = np.inf
        sets = [np.stack([rng.integers(0, n, k) for n in shape], axis=1) for k in rng.integers(1, 6, 3)]
        dist = np.stack([geodesic_from(cost, s, spacing) for s in sets])
        expected = np.where(np.isfinite(dist).any(axis=0), np.argmin(dist, axis=0), -1)
        np.testing.assert_array_equal(nearest_seed_set(cost, sets, spacing), expected)
    with pytest.raises(ValueError, match="at least one seed"):
        nearest_seed_set(np.ones((4, 4, 4)), [np.array([[0, 0, 0]]), np.zeros((0, 3), np.int64)])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        geodesic_from(np.ones((4, 4, 4)), np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        geodesic_from(np.ones((4, 4, 4)), np.array([[4, 0, 0]]))
    with pytest.raises(ValueError, match="outside"):
        geodesic_from(np.ones((4, 4, 4)), np.array([[0, -1, 0]]))
    with pytest.raises(ValueError, match="3-D"):
        geodesic_from(np.ones((4, 4)), np.array([[0, 0, 0]]))


def test_an_all_wall_field_answers_infinity_but_at_the_seed():
    got = geodesic_from(np.full((3, 3, 3), np.inf), np.array([[1, 1, 1]]))
    assert got[1, 1, 1] == 0.0 and np.isinf(got).sum() == 26


def test_a_forked_child_solves_two_seed_sets_too():
    """A data loader worker forked after the parent used the thread pool must not wait for threads it lacks."""
    import multiprocessing as mp

    cost = np.ones((6, 6, 6))
    seeds = [np.array([[0, 0, 0]]), np.array([[5, 5, 5]])]
    parent = geodesic_from_each(cost, seeds)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(geodesic_from_each, (cost, seeds)).get(timeout=60)
    for a, b in zip(parent, child):
        np.testing.assert_array_equal(a, b)
