"""Classical comparison methods (random walker, geodesic region) and the NSD metric (issue 14)."""
from __future__ import annotations

import numpy as np
import pytest

from lib.evaluation.classical import ClassicalSegmenter
from lib.session.classical_region import ClassicalParams, normalise_roi, roi_box, seed_labels, segment_array
from lib.evaluation.metrics import dice, surface_dice
from test_session_fakes import ras_affine, write_nifti

PARAMS = ClassicalParams(margin_mm=12.0, border="always", seed_radius_mm=2.0, sigma_mm=1.0, beta=1000.0, gamma=10.0)


def _ellipsoid_mm(shape, spacing, centre, radii_mm):
    idx = np.indices(shape).astype(np.float64)
    return sum(((idx[a] - centre[a]) * spacing[a] / radii_mm[a]) ** 2 for a in range(3)) <= 1.0


def _noisy(mask, lo=100.0, hi=300.0, sd=25.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(mask, hi, lo) + rng.normal(0, sd, mask.shape)


def test_roi_box_margin_in_mm_and_image_border_faces():
    box, inner = roi_box([(10, 10, 5)], (40, 40, 12), (1.0, 1.0, 4.0), margin_mm=8.0)
    assert box == (slice(2, 19), slice(2, 19), slice(3, 8))  # 8 voxels in-plane, 2 on the 4 mm axis
    assert inner == [(True, True)] * 3
    box, inner = roi_box([(1, 38, 5), (3, 30, 6)], (40, 40, 12), (1.0, 1.0, 4.0), margin_mm=8.0)
    assert box[0] == slice(0, 12) and box[1] == slice(22, 40)
    assert inner[0] == (False, True) and inner[1] == (True, False)  # the image border is not a seed face


def test_seed_labels_border_brush_and_click_precedence():
    lab = seed_labels((9, 9, 5), [(4, 4, 2)], [(4, 4, 3)], [(True, True), (True, False), (False, False)],
                      (1.0, 1.0, 2.0), seed_radius_mm=1.0)
    assert lab[4, 4, 2] == 1 and lab[4, 4, 3] == 2  # each click keeps its own label
    assert lab[3, 4, 2] == 1 and lab[4, 5, 2] == 1  # 1 mm brush in-plane
    assert lab[0, 2, 2] == 2 and lab[8, 2, 2] == 2 and lab[2, 0, 2] == 2
    assert lab[2, 8, 2] == 0 and lab[2, 2, 0] == 0  # faces on the image border are not seeds
    assert seed_labels((5, 5, 5), [(2, 2, 2)], [], None, (1.0,) * 3, 0.0).sum() == 1


@pytest.mark.parametrize("method", ["random_walker", "geodesic"])
def test_one_click_segments_blob_on_anisotropic_grid(method):
    spacing = (0.8, 0.8, 3.0)
    shape = (60, 60, 20)
    gt = _ellipsoid_mm(shape, spacing, (30, 30, 10), (10.0, 8.0, 12.0))
    image = _noisy(gt)
    mask = segment_array(method, image, False, spacing, [(30, 30, 10)], [], PARAMS)
    assert dice(mask, gt) > 0.9
    # Same blob, but the method is told the grid is isotropic: the 3 mm axis is treated as 0.8 mm,
    # the margin spans 15 slices (45 mm) and the brush reaches over neighbouring slices; the result
    # must differ (spacing is really used).
    iso = segment_array(method, image, False, (0.8, 0.8, 0.8), [(30, 30, 10)], [], PARAMS)
    assert not np.array_equal(iso, mask)


@pytest.mark.parametrize("method", ["random_walker", "geodesic"])
def test_exclude_click_cuts_a_touching_neighbour(method):
    spacing = (1.0, 1.0, 1.0)
    shape = (100, 70, 70)
    a = _ellipsoid_mm(shape, spacing, (38, 35, 35), (10, 10, 10))
    b = _ellipsoid_mm(shape, spacing, (55, 35, 35), (10, 10, 10))  # overlaps a: one bright "peanut"
    image = _noisy(a | b, sd=10.0, seed=1)
    params = ClassicalParams(**{**PARAMS.__dict__, "margin_mm": 30.0})  # the box holds all of b
    only_b = b & ~a
    first = segment_array(method, image, False, spacing, [(38, 35, 35)], [], params)
    assert (first & only_b).sum() > 0.7 * only_b.sum()  # nothing tells the method where a ends
    second = segment_array(method, image, False, spacing, [(38, 35, 35)], [(60, 35, 35)], params)
    assert (second & only_b).sum() < 0.1 * only_b.sum() and second[38, 35, 35]
    assert dice(second, a) > dice(first, a) + 0.15 and dice(second, a) > 0.85


def test_no_background_seed_gives_the_whole_box_and_until_exclude_drops_border():
    shape = (20, 20, 20)
    image = _noisy(np.zeros(shape, bool))
    p = ClassicalParams(**{**PARAMS.__dict__, "margin_mm": 30.0})
    m = segment_array("random_walker", image, False, (1.0,) * 3, [(10, 10, 10)], [], p)
    assert m.all()  # the box is the image: no face inside it, no exclude click
    gt = _ellipsoid_mm((50, 50, 50), (1.0,) * 3, (25, 25, 25), (8, 8, 8))
    image = _noisy(gt)
    p = ClassicalParams(**{**PARAMS.__dict__, "border": "until_exclude"})
    with_border = segment_array("geodesic", image, False, (1.0,) * 3, [(25, 25, 25)], [], p)
    without = segment_array("geodesic", image, False, (1.0,) * 3, [(25, 25, 25)], [(25, 25, 36)], p)
    assert dice(with_border, gt) > 0.9
    box, _ = roi_box([(25, 25, 25), (25, 25, 36)], (50, 50, 50), (1.0,) * 3, p.margin_mm)
    assert without[box].mean() > with_border[box].mean()  # border seeds gone: more of the box is foreground


def test_ct_normalisation_clamps_like_the_model():
    rng = np.random.default_rng(0)
    roi = rng.normal(40, 20, (10, 10, 10))
    metal = roi.copy()
    metal[:2] = 3000.0
    clamped = roi.copy()
    clamped[:2] = 1000.0
    a = normalise_roi(metal, True, (1.0,) * 3, 0.0)
    b = normalise_roi(clamped, True, (1.0,) * 3, 0.0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(normalise_roi(metal, False, (1.0,) * 3, 0.0), b, atol=1e-3)  # MR: no clamp


def test_segmenter_reads_the_stored_grid(tmp_path):
    spacing = (1.0, 1.2, 2.5)
    shape = (50, 40, 20)
    gt = _ellipsoid_mm(shape, spacing, (22, 18, 9), (9.0, 9.0, 12.0))
    affine = ras_affine(spacing, np.diag([-1.0, 1.0, 1.0]))
    path = write_nifti(tmp_path / "img.nii.gz", _noisy(gt).astype(np.int16), affine)
    seg = ClassicalSegmenter("geodesic", PARAMS)
    assert seg.spacing(path) == pytest.approx(spacing)
    mask = seg.segment(path, [(22, 18, 9)], [])
    assert mask.shape == shape and dice(mask, gt) > 0.85
    with pytest.raises(ValueError):
        ClassicalSegmenter("graph_cut")


def test_surface_dice_tolerance_and_box_crop():
    from monai.metrics import compute_surface_dice
    import torch

    spacing = (1.0, 1.0, 2.0)
    gt = np.zeros((40, 40, 20), bool)
    gt[10:30, 10:30, 5:15] = True
    assert surface_dice(gt, gt, spacing) == 1.0
    one = np.roll(gt, 1, axis=0)  # 1 mm shift: every surface point within 2 mm
    assert surface_dice(one, gt, spacing) == 1.0
    far = np.roll(gt, 4, axis=0)  # 4 mm shift: the faces normal to axis 0 are out of tolerance
    v = surface_dice(far, gt, spacing)
    assert 0.3 < v < 0.95
    full = compute_surface_dice(torch.from_numpy(np.stack([~far, far])[None].astype(np.float32)),
                                torch.from_numpy(np.stack([~gt, gt])[None].astype(np.float32)),
                                class_thresholds=[2.0], spacing=list(spacing))
    assert v == pytest.approx(float(full.reshape(-1)[0]), abs=1e-6)  # the box crop changes nothing
    edge = np.zeros_like(gt)
    edge[:8, 10:30, 5:15] = True  # touches the array border: its surface there counts
    assert surface_dice(edge, edge, spacing) == 1.0
    assert surface_dice(np.zeros_like(gt), gt, spacing) == 0.0
    assert surface_dice(np.zeros_like(gt), np.zeros_like(gt), spacing) == 1.0


def test_coarse_factors_grow_the_finest_axis_first():
    from lib.session.classical_region import coarse_factors

    assert coarse_factors((100, 100, 10), (1.0, 1.0, 5.0), 10 ** 6) == (1, 1, 1)
    assert coarse_factors((512, 512, 60), (0.7, 0.7, 5.0), 10 ** 6) == (4, 4, 1)  # 3.5 mm > 2.8 mm: stop at 4
    assert coarse_factors((161, 197, 161), (1.0, 1.0, 1.0), 10 ** 6) == (2, 2, 2)


@pytest.mark.parametrize("method", ["random_walker", "geodesic"])
def test_large_box_solved_coarse_stays_on_the_stored_grid(method):
    spacing = (1.0, 1.0, 2.0)
    shape = (70, 70, 35)
    gt = _ellipsoid_mm(shape, spacing, (35, 35, 17), (15, 12, 20))
    image = _noisy(gt)
    params = ClassicalParams(**{**PARAMS.__dict__, "margin_mm": 30.0})
    full = segment_array(method, image, False, spacing, [(35, 35, 17)], [], params)
    coarse = segment_array(method, image, False, spacing, [(35, 35, 17)], [],
                           ClassicalParams(**{**params.__dict__, "max_voxels": 20000}))
    assert coarse.shape == shape and coarse[35, 35, 17]
    assert dice(full, gt) > 0.9 and dice(coarse, gt) > 0.85 and dice(coarse, full) > 0.85
    assert not np.array_equal(coarse, full)  # the coarse path really ran


def test_the_geodesic_sign_is_the_geodesic_scores_sign():
    """The stored-grid region decides by one labelling solve (geodesic_sign): the mask of geodesic_score > 0, ties
    (d_bg == d_fg, on a flat image) included, walls of the box and all."""
    from lib.session.classical_region import geodesic_score, geodesic_sign

    rng = np.random.default_rng(3)
    for trial in range(6):
        shape = tuple(int(n) for n in rng.integers(8, 30, 3))
        data = np.zeros(shape) if trial == 0 else rng.normal(size=shape).round(1)  # a flat image: many ties
        labels = seed_labels(shape, [tuple(int(v) for v in rng.integers(0, shape))], [tuple(int(v) for v in
                             rng.integers(0, shape))], [(True, True)] * 3, (1.0, 1.0, 2.0), 2.0)
        sign, score = geodesic_sign(data, labels, (1.0, 1.0, 2.0), 30.0), geodesic_score(data, labels, (1.0, 1.0, 2.0), 30.0)
        np.testing.assert_array_equal(sign > 0, score > 0)
        assert (score == 0).any() or trial > 0  # the flat image does tie
