"""Issue 17: MedSAM slice stride (--conf medsam_slice_stride k): stride 1 is the slice-by-slice protocol
unchanged; stride k decodes every k-th slice and fills the others from their two decoded neighbours.
Fast: stand-in predictors, no weights."""
import logging

import numpy as np
import pytest
import torch

from lib.medsam import VolumePredictor, propagate_box
from lib.medsam.slices import choose_frame

LPS_IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


class _DiskPredictor:
    """Logits of a disk whose radius changes from slice to slice (radius - distance to the centre,
    in pixels): a structure on slices 2..10 of 14, largest in the middle (6). Records decoded slices."""

    def __init__(self, radius=None, slice_stride=None):
        self.frame = choose_frame((48, 48, 14), (1.0, 1.0, 5.0), LPS_IDENTITY)
        self.radius = radius or {s: 4.0 + 2.5 * (4 - abs(s - 6)) for s in range(2, 11)}
        yy, xx = np.mgrid[:48, :48]
        self.dist = np.hypot(yy - 24.0, xx - 22.0)
        self.calls = []
        if slice_stride is not None:
            self.slice_stride = slice_stride

    def logits(self, s):
        return (self.radius[s] - self.dist) if s in self.radius else np.full((48, 48), -3.0)

    def predict_256(self, s, box256):
        self.calls.append(s)
        return torch.from_numpy(self.logits(s).astype(np.float32)), 0.9


ROI = (0, 47, 0, 47, 0, 13)


def test_stride_one_is_the_slice_by_slice_protocol():
    default, one, attr = _DiskPredictor(), _DiskPredictor(), _DiskPredictor(slice_stride=1)
    a = propagate_box(default, ROI)
    b = propagate_box(one, ROI, stride=1)
    c = propagate_box(attr, ROI)
    assert default.calls == one.calls == attr.calls == [6, 7, 8, 9, 10, 11, 5, 4, 3, 2, 1]
    for r in (b, c):
        np.testing.assert_array_equal(r.mask, a.mask)
        assert r.slices == a.slices == list(range(2, 11)) and r.boxes256 == a.boxes256
    # the engine's predictor defaults to stride 1 too
    from test_medsam_speed import _StandIn, _volume

    masks = []
    for kw in ({}, {"slice_stride": 1}):
        pred = VolumePredictor(_StandIn(), _volume(), (1.0, 1.0, 3.0), np.eye(3).ravel(), True, window=(40.0, 400.0),
                               slice_axis=2, **kw)
        masks.append((propagate_box(pred, (5, 34, 6, 33, 1, 14), clip_to_roi=True).mask, pred.stats["encoded"]))
    np.testing.assert_array_equal(masks[0][0], masks[1][0])
    assert masks[0][1] == masks[1][1]


def test_stride_two_fills_skipped_slices_from_their_neighbours(caplog):
    pred = _DiskPredictor(slice_stride=2)
    with caplog.at_level(logging.INFO, logger="lib.medsam.propagate"):
        res = propagate_box(pred, ROI)
    # up: 8, 10, then 12 is empty -> slice by slice from 10: 11 (empty); down: 4, 2, 0 empty -> 1 (empty)
    assert pred.calls == [6, 8, 10, 12, 11, 4, 2, 0, 1]
    assert res.slices == list(range(2, 11))
    for u in (3, 5, 7, 9):  # never decoded: the mean of the two neighbours' logits, thresholded at 0
        assert u not in pred.calls
        want = (pred.logits(u - 1) + pred.logits(u + 1)) / 2 > 0
        np.testing.assert_array_equal(pred.frame.slice_of(res.mask, u).astype(bool), want)
    for s in (2, 4, 6, 8, 10):  # decoded slices keep their own masks
        np.testing.assert_array_equal(pred.frame.slice_of(res.mask, s).astype(bool), pred.logits(s) > 0)
    assert res.mask[..., [0, 1, 11, 12, 13]].sum() == 0
    assert any("filled from slices 6 and 8" in r.getMessage() for r in caplog.records)
    # close to stride 1's mask (the radius changes linearly except at the peak)
    full = propagate_box(_DiskPredictor(), ROI).mask
    assert 2 * (full & res.mask).sum() / (full.sum() + res.mask.sum()) > 0.97


def test_stride_three_weights_by_distance_and_meets_the_box_end():
    pred = _DiskPredictor(slice_stride=3)
    res = propagate_box(pred, (0, 47, 0, 47, 2, 12))  # centre 7; up 10 then the shortened step to 12
    assert pred.calls[:3] == [7, 10, 12]
    u = 8  # one third of the way from 7 to 10
    want = (2 * pred.logits(7) + pred.logits(10)) / 3 > 0
    np.testing.assert_array_equal(pred.frame.slice_of(res.mask, u).astype(bool), want)
    assert res.slices == list(range(2, 11))


def test_real_predictor_encodes_about_half_the_slices():
    from test_medsam_speed import _StandIn

    vol = np.full((40, 40, 24), -1000.0, np.float32)
    vol[10:30, 12:28, 2:22] = 200.0  # slices 2..21
    vol[0, 0, :] = 300.0
    n = {}
    for k in (1, 2):
        pred = VolumePredictor(_StandIn(), vol, (1.0, 1.0, 3.0), np.eye(3).ravel(), True, window=(40.0, 400.0),
                               slice_axis=2, slice_stride=k)
        res = propagate_box(pred, (5, 34, 6, 33, 2, 21), clip_to_roi=True)
        assert res.slices == list(range(2, 22))
        n[k] = pred.stats["encoded"]
    assert n[1] == 20 and n[2] <= 12


def test_server_option_is_checked():
    from lib.configs.medsam import build_medsam_task

    for bad in ("0", "two"):
        with pytest.raises(RuntimeError, match="medsam_slice_stride"):
            build_medsam_task({"medsam_slice_stride": bad})
