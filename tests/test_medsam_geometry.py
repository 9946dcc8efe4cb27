"""LiteMedSAM geometry and protocol logic without the model: slice frames, boxes, propagation
rules, box edits of the evaluation, weights lookup errors. Fast (numpy only)."""
import numpy as np
import pytest

from lib.evaluation.medsam import box_from_target, edit_box
from lib.medsam.preprocess import area_matrix, box256_from_mask, box_to_256, resized_shape, slice_input, window_volume
from lib.medsam.propagate import BoxError, clamp_roi, propagate_box
from lib.medsam.slices import choose_frame
from lib.medsam.weights import MedSAMWeightsError, locate

LPS_IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def _direction(perm, signs):
    """ITK direction whose stored axis a points along world axis perm[a] with sign signs[a]."""
    d = np.zeros((3, 3))
    for a in range(3):
        d[perm[a], a] = signs[a]
    return tuple(d.ravel())


def _store(canonical, perm, signs):
    """Store an LPS-ordered (x, y, z) array with the given axis permutation and flips."""
    arr = canonical
    for w in range(3):
        if signs[perm.index(w)] < 0:
            arr = np.flip(arr, axis=w)
    return np.ascontiguousarray(np.transpose(arr, perm)), _direction(perm, signs)


@pytest.mark.parametrize("perm,signs", [((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (-1, -1, 1)), ((1, 0, 2), (1, -1, 1)),
                                        ((2, 0, 1), (1, 1, -1)), ((0, 2, 1), (-1, 1, 1))])
def test_display_slices_do_not_depend_on_stored_orientation(perm, signs):
    rng = np.random.default_rng(0)
    canonical = rng.integers(0, 1000, size=(7, 5, 4))  # LPS (x, y, z), thick z
    spacing_lps = np.array([1.0, 1.0, 5.0])
    ref = choose_frame(canonical.shape, spacing_lps, LPS_IDENTITY)
    assert ref.slice_axis == 2 and ref.slice_shape == (5, 7)
    stored, direction = _store(canonical, perm, signs)
    spacing = [spacing_lps[perm[a]] for a in range(3)]
    frame = choose_frame(stored.shape, spacing, direction)
    assert frame.num_slices == 4 and frame.slice_shape == (5, 7)
    for s in range(4):
        z = s if signs[perm.index(2)] > 0 else 3 - s
        np.testing.assert_array_equal(frame.slice_of(stored, s), ref.slice_of(canonical, z))
    # put_slice is the inverse of slice_of
    out = np.zeros_like(stored)
    for s in range(4):
        frame.put_slice(out, s, frame.slice_of(stored, s))
    np.testing.assert_array_equal(out, stored)


def test_roi_and_points_map_to_the_same_pixels_as_slices():
    rng = np.random.default_rng(1)
    stored, direction = _store(rng.integers(0, 9, size=(6, 8, 5)), (1, 0, 2), (-1, 1, 1))
    frame = choose_frame(stored.shape, (1.0, 1.0, 3.0), direction)
    vol = np.zeros(stored.shape, dtype=np.uint8)
    vol[2:5, 1:3, 2:4] = 1
    (s0, s1), (x0, y0, x1, y1) = frame.roi_to_frame((2, 4, 1, 2, 2, 3))
    assert (s0, s1) == (2, 3)
    for s in range(frame.num_slices):
        rows, cols = np.nonzero(frame.slice_of(vol, s))
        if s0 <= s <= s1:
            assert (cols.min(), rows.min(), cols.max(), rows.max()) == (x0, y0, x1, y1)
        else:
            assert rows.size == 0
    s, r, c = frame.point_to_frame((3, 2, 1))
    marker = np.zeros_like(vol)
    marker[3, 2, 1] = 1
    assert frame.slice_of(marker, s)[r, c] == 1


def test_slice_axis_rule():
    # thick axis wins whatever its direction; near-isotropic: the axis along S-I
    assert choose_frame((50, 60, 70), (1.0, 4.0, 1.0), LPS_IDENTITY).slice_axis == 1
    assert choose_frame((50, 60, 70), (1.0, 1.05, 1.0), _direction((2, 0, 1), (1, 1, 1))).slice_axis == 0
    assert choose_frame((50, 60, 70), (1.0, 1.0, 1.0), LPS_IDENTITY, slice_axis=0).slice_axis == 0


def test_windowing_and_resizing():
    hu = np.array([-2000, -160, 40, 240, 3000], dtype=np.int16)
    np.testing.assert_array_equal(window_volume(hu, True), [0, 0, 127, 255, 255])
    np.testing.assert_array_equal(window_volume(hu, True, "lung")[[0, 4]], [0, 255])
    mr = np.concatenate([np.zeros(10), np.linspace(1, 100, 1000)]).astype(np.float32)
    u8 = window_volume(mr, False)
    assert u8[:10].max() == 0 and u8.max() == 255
    assert resized_shape(128, 128) == (256, 256) and resized_shape(512, 384) == (256, 192)
    np.testing.assert_allclose(area_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(area_matrix(2, 4), [[1, 0], [1, 0], [0, 1], [0, 1]])
    x, hw = slice_input(np.tile(np.arange(100, dtype=np.uint8), (50, 1)))
    assert hw == (128, 256) and x.shape == (1, 3, 256, 256)
    assert float(x[0, 0, :128].min()) == 0.0 and float(x[0, 0, :128].max()) == 1.0 and float(x[0, :, 128:].abs().max()) == 0
    np.testing.assert_array_equal(box_to_256([10, 20, 63, 127], (128, 128)), [20, 40, 126, 254])
    m = np.zeros((128, 128), bool)
    m[20:40, 30:50] = True
    np.testing.assert_array_equal(box256_from_mask(m), [57, 37, 102, 82])
    assert box256_from_mask(np.zeros((9, 9), bool)) is None


def test_roi_validation():
    assert clamp_roi([-5, 200, 3, 4, 0, 0], (100, 10, 5)) == (0, 99, 3, 4, 0, 0)
    for bad in ([1, 2, 3], [5, 1, 0, 1, 0, 1], [0, 1, 0, 1, "a", 1], [0, 1, 0, 1, 0, float("nan")], [200, 300, 0, 1, 0, 1]):
        with pytest.raises(BoxError):
            clamp_roi(bad, (100, 10, 5))


class _OraclePredictor:
    """Stands in for VolumePredictor: 'segments' the ground truth inside the prompt box, so the
    protocol's control flow (centre, directions, neighbour boxes, stopping) is checked exactly."""

    def __init__(self, gt, spacing=(1.0, 1.0, 4.0)):
        self.frame = choose_frame(gt.shape, spacing, LPS_IDENTITY)
        self.gt = gt
        self.calls = []

    def predict_256(self, s, box256):
        import torch

        self.calls.append((s, tuple(int(v) for v in box256)))
        plane = self.frame.slice_of(self.gt, s).astype(bool)
        scale = max(plane.shape) / 256
        x0, y0, x1, y1 = (int(v * scale) for v in box256)
        inside = np.zeros_like(plane)
        inside[y0:y1 + 1, x0:x1 + 1] = True
        return torch.from_numpy(np.where(plane & inside, 5.0, -5.0)), 0.9


def test_propagation_protocol_stops_where_the_structure_ends():
    gt = np.zeros((64, 64, 12), dtype=np.uint8)
    gt[20:40, 10:30, 3:8] = 1  # slices 3..7
    gt[45:50, 45:50, 9:11] = 1  # a different object beyond a gap: must not be reached
    pred = _OraclePredictor(gt)
    res = propagate_box(pred, (18, 42, 8, 32, 2, 11))
    assert res.centre == 6 and res.slices == [3, 4, 5, 6, 7]
    np.testing.assert_array_equal(res.mask, gt * (np.arange(12) < 9))
    order = [s for s, _ in pred.calls]
    assert order == [6, 7, 8, 5, 4, 3, 2]  # up until empty (8), then down until empty (2)
    # neighbour prompts are the previous mask's box (+3 px in 256 space), not the user's box
    assert dict(pred.calls)[7] == (77, 37, 162, 122)  # cols 20..39, rows 10..29 at x4
    # a start slice outside the structure gives an empty result and no propagation
    pred2 = _OraclePredictor(gt)
    assert propagate_box(pred2, (18, 42, 8, 32, 0, 1)).mask.sum() == 0 and len(pred2.calls) == 1
    # clipping to the ROI in-plane
    res = propagate_box(_OraclePredictor(gt), (18, 42, 8, 20, 2, 11), clip_to_roi=True)
    assert res.mask[:, 21:].sum() == 0 and res.mask.sum() > 0


def test_evaluation_box_and_edits():
    gt = np.zeros((20, 20, 10), bool)
    gt[5:10, 6:12, 2:5] = True
    assert box_from_target(gt, (1.0, 1.0, 5.0), margin_mm=2.0) == (3, 11, 4, 13, 2, 4)
    roi = (3, 11, 4, 13, 2, 4)
    assert edit_box(roi, (4, 8, 3), include=False) == ((5, 11, 4, 13, 2, 4), False)  # nearest face: i_min
    assert edit_box(roi, (15, 8, 3), include=True) == ((3, 15, 4, 13, 2, 4), False)
    assert edit_box(roi, (6, 8, 3), include=True) == (roi, True)
    assert edit_box((3, 3, 4, 4, 2, 2), (3, 4, 2), include=False) == ((3, 3, 4, 4, 2, 2), False)


def test_weights_lookup_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSAM_LITE_WEIGHTS", raising=False)
    with pytest.raises(MedSAMWeightsError, match="configured LiteMedSAM weights not found"):
        locate(str(tmp_path / "nope.pth"))
    monkeypatch.setattr("lib.medsam.weights.package_asset", lambda: None)
    (tmp_path / "lite_medsam.pth").write_bytes(b"not the weights")
    with pytest.raises(MedSAMWeightsError, match="lib.medsam.fetch") as e:
        locate(cache_dir=str(tmp_path))
    assert "size 15" in str(e.value)


def test_anchor_slices_seed_their_own_propagation():
    gt = np.zeros((64, 64, 12), dtype=np.uint8)
    gt[20:40, 10:30, 1:5] = 1  # slices 1..4
    gt[22:38, 12:28, 7:11] = 1  # slices 7..10, after a gap at 5..6
    pred = _OraclePredictor(gt)
    res = propagate_box(pred, (18, 42, 8, 32, 0, 11))  # centre 5 lies in the gap: nothing
    assert res.mask.sum() == 0
    res = propagate_box(_OraclePredictor(gt), (18, 42, 8, 32, 0, 11), anchors={2: (20, 10, 39, 29), 9: (22, 12, 37, 27)})
    assert res.slices == [1, 2, 3, 4, 7, 8, 9, 10]
    np.testing.assert_array_equal(res.mask, gt)


def test_evaluation_user_model_counts_actions():
    """With an oracle model, the 3D box finds the piece through the centre; the other piece, past
    a gap, needs one 2D box on it (2 actions) and is then complete."""
    from lib.evaluation.medsam import medsam_target_dices

    gt = np.zeros((64, 64, 12), dtype=bool)
    gt[20:40, 10:30, 3:8] = True  # 5 slices around the centre
    gt[24:36, 14:26, 10:12] = True  # 2 slices past a gap
    pred = _OraclePredictor(gt.astype(np.uint8))
    d = medsam_target_dices(pred, gt, (1.0, 1.0, 4.0), num_actions=6, margin_mm=2.0)
    first = 2 * (20 * 20 * 5) / (20 * 20 * 5 + gt.sum())
    assert d[0] is None and d[1] == pytest.approx(first)
    assert d[2] == pytest.approx(first) and d[3] == 1.0 and d[4:] == [1.0, 1.0]
