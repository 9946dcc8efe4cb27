"""User errors become SessionError with a message naming what was wrong (issue 3, item 7)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lib.session import SegmentationEngine, SessionError
from test_session_fakes import BallModel, ras_affine, smooth_volume, write_nifti


@pytest.fixture()
def engine():
    return SegmentationEngine(BallModel(), "v1")


@pytest.fixture()
def volume(tmp_path):
    return write_nifti(tmp_path / "v.nii.gz", smooth_volume((40, 30, 20)), ras_affine((1.0, 1.0, 2.0)))


@pytest.mark.parametrize(
    "fg, bg, words",
    [
        ([[40, 10, 10]], [], ["foreground[0]", "outside", "[0, 39]"]),
        ([[10, 10, -1]], [], ["outside"]),
        ([[10, 10, 10]], [[5, 30, 5]], ["background[0]", "outside"]),
        ([], [[10, 10, 10]], ["only exclude"]),
        ([], [], ["no clicks"]),
        ([[10, "a", 10]], [], ["non-numeric", "foreground[0]"]),
        ([[10, 10]], [], ["[i, j, k]", "foreground[0]"]),
        ([[10, 10, 10, 1]], [], ["[i, j, k]"]),
        ([[10, float("nan"), 10]], [], ["non-finite"]),
        ([[10, True, 10]], [], ["non-numeric"]),
        ("10,10,10", [], ["must be a list"]),
        ([10, 10, 10], [], ["foreground[0]"]),
    ],
)
def test_bad_clicks(engine, volume, fg, bg, words):
    with pytest.raises(SessionError) as e:
        engine.segment("i", volume, "a", fg, bg)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_bad_request_leaves_label_state_alone(engine, volume):
    r = engine.segment("i", volume, "a", [[10, 10, 10]], [])
    with pytest.raises(SessionError):
        engine.segment("i", volume, "a", [[10, 10, 10], [99, 0, 0]], [])
    again = engine.segment("i", volume, "a", [[10, 10, 10]], [])
    np.testing.assert_array_equal(again.mask, r.mask)
    assert len(engine.runner.model.decode_calls) == 1  # nothing was replayed


def test_model_failure_rolls_back(volume):
    class Failing(BallModel):
        fail = False

        def decode(self, *a):
            if self.fail:
                raise RuntimeError("boom")
            return super().decode(*a)

    m = Failing()
    eng = SegmentationEngine(m, "v1")
    r = eng.segment("i", volume, "a", [[10, 10, 10]], [])
    m.fail = True
    with pytest.raises(RuntimeError):
        eng.segment("i", volume, "a", [[10, 10, 10], [12, 12, 10]], [])
    m.fail = False
    np.testing.assert_array_equal(eng.segment("i", volume, "a", [[10, 10, 10]], []).mask, r.mask)


def test_2d_and_4d_inputs_are_rejected(engine, tmp_path):
    p2 = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((30, 40), np.int16), np.eye(4)), str(p2))
    with pytest.raises(SessionError, match="2D"):
        engine.segment("i", str(p2), "a", [[1, 1, 0]], [])
    p1 = write_nifti(tmp_path / "slice.nii.gz", np.ones((30, 40, 1), np.int16), np.eye(4))
    with pytest.raises(SessionError, match="single slice is 2D"):
        engine.segment("i", p1, "a", [[1, 1, 0]], [])
    p4 = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10, 3), np.int16), np.eye(4)), str(p4))
    with pytest.raises(SessionError, match="4D"):
        engine.segment("i", str(p4), "a", [[1, 1, 1]], [])


def test_unreadable_and_missing_files(engine, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(SessionError, match="cannot read image"):
        engine.segment("i", str(bad), "a", [[1, 1, 1]], [])
    with pytest.raises(SessionError, match="not found|not accessible"):
        engine.segment("i", str(tmp_path / "missing.nii.gz"), "a", [[1, 1, 1]], [])
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(SessionError, match="no DICOM series"):
        engine.segment("i", str(empty), "a", [[1, 1, 1]], [])
    with pytest.raises(SessionError, match="image path"):
        engine.segment("i", "", "a", [[1, 1, 1]], [])
