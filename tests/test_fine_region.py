"""FineRegion (lib/session/fine_region.py): a click in a small walled structure takes its 1.5 mm region;
a click in tissue that continues past the window changes nothing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.model.flood_region import FloodRegion
from lib.session.cache import LRUCache
from lib.session.fine_region import DEFAULT_WINDOW, FineRegion, resolve_fine


def _faint_ball(size=128, radius=7.0, contrast=0.06, noise=0.01, seed=0):
    """A normalised crop: tissue at 0 filling it, a ball `contrast` brighter (a few HU in a CT's
    normalisation: 6 mm cells do not show it) at the centre, Gaussian noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, noise, (size,) * 3).astype(np.float32)
    z, y, x = np.ogrid[:size, :size, :size]
    c = size // 2
    ball = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= radius ** 2
    img[ball] += contrast
    return img, ball


def _mask(logits, size=128):
    return (F.interpolate(logits, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0] > 0).numpy()


def test_enclosed_flood_needs_the_region_inside_the_grid():
    img = np.zeros((32, 32, 32))
    img[10:20, 10:20, 10:20] = 1.0  # walled, inside
    img[0:12, 0:12, 25:32] = 1.0    # walled, but cut by the grid's faces
    inside = FloodRegion(2.0, 2.0, sigma_floor=0.005, enclosed=True)
    assert (inside(img, np.array([[15, 15, 15]]), np.zeros((0, 3), int), 6.0) > 0).sum() == 1000
    assert inside(img, np.array([[5, 5, 28]]), np.zeros((0, 3), int), 6.0) is None
    assert FloodRegion(2.0, 2.0, sigma_floor=0.005)(img, np.array([[5, 5, 28]]), np.zeros((0, 3), int), 6.0) is not None


def test_a_click_in_a_faint_small_ball_gets_the_ball():
    img, ball = _faint_ball()
    coarse = torch.full((1, 1, 32, 32, 32), 6.0)  # what a grown prior says: everything
    out = FineRegion()(img, [[64, 64, 64]], [1], coarse)
    assert out.shape == coarse.shape and out is not coarse
    m = _mask(out)
    assert 2 * (m & ball).sum() / (m.sum() + ball.sum()) > 0.8
    # the 6 mm cell means do not show the ball: its contrast is within the coarse flood's spread floor
    cells = F.avg_pool3d(torch.from_numpy(img)[None, None], 4)[0, 0].numpy().astype(np.float64)
    assert FloodRegion(2.0, 1.0)(cells, np.array([[16, 16, 16]]), np.zeros((0, 3), int), 6.0) is None


def test_tissue_beyond_the_window_and_clicks_beyond_it_leave_the_logits_alone():
    img, _ = _faint_ball(contrast=0.0)  # no wall anywhere: a large structure
    coarse = torch.randn(1, 1, 32, 32, 32)
    fine = FineRegion()
    assert fine(img, [[64, 64, 64]], [1], coarse) is coarse
    ball_img, _ = _faint_ball()
    far = [[64, 64, 64], [64, 64, 64 + DEFAULT_WINDOW + 2]]  # a second include click outside the window
    assert fine(ball_img, far, [1, 1], coarse) is coarse
    assert fine(ball_img, [[10, 10, 10]], [0], coarse) is coarse  # no include click


def test_an_exclude_click_inside_the_region_cuts_it():
    img, ball = _faint_ball(radius=9.0)
    coarse = torch.zeros(1, 1, 32, 32, 32)
    whole = _mask(FineRegion()(img, [[64, 64, 64]], [1], coarse))
    cut = _mask(FineRegion()(img, [[64, 64, 64], [64, 64, 71]], [1, 0], coarse))
    assert cut.sum() < 0.9 * whole.sum() and not cut[64, 64, 71]


def test_resolve_fine_modes():
    assert resolve_fine("auto", {}) is None and resolve_fine(None, None) is None
    assert resolve_fine("auto", {"prior_fine_window": 16}).window == 16
    assert resolve_fine("on", {}).window == DEFAULT_WINDOW
    assert resolve_fine("off", {"prior_fine_window": 16}) is None
    with pytest.raises(ValueError, match="prior_fine"):
        resolve_fine("yes", {})
    from lib.model import CLICK_UNET_CONFIG, build_model

    with pytest.raises(ValueError, match="prior_fine_window"):
        build_model({**CLICK_UNET_CONFIG, "prior_fine_window": -1})


def test_the_engine_serves_a_faint_lesion_with_the_fine_region_and_the_box_without(tmp_path):
    """Through SegmentationEngine, a CT: a 1.4 ml lesion 10 HU above a large homogeneous tissue, and bone
    (2000 HU) at the side, so the normalisation's spread is a CT's. The box prior answers with a region
    many times the lesion (its contrast is below the 6 mm cells' reach); with the fine region, the lesion."""
    from lib.session import SegmentationEngine
    from lib.session.refine import GeodesicRefine
    from test_flood_region import _prior_only_model
    from test_session_fakes import ras_affine, write_nifti

    rng = np.random.default_rng(0)
    img = (400.0 + rng.normal(0, 2.0, (96, 96, 96))).astype(np.float32)
    img[:, :, 84:] = 2000.0
    z, y, x = np.ogrid[:96, :96, :96]
    lesion = (z - 48) ** 2 + (y - 48) ** 2 + (x - 40) ** 2 <= 6 ** 2
    img[lesion] += 10.0
    path = write_nifti(tmp_path / "lesion.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))
    dice = lambda m: 2 * (m & lesion).sum() / (m.sum() + lesion.sum())  # noqa: E731
    refine = GeodesicRefine(band=6.0, gamma=60.0, full_res_max_voxels=150000)
    engines = [SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=1, refine=r, fine=f)
               for r, f in ((refine, None), (refine, FineRegion()), (None, FineRegion()))]
    masks = [e.segment("l", path, "lesion", [[48, 48, 40]], [], modality="CT").mask.astype(bool) for e in engines]
    assert dice(masks[0]) < 0.3 and masks[0].sum() > 5 * lesion.sum()
    assert dice(masks[1]) > 0.8
    # without a full-resolution refinement the engine keeps the 1.5 mm crop itself; the cells' coverage alone,
    # upsampled, is coarser at the edge but the same lesion
    assert dice(masks[2]) > 0.6 and any(k[0] == "fimg" for k in engines[2].cache._data)
    assert not any(k[0] == "fimg" for k in engines[1].cache._data)  # the refinement's copy served


def test_lru_get_or_put_makes_once_and_returns_what_it_cannot_keep():
    cache, made = LRUCache(1000), []
    make = lambda n: (lambda: made.append(n) or np.zeros(n, np.uint8))  # noqa: E731
    assert cache.get_or_put("a", make(10)).size == 10 and cache.get_or_put("a", make(20)).size == 10
    assert made == [10]
    assert cache.get_or_put("big", make(5000)).size == 5000 and "big" not in cache


def test_the_clicks_cells_keep_their_labels():
    """As GeodesicPrior's: an include click's cell is inside even where the region covers little of it (a
    click near the structure's edge), an exclude click's outside."""
    img, ball = _faint_ball(radius=7.0)
    click, ex = [64, 62, 59], [10, 10, 10]  # 3^3 around the click inside the ball; its cell 41 % covered
    out = FineRegion()(img, [click, ex], [1, 0], torch.zeros(1, 1, 32, 32, 32))
    cell = lambda p: tuple(int(v) // 4 for v in p)  # noqa: E731
    assert ball[64:68, 60:64, 56:60].mean() < 0.5  # without the rule this cell would be outside
    assert out[(0, 0) + cell(click)] == 6.0 and (_mask(out) & ball).sum() > 0.8 * ball.sum()
    out = FineRegion()(img, [click, [64, 66, 64]], [1, 0], torch.zeros(1, 1, 32, 32, 32))  # exclude inside
    assert out[(0, 0) + cell([64, 66, 64])] == -6.0 and out[(0, 0) + cell(click)] == 6.0


def test_the_engine_skips_the_fine_region_where_the_flood_decided_the_crop(tmp_path, monkeypatch):
    """A crop the prior answered with its flood holds a large walled tissue, so the small-structure check (one
    more shortest-path solve per decode) is not run there; where the flood did not decide, it is."""
    from lib.session import SegmentationEngine
    from test_flood_region import _prior_only_model
    from test_session_fakes import ras_affine, write_nifti

    torch.manual_seed(0)
    img = np.zeros((96, 96, 96), np.float32)
    img[20:76, 16:80, 24:72] = 400.0  # a large walled block (as the flood tests)
    img += np.random.default_rng(0).normal(0, 4.0, img.shape).astype(np.float32)
    path = write_nifti(tmp_path / "block.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))
    calls = []
    original = FineRegion.__call__
    monkeypatch.setattr(FineRegion, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    model = _prior_only_model(margin=3)
    eng = SegmentationEngine(model, "v", click_mode="all", max_crops=1, fine=FineRegion())
    eng.segment("b", path, "flooded", [[48, 48, 48]], [], prior_flood="on")
    assert calls == [] and model.prior.last_flooded == [True]
    eng.segment("b", path, "box", [[48, 48, 48]], [])
    assert calls == [1] and model.prior.last_flooded == [False]
