"""Click simulation: evaluation rule (centre of largest error component) and training rule."""
import numpy as np
import torch

from lib.evaluation.clicks import first_click, next_click_from_error
from lib.training.clicks import sample_click_uniform


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_no_error_returns_none():
    gt = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    assert next_click_from_error(gt.copy(), gt) is None
    assert first_click(np.zeros((5, 5, 5), bool)) is None


def test_first_click_is_centre_of_largest_component():
    gt = _box((30, 30, 30), (2, 2, 2), (5, 5, 5))  # small cube
    gt |= _box((30, 30, 30), (10, 12, 14), (21, 23, 25))  # large cube, centre (15, 17, 19)
    (p, inc) = first_click(gt)
    assert inc is True
    assert p == (15, 17, 19)
    assert gt[p]


def test_false_negative_gives_include_click_in_missing_part():
    gt = _box((20, 20, 20), (2, 2, 2), (18, 18, 18))
    pred = _box((20, 20, 20), (2, 2, 2), (18, 18, 10))  # misses the k >= 10 half
    p, inc = next_click_from_error(pred, gt)
    assert inc is True
    assert gt[p] and not pred[p]
    assert p[2] >= 10


def test_false_positive_dominant_gives_exclude_click():
    gt = _box((20, 20, 20), (8, 8, 8), (10, 10, 10))
    pred = _box((20, 20, 20), (2, 2, 2), (18, 18, 18))  # far too large
    p, inc = next_click_from_error(pred, gt)
    assert inc is False
    assert pred[p] and not gt[p]


def test_larger_region_wins_even_if_other_error_present():
    gt = _box((24, 24, 24), (0, 0, 0), (12, 24, 24))
    pred = _box((24, 24, 24), (0, 0, 0), (10, 24, 24))  # FN: 2 slabs
    pred |= _box((24, 24, 24), (20, 20, 20), (22, 22, 22))  # FP: 8 voxels
    p, inc = next_click_from_error(pred, gt)
    assert inc is True and 10 <= p[0] < 12


def test_border_counts_as_boundary():
    # An error slab touching the array edge: the centre must be in the middle of the slab's
    # thickness, not on the edge row.
    gt = _box((9, 9, 9), (0, 0, 0), (9, 9, 9))
    pred = _box((9, 9, 9), (3, 0, 0), (9, 9, 9))  # FN = rows 0..2
    p, inc = next_click_from_error(pred, gt)
    assert inc and p[0] == 1


def test_rng_breaks_ties_inside_maxima():
    gt = _box((4, 10, 4), (0, 0, 0), (4, 10, 4))
    rng = np.random.default_rng(0)
    pts = {next_click_from_error(np.zeros_like(gt), gt, rng)[0] for _ in range(20)}
    assert len(pts) > 1
    for p in pts:
        assert p[0] in (1, 2) and p[2] in (1, 2)


def test_centre_in_millimetres_on_anisotropic_grid():
    # 9 x 9 x 3 voxels of 2 x 2 x 5 mm (18 x 18 x 15 mm). Counted in voxels, the middle slice is 2
    # voxels from the boundary wherever it is 2 voxels inside the rim: a tie that the first voxel in
    # C order wins. In mm the middle voxel is 10 mm from every side and the only centre.
    gt = np.zeros((11, 11, 5), bool)
    gt[1:10, 1:10, 1:4] = True
    assert first_click(gt)[0] == (2, 2, 2)
    assert first_click(gt, spacing=(2.0, 2.0, 5.0))[0] == (5, 5, 2)
    # the same rule for corrections: the missed 5 x 5 x 3 voxels (10 x 10 x 15 mm) are clicked at
    # their centre in mm; in voxels the thin axis makes a tie again
    pred = gt.copy()
    pred[1:6, 1:6, 1:4] = False
    assert next_click_from_error(pred, gt) == ((2, 2, 2), True)
    assert next_click_from_error(pred, gt, spacing=(2.0, 2.0, 5.0)) == ((3, 3, 2), True)


def test_sample_click_uniform_labels_and_locations():
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(3, 1, 8, 8, 8, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 0, 2:6, 2:6, 2:6] = True  # item 0: only FN
    pred[1, 0, 1:3, 1:3, 1:3] = True  # item 1: only FP
    gt[2, 0, 4, 4, 4] = True
    pred[2] = gt[2]  # item 2: perfect -> fallback inside gt
    for _ in range(10):
        c, lab = sample_click_uniform(pred, gt, g)
        assert c.shape == (3, 1, 3) and c.dtype == torch.float32
        assert lab.shape == (3, 1) and lab.dtype == torch.int64
        assert lab.tolist() == [[1], [0], [1]]
        ci = c.long()
        assert gt[0, 0, ci[0, 0, 0], ci[0, 0, 1], ci[0, 0, 2]]
        assert pred[1, 0, ci[1, 0, 0], ci[1, 0, 1], ci[1, 0, 2]]
        assert ci[2, 0].tolist() == [4, 4, 4]


def test_sample_click_uniform_is_uniform_over_error():
    g = torch.Generator().manual_seed(1)
    gt = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    gt[0, 0] = True  # 4 error voxels (pred empty)
    counts = {}
    for _ in range(800):
        c, lab = sample_click_uniform(torch.zeros_like(gt), gt, g)
        key = tuple(c[0, 0].long().tolist())
        assert key[0] == 0
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 4
    assert min(counts.values()) > 150  # expected 200 each


def test_sample_click_uniform_empty_gt_and_pred():
    gt = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    c, lab = sample_click_uniform(gt.clone(), gt, torch.Generator().manual_seed(0))
    assert lab.tolist() == [[0], [0]]
    assert ((c >= 0) & (c < 4)).all()
