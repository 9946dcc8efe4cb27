"""lib.model.geodesic_graph: the CSR-graph solver gives MCP_Geometric's distances, to rounding."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.graph import MCP_Geometric

from lib.model.geodesic_graph import GeodesicGraph, geodesic_cost, geodesic_from


def _mcp(cost, seeds, spacing=(1.0, 1.0, 1.0)):
    return MCP_Geometric(cost, fully_connected=True, sampling=spacing).find_costs(seeds)[0]


@pytest.mark.parametrize("trial", range(8))
def test_same_distances_as_mcp_geometric_with_walls_and_anisotropic_spacing(trial):
    rng = np.random.default_rng(trial)
    shape = tuple(int(n) for n in rng.integers(4, 24, 3))
    cost = geodesic_cost(rng.normal(size=shape), gamma=float(rng.choice([1.0, 20.0])))
    cost[rng.random(shape) < 0.25] = np.inf  # walls: some voxels cannot be reached at all
    spacing = tuple(float(s) for s in rng.choice([0.7, 1.0, 1.5, 3.0], 3))
    seeds = np.stack([rng.integers(0, n, 12) for n in shape], axis=1)
    graph = GeodesicGraph(cost, spacing)
    expected, got = _mcp(cost, seeds, spacing), graph.distance(seeds)
    reached = np.isfinite(expected)
    assert (np.isfinite(got) == reached).all()
    assert reached.sum() > 12 and (~reached).any()
    np.testing.assert_allclose(got[reached], expected[reached], rtol=1e-12, atol=1e-9)
    # the same graph answers a second seed set (the refinement's inside and outside)
    other = seeds[:3]
    np.testing.assert_allclose(graph.distance(other), _mcp(cost, other, spacing), rtol=1e-12, atol=1e-9)


def test_a_band_with_many_seeds_matches_and_unreached_voxels_stay_infinite():
    """The refinement's case: passable only in a shell, thousands of seed voxels on one side."""
    z, y, x = np.indices((40, 40, 40))
    r = np.sqrt((z - 20.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2)
    cost = 1.0 + 4.0 * (np.abs(x - 20) < 2)  # a ridge across the shell
    cost[(r < 9) | (r > 15)] = np.inf
    seeds = np.argwhere((r >= 9) & (r < 10))
    assert len(seeds) > 1000
    expected, got = _mcp(cost, seeds), geodesic_from(cost, seeds)
    np.testing.assert_allclose(GeodesicGraph(cost).distance(seeds), expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(got, expected)
    assert np.isinf(GeodesicGraph(cost).distance(seeds)[20, 20, 20])  # inside the walled core


def test_seed_on_a_wall_is_zero_and_reaches_nothing_as_in_mcp():
    cost = np.ones((5, 5, 5))
    cost[2, 2, 2] = np.inf
    cost[0, 0, 0] = -1.0  # negative = impassable, as MCP reads it
    seeds = np.array([[2, 2, 2]])
    got = GeodesicGraph(cost).distance(seeds)
    assert got[2, 2, 2] == 0.0 and np.isinf(got).sum() == 124
    np.testing.assert_array_equal(np.isinf(got), np.isinf(_mcp(cost, seeds)))
    got = GeodesicGraph(cost).distance(np.array([[2, 2, 2], [4, 4, 4]]))
    np.testing.assert_allclose(got, _mcp(cost, np.array([[2, 2, 2], [4, 4, 4]])))


def test_bad_seeds_are_refused():
    graph = GeodesicGraph(np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="at least one seed"):
        graph.distance(np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        graph.distance(np.array([[4, 0, 0]]))
    with pytest.raises(ValueError, match="3-D"):
        GeodesicGraph(np.ones((4, 4)))


def test_an_all_wall_field_has_no_nodes_and_answers_infinity():
    got = GeodesicGraph(np.full((3, 3, 3), np.inf)).distance(np.array([[1, 1, 1]]))
    assert got[1, 1, 1] == 0.0 and np.isinf(got).sum() == 26
