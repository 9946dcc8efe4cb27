"""lib.session.refine: the image-aware refinement of a crop's mask (optional post-processing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.session import SegmentationEngine
from lib.session.refine import GeodesicRefine, refine_image, refine_images, refine_logits
from test_session_fakes import BallModel, ras_affine, write_nifti


def _edge_image(size=32, edge=19):
    img = np.zeros((size,) * 3)
    img[:, :, edge:] = 3.0  # an edge between voxels edge-1 and edge on the last axis
    return img


def test_the_unsure_band_follows_the_image_edge_and_the_rest_is_the_model():
    img = _edge_image()
    # coarse logits (8^3 cells of 4 refinement voxels... here factor 1 on a 32^3 crop): a ramp whose zero
    # crossing (z = 12) misses the image edge (z = 19) by 7 voxels
    z = (torch.arange(8, dtype=torch.float32) * 4 + 1.5)
    logits = (12.0 - z).view(1, 1, 1, 1, 8).expand(1, 1, 8, 8, 8) * 0.5
    params = GeodesicRefine(band=6.0, gamma=20.0, factor=1)
    out = refine_logits(logits, img, [(16.0, 16.0, 4.0)], [1], params)[0, 0]
    up = torch.nn.functional.interpolate(logits, size=(32,) * 3, mode="trilinear", align_corners=False)[0, 0]
    assert out.shape == (32, 32, 32)
    assert (up[16, 16] > 0).nonzero().max() == 11  # the model alone stops at z = 11
    assert (out[16, 16] > 0).nonzero().max() == 18  # refined: up to the edge
    confident = up.abs() >= 6.0
    assert torch.equal(out[confident], up[confident])  # outside the band the model's logits are kept
    assert (out.abs() <= up.abs().max() + 1e-6).all()


def test_clicks_keep_their_label_and_degenerate_cases_return_the_model():
    img = _edge_image()
    logits = torch.full((1, 1, 8, 8, 8), 1.0)  # all unsure, no confident outside
    params = GeodesicRefine(band=2.0, factor=1)
    out = refine_logits(logits, img, [(5.0, 5.0, 5.0), (20.0, 20.0, 25.0)], [1, 0], params)[0, 0]
    assert out[5, 5, 5] == 2.0 and out[20, 20, 25] == -2.0  # the exclude click makes an outside seed
    assert out[5, 5, 10] > 0 and out[5, 5, 28] < 0  # ...and the edge splits the two
    lone = refine_logits(logits, img, [], [], params)[0, 0]
    assert torch.allclose(lone, torch.ones(32, 32, 32))  # nothing confident outside: the model's logits
    with pytest.raises(ValueError):
        GeodesicRefine(band=0.0)
    with pytest.raises(ValueError):
        GeodesicRefine(factor=3)


def test_refine_image_pools_and_clamps():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., :2, :2, :2] = 100.0
    img = refine_image(x, 2)
    assert img.shape == (4, 4, 4) and img[0, 0, 0] == pytest.approx(10.0) and img[1, 1, 1] == 0


def test_engine_with_refinement_snaps_the_ball_to_the_cube(tmp_path):
    vol = np.zeros((48, 48, 48), np.float32)
    vol[14:34, 14:34, 14:34] = 100.0  # a bright cube, 20 voxels a side
    path = write_nifti(tmp_path / "cube.nii.gz", vol, ras_affine((1.5, 1.5, 1.5)))
    cube = vol > 0

    def dice(m):
        return 2 * (m.astype(bool) & cube).sum() / (m.astype(bool).sum() + cube.sum())

    plain = SegmentationEngine(BallModel(radius=16.0, image_size=64), "ball").segment("c", path, "a", [[24, 24, 24]], [])
    refined_engine = SegmentationEngine(BallModel(radius=16.0, image_size=64), "ball",
                                        refine=GeodesicRefine(band=20.0, gamma=20.0, factor=2))
    refined = refined_engine.segment("c", path, "a", [[24, 24, 24]], [])
    assert dice(plain.mask) < 0.8 and dice(refined.mask) > 0.9
    again = refined_engine.segment("c", path, "a", [[24, 24, 24]], [[40, 40, 40]])  # a repeat click
    assert again.cache_hit and dice(again.mask) > 0.9


def test_resolve_refine_is_the_servers_and_the_evaluations_one_rule():
    from lib.session.refine import GeodesicRefine, resolve_refine

    model_says = {"band": 6.0, "gamma": 60.0}
    assert resolve_refine("auto", model_says) == GeodesicRefine(6.0, 60.0, 2)
    assert resolve_refine("auto", None) is None and resolve_refine(None, None) is None
    assert resolve_refine("none", model_says) is None
    assert resolve_refine("geodesic", None) == GeodesicRefine()  # the documented defaults
    assert resolve_refine(" Geodesic ", model_says, band=3.0, gamma=None, factor=4.0) == GeodesicRefine(3.0, 60.0, 4)
    for bad_mode, kw in (("always", {}), ("geodesic", {"factor": 2.5}), ("geodesic", {"band": -1.0})):
        with pytest.raises(ValueError, match="refine"):
            resolve_refine(bad_mode, model_says, **kw)


def test_the_fine_stage_places_the_edge_to_the_voxel_where_the_coarse_grid_cannot():
    """fine_band: after the S/2 stage, a thin shell around its edge is re-decided on the crop's own grid.
    An edge at an odd voxel (z = 19 | 20) falls inside a 2-voxel block: the coarse stage can only put it on a
    block boundary; the fine stage puts it on the image's edge."""
    img = torch.from_numpy(_edge_image(32, 19)).float()[None, None]
    z = torch.arange(8, dtype=torch.float32) * 4 + 1.5
    logits = (12.0 - z).view(1, 1, 1, 1, 8).expand(1, 1, 8, 8, 8) * 0.5  # the model stops at z = 12
    coarse = GeodesicRefine(band=6.0, gamma=20.0, factor=2)
    fine = GeodesicRefine(band=6.0, gamma=20.0, factor=2, fine_band=2.0)
    assert coarse.factors == (2,) and fine.factors == (2, 1)
    images = refine_images(img, fine)
    assert sorted(images) == [1, 2] and images[1].shape == (32,) * 3 and images[2].shape == (16,) * 3
    out_c = refine_logits(logits, images[2], [(16.0, 16.0, 4.0)], [1], coarse)[0, 0]
    out_f = refine_logits(logits, images, [(16.0, 16.0, 4.0)], [1], fine)[0, 0]
    assert out_c.shape == (16,) * 3 and out_f.shape == (32,) * 3
    # what the paste-back sees of the coarse result at the crop's grid: it ends on a block boundary
    up_c = torch.nn.functional.interpolate(out_c[None, None], size=(32,) * 3, mode="trilinear", align_corners=False)
    assert int((up_c[0, 0, 16, 16] > 0).nonzero().max()) != 18
    assert int((out_f[16, 16] > 0).nonzero().max()) == 18  # fine: exactly the image's edge (bright from z = 19)
    with pytest.raises(ValueError):
        GeodesicRefine(fine_band=-1.0)
    assert GeodesicRefine(factor=1, fine_band=2.0).factors == (1,)  # already full resolution: one stage


def test_a_small_band_is_decided_at_full_resolution_and_a_large_one_is_not():
    """full_res_max_voxels: the grid follows the band's size (its bounding box on the crop's own grid,
    estimated on the logits' grid), so small structures get 1.5 mm edges and large ones keep the cheap grid."""
    img = torch.from_numpy(_edge_image(32, 19)).float()[None, None]
    z = torch.arange(8, dtype=torch.float32) * 4 + 1.5
    # cells 5.25, 3.25, ..., -8.75 along z: the band |x| < 6 is z-cells 0-5, its box grown by a cell 8 x 8 x 7
    # cells = 32 x 32 x 28 voxels of the crop
    logits = (12.0 - z).view(1, 1, 1, 1, 8).expand(1, 1, 8, 8, 8) * 0.5
    point = [(16.0, 16.0, 4.0)]
    small_budget = GeodesicRefine(band=6.0, gamma=20.0, factor=2, full_res_max_voxels=32 * 32 * 28 - 1)
    large_budget = GeodesicRefine(band=6.0, gamma=20.0, factor=2, full_res_max_voxels=32 * 32 * 28)
    assert small_budget.factors == (2, 1) and GeodesicRefine(factor=2).factors == (2,)
    images = refine_images(img, large_budget)
    coarse = refine_logits(logits, images, point, [1], small_budget)[0, 0]  # one voxel over: coarse grid
    fine = refine_logits(logits, images, point, [1], large_budget)[0, 0]
    assert coarse.shape == (16,) * 3 and fine.shape == (32,) * 3
    assert int((fine[16, 16] > 0).nonzero().max()) == 18  # the edge to the voxel
    # a narrower band (|x| < 1: z-cell 3 only, box 32 x 32 x 12 voxels) fits a smaller budget
    narrow = GeodesicRefine(band=1.0, gamma=20.0, factor=2, full_res_max_voxels=32 * 32 * 12)
    assert refine_logits(logits, images, point, [1], narrow).shape[-1] == 32
    with pytest.raises(ValueError, match="full_res_max_voxels"):
        GeodesicRefine(full_res_max_voxels=-1)


def test_the_full_resolution_budget_comes_from_the_model_or_the_overrides():
    from lib.session.refine import resolve_refine

    says = {"band": 6.0, "gamma": 60.0, "full_res_max_voxels": 1000}
    assert resolve_refine("auto", says) == GeodesicRefine(6.0, 60.0, 2, full_res_max_voxels=1000)
    assert resolve_refine("auto", says, full_res_max_voxels=0.0) == GeodesicRefine(6.0, 60.0, 2)
    with pytest.raises(ValueError, match="full_res_max_voxels"):
        resolve_refine("auto", says, full_res_max_voxels=2.5)


def test_refine_logits_says_which_grids_it_needs():
    logits = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="factors"):
        refine_logits(logits, np.zeros((16,) * 3), [(4.0, 4.0, 4.0)], [1],
                      GeodesicRefine(band=6.0, factor=2, full_res_max_voxels=1000))


def test_a_band_that_touches_only_one_side_is_decided_without_error():
    """An unsure hole enclosed by the confident inside, the only outside an exclude click far away (where
    the model is confident it is inside): no outside seed touches the band, so the hole goes to the
    inside that reaches it. It used to raise in MCP (empty seed set): a failed click for the user."""
    logits = torch.full((1, 1, 8, 8, 8), 10.0)
    logits[..., 3:5, 3:5, 3:5] = 0.0  # the unsure hole
    img = np.zeros((32,) * 3)
    out = refine_logits(logits, img, [(2.0, 2.0, 2.0), (30.0, 30.0, 30.0)], [1, 0],
                        GeodesicRefine(band=2.0, gamma=20.0, factor=1))[0, 0]
    assert (out[14:18, 14:18, 14:18] > 0).all() and out[30, 30, 30] < 0
