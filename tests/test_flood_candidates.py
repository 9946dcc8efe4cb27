"""lib.session.flood_candidates: the first click's flood at several levels, candidates of the learned first-click
choice beside the box margins (lib.session.margin_choice, lib.session.plain_region.first_click_region)."""
from __future__ import annotations

import numpy as np
import pytest

from lib.session.flood_candidates import FloodField
from lib.session.margin_choice import FEATURES, FLOOD_FEATURES, MarginScorer, with_flood_columns


def _ellipsoid_image(n=(90, 80, 40), spacing=(1.0, 1.25, 3.0), radii_mm=(30.0, 20.0, 24.0)):
    """A bright ellipsoid (160) in noisy tissue (100) on an anisotropic grid; its mask."""
    rng = np.random.default_rng(3)
    img = (100.0 + rng.normal(0, 3.0, n)).astype(np.float32)
    axes = [(np.arange(k) - k / 2 + 0.5) * s for k, s in zip(n, spacing)]
    i, j, k = np.meshgrid(*axes, indexing="ij")
    inside = (i / radii_mm[0]) ** 2 + (j / radii_mm[1]) ** 2 + (k / radii_mm[2]) ** 2 <= 1.0
    img[inside] = 160.0
    return img, inside


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _full(shape, box, region):
    out = np.zeros(shape, dtype=bool)
    out[box] = region
    return out


def test_a_walled_structure_is_one_of_the_floods_levels_on_the_stored_grid():
    """A click in the ellipsoid: a level past its radius (in 2 mm cells at cost 1) but before the wall is crossed
    gives it back on the stored (anisotropic) grid; the smallest level is a pocket around the click; a level's
    region holds the click and lies within the volume."""
    image, inside = _ellipsoid_image()
    click = (45, 40, 20)
    field = FloodField.solve(image, False, (1.0, 1.25, 3.0), click)
    levels = (4.0, 32.0)
    small, walled = [_full(image.shape, *field.region(v)) for v in levels]
    assert _dice(walled, inside) > 0.9
    assert small[click] and small.sum() < 0.2 * inside.sum() and (small <= inside).all()
    box, _ = field.region(32.0)
    assert all(0 <= s.start < s.stop <= n for s, n in zip(box, image.shape))


def test_the_flood_features_tell_a_walled_level_from_a_pocket():
    """The features of each level: the walled level stops growing (grow_next ~ 0) and contrasts with its shell more
    than the pocket inside the tissue; the flood's own columns are set, the margin's are 0."""
    image, _ = _ellipsoid_image()
    field = FloodField.solve(image, False, (1.0, 1.25, 3.0), (45, 40, 20))
    f = field.features((4.0, 32.0, 40.0))
    col = FLOOD_FEATURES.index
    assert f.shape == (3, len(FLOOD_FEATURES))
    pocket, walled, _ = f
    assert pocket[col("grow_next")] > 1.0 and abs(walled[col("grow_next")]) < 0.1
    assert walled[col("contrast")] > 3 * pocket[col("contrast")] and walled[col("contrast_rel")] == pytest.approx(1.0, abs=0.05)
    assert (f[:, col("flood")] == 1).all() and (f[:, col("log_margin")] == 0).all() and (f[:, col("ct")] == 0).all()
    np.testing.assert_allclose(f[:, col("flood_log_level")], np.log(np.array([4.0, 32.0, 40.0]) / 16.0))
    assert f[0, col("flood_log_sigma")] == f[1, col("flood_log_sigma")] and walled[col("touch")] == 0.0


def test_a_flood_that_runs_past_its_window_touches_its_faces():
    """Uniform tissue: the flood at a large level fills the window and its shell lies on the window's faces
    inside the image (the structure goes on), as a box-bounded margin region's does."""
    rng = np.random.default_rng(0)
    image = (100.0 + rng.normal(0, 3.0, (160, 160, 160))).astype(np.float32)
    field = FloodField.solve(image, False, (1.5, 1.5, 1.5), (80, 80, 80), reach_mm=60.0)
    f = field.features((8.0, 40.0, 128.0))
    touch = f[:, FLOOD_FEATURES.index("touch")]
    assert touch[0] == 0.0 and touch[1] > 0.3 and touch[2] == 1.0  # 128: the whole window, no shell left in it
    assert f[2, FLOOD_FEATURES.index("fill")] == 1.0


def _flood_scorer(weights, margins=(10.0, 40.0), levels=(4.0, 32.0)):
    n = len(FLOOD_FEATURES)
    return MarginScorer(margins, np.zeros(n), np.ones(n), weights, flood_levels=levels)


def test_a_scorer_with_flood_levels_round_trips_and_is_checked():
    w = np.arange(len(FLOOD_FEATURES), dtype=float) / 10
    scorer = _flood_scorer(w)
    again = MarginScorer.from_config(scorer.to_config())
    assert again.flood_levels == (4.0, 32.0) and again.features == FLOOD_FEATURES
    np.testing.assert_allclose(again.weights, w)
    cfg = scorer.to_config()
    for bad in ({**cfg, "features": list(FEATURES)}, {**cfg, "flood_levels": [32, 4]},
                {**cfg, "weights": w[:len(FEATURES)].tolist()}, {**cfg, "flood_levels": [0, 4]}):
        with pytest.raises(ValueError):
            MarginScorer.from_config(bad)
    margins_only = {k: v for k, v in cfg.items() if k != "flood_levels"}  # FLOOD_FEATURES without levels
    with pytest.raises(ValueError, match="features"):
        MarginScorer.from_config(margins_only)
    padded = with_flood_columns(np.ones((2, len(FEATURES))))
    assert padded.shape == (2, len(FLOOD_FEATURES)) and (padded[:, len(FEATURES):] == 0).all()


def test_the_plain_region_serves_the_chosen_flood_level():
    """A scorer that prefers floods with a high level chooses the last level, and the plain region's first-click
    answer is that flood on the stored grid (its own box, not a margin's); one that prefers the margin candidates
    keeps the margin's box region."""
    from lib.session.classical_region import TUNED
    from lib.session.plain_region import first_click_region

    image, inside = _ellipsoid_image()
    spacing, click = (1.0, 1.25, 3.0), [[45, 40, 20]]
    w = np.zeros(len(FLOOD_FEATURES))
    w[FLOOD_FEATURES.index("flood_log_level")] = 1.0
    margin, box, region = first_click_region(image, False, spacing, click, TUNED["geodesic"], (10.0, 40.0),
                                             _flood_scorer(w))
    field = FloodField.solve(image, False, spacing, click[0])
    expected_box, expected = field.region(32.0)
    assert margin is None and box == expected_box
    np.testing.assert_array_equal(region, expected)
    assert _dice(_full(image.shape, box, region), inside) > 0.9
    w[FLOOD_FEATURES.index("flood_log_level")] = 0.0
    w[FLOOD_FEATURES.index("flood")] = -1.0
    w[FLOOD_FEATURES.index("log_margin")] = 1.0
    margin, box, region = first_click_region(image, False, spacing, click, TUNED["geodesic"], (10.0, 40.0),
                                             _flood_scorer(w))
    assert margin == 40.0 and region.shape == tuple(s.stop - s.start for s in box)
    from lib.session.plain_region import PlainRegion

    described = PlainRegion(scorer=_flood_scorer(w, levels=(7.999999999999999, 32.0))).describe()
    assert "10/40 mm and its flood at 8/32 cells of 2 mm by a learned score" in described


def test_a_slab_too_thin_for_the_flood_is_answered_by_the_margins():
    """Two 1 mm slices are one 2 mm cell thick: no flood candidate is weighed (its gradient and shell need 3 cells),
    the margins answer, even for a scorer that prefers floods."""
    from lib.session.classical_region import TUNED
    from lib.session.plain_region import first_click_region

    image = np.random.default_rng(0).normal(100, 3, (64, 64, 2)).astype(np.float32)
    w = np.zeros(len(FLOOD_FEATURES))
    w[FLOOD_FEATURES.index("flood")] = 1.0
    margin, box, region = first_click_region(image, False, (1.0, 1.0, 1.0), [[32, 32, 0]], TUNED["geodesic"],
                                             (10.0, 40.0), _flood_scorer(w))
    assert margin in (10.0, 40.0) and region.shape == tuple(s.stop - s.start for s in box)
