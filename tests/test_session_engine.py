"""Engine behaviour with the stand-in model: cache, click diffing, click modes, reset per
label, model hot-swap, multi-crop growth (issue 3, items 3-6)."""
from __future__ import annotations

import numpy as np
import pytest

from lib.session import SegmentationEngine
from lib.session.cache import LRUCache
from test_session_fakes import BallModel, ras_affine, smooth_volume, write_nifti


@pytest.fixture()
def volume(tmp_path):
    affine = ras_affine((1.0, 1.0, 2.0), np.diag([-1.0, -1.0, 1.0]))
    return write_nifti(tmp_path / "v.nii.gz", smooth_volume((90, 80, 40)), affine)


def test_repeat_click_reuses_embedding_and_decodes_once(volume):
    m = BallModel()
    eng = SegmentationEngine(m, "v1")
    r1 = eng.segment("img", volume, "a", [[40, 40, 20]], [])
    assert not r1.cache_hit and m.encode_calls == 1 and len(m.decode_calls) == 1
    assert r1.timings["encode"] > 0 and r1.timings["total"] >= r1.timings["decode"]
    assert set(r1.timings) == {"load", "preprocess", "encode", "decode", "paste", "total"}
    r2 = eng.segment("img", volume, "a", [[40, 40, 20], [44, 38, 21]], [])
    assert r2.cache_hit and m.encode_calls == 1 and len(m.decode_calls) == 2
    assert r2.timings["encode"] == 0.0 and r2.timings["preprocess"] == 0.0
    # Same lists again: nothing new to decode, same mask.
    r3 = eng.segment("img", volume, "a", [[40, 40, 20], [44, 38, 21]], [])
    assert len(m.decode_calls) == 2 and np.array_equal(r2.mask, r3.mask)
    # A second label on the same crop shares the embedding.
    eng.segment("img", volume, "b", [[40, 40, 20]], [])
    assert m.encode_calls == 1


def test_edited_click_list_restarts_the_label(volume):
    m = BallModel()
    eng = SegmentationEngine(m, "v1", click_mode="all")  # asserts the all-clicks replay
    eng.segment("img", volume, "a", [[40, 40, 20], [44, 38, 21]], [[30, 30, 20]])
    assert len(m.decode_calls) == 3  # replayed one by one: includes first, then the exclude
    assert m.decode_calls[0][1] == [1] and m.decode_calls[-1][1] == [1, 1, 0]
    n = len(m.decode_calls)
    eng.segment("img", volume, "a", [[40, 40, 20]], [])  # a click removed in the viewer
    assert len(m.decode_calls) == n + 1 and m.decode_calls[-1][2] == 0.0  # fresh: zero mask input


def test_click_modes_all_vs_newest(volume):
    for mode, expected in (("all", [[1], [1, 1], [1, 1, 0]]), ("newest", [[1], [1], [0]])):
        m = BallModel()
        eng = SegmentationEngine(m, "v1", click_mode=mode)
        eng.segment("i", volume, "a", [[40, 40, 20]], [])
        eng.segment("i", volume, "a", [[40, 40, 20], [44, 38, 21]], [])
        eng.segment("i", volume, "a", [[40, 40, 20], [44, 38, 21]], [[36, 44, 20]])
        assert [c[1] for c in m.decode_calls] == expected, mode
        # Previous logits are fed back from the second click on.
        assert m.decode_calls[0][2] == 0.0 and m.decode_calls[1][2] > 0 and m.decode_calls[2][2] > 0
    with pytest.raises(ValueError):
        SegmentationEngine(BallModel(), "v", click_mode="some")


def test_exclude_click_removes_region(volume):
    eng = SegmentationEngine(BallModel(radius=8, exclude_radius=5), "v1")
    r1 = eng.segment("i", volume, "a", [[40, 40, 20]], [])
    r2 = eng.segment("i", volume, "a", [[40, 40, 20]], [[46, 40, 20]])
    assert r1.mask[46, 40, 20] == 1 and r2.mask[46, 40, 20] == 0 and r2.mask[40, 40, 20] == 1
    assert r2.mask.sum() < r1.mask.sum()


def test_reset_is_per_label(volume):
    m = BallModel()
    eng = SegmentationEngine(m, "v1")
    eng.segment("i", volume, "a", [[40, 40, 20]], [])
    eng.segment("i", volume, "b", [[20, 60, 10]], [])
    eng.reset("i", "b")  # b forgets its click; a keeps its own
    n = len(m.decode_calls)
    eng.segment("i", volume, "a", [[40, 40, 20]], [])
    assert len(m.decode_calls) == n  # nothing new for a
    eng.segment("i", volume, "b", [[20, 60, 10]], [])
    assert len(m.decode_calls) == n + 1 and m.decode_calls[-1][2] == 0.0  # b starts fresh
    eng.reset("i")  # every label of the image
    eng.segment("i", volume, "a", [[40, 40, 20]], [])
    assert len(m.decode_calls) == n + 2 and m.decode_calls[-1][2] == 0.0
    eng.reset("unknown", "x")  # nothing to forget: no error


def test_reset_flag_restarts(volume):
    m = BallModel()
    eng = SegmentationEngine(m, "v1")
    eng.segment("i", volume, "a", [[40, 40, 20]], [])
    eng.segment("i", volume, "a", [[40, 40, 20]], [], reset=True)
    assert len(m.decode_calls) == 2 and m.decode_calls[1][2] == 0.0


def test_model_hot_swap(volume):
    m1, m2, m3 = BallModel(), BallModel(), BallModel()
    eng = SegmentationEngine(m1, "v1")
    eng.segment("i", volume, "a", [[40, 40, 20]], [])
    eng.set_model(m2, "v2", encoder_changed=False)  # decoder-only update keeps embeddings
    r = eng.segment("i", volume, "a", [[40, 40, 20], [42, 40, 20]], [])
    assert m2.encode_calls == 0 and r.cache_hit and r.model_version == "v2"
    assert len(m2.decode_calls) == 2  # the label restarted from its clicks on the new model
    eng.set_model(m3, "v3", encoder_changed=True)
    r = eng.segment("i", volume, "a", [[40, 40, 20], [42, 40, 20]], [])
    assert m3.encode_calls == 1 and not r.cache_hit and r.model_version == "v3"


def test_file_rewrite_invalidates_cache(tmp_path):
    affine = ras_affine((1.0, 1.0, 2.0))
    path = write_nifti(tmp_path / "v.nii.gz", smooth_volume((60, 60, 30)), affine)
    m = BallModel()
    eng = SegmentationEngine(m, "v1")
    eng.segment("i", path, "a", [[30, 30, 15]], [])
    write_nifti(path, smooth_volume((60, 60, 30), seed=5) + 7, affine)
    import os

    os.utime(path, ns=(1, 1))  # make sure the key changes even within one mtime tick
    eng.segment("i", path, "a", [[30, 30, 15]], [])
    assert m.encode_calls == 2


def test_cache_memory_bound(volume):
    # 0.3 MB bound: the 90x80x40 int16 volume (576 KB) does not fit; embeddings (16 KB) do.
    m = BallModel()
    eng = SegmentationEngine(m, "v1", cache_bytes=300_000)
    for k, c in enumerate(([10, 10, 5], [80, 70, 35], [45, 40, 20], [10, 70, 30])):
        eng.segment("i", volume, f"l{k}", [c], [])
        assert eng.cache.bytes_used <= 300_000
    assert m.encode_calls == 4
    cache = LRUCache(100)
    import torch

    cache.put("a", torch.zeros(10))  # 40 B
    cache.put("b", torch.zeros(10))
    cache.get("a")  # a is now most recent
    cache.put("c", torch.zeros(10))  # evicts b
    assert "a" in cache and "c" in cache and "b" not in cache and cache.bytes_used == 80
    assert not cache.put("big", torch.zeros(100)) and "big" not in cache
    # a two-stage refinement's images: a dict, sized as the sum of its arrays (16 + 24 B); evicts "a"
    assert cache.put("imgs", {2: np.zeros(2), 1: np.zeros(3)})
    assert cache.bytes_used == 80 and "a" not in cache and "c" in cache


def test_big_structure_grows_to_neighbour_crops(tmp_path):
    # 1.5 mm grid, 300 x 140 x 140 voxels; a ball of radius 90 crop voxels overflows one crop.
    affine = ras_affine((1.5, 1.5, 1.5))
    path = write_nifti(tmp_path / "big.nii.gz", smooth_volume((300, 140, 140)), affine)
    m = BallModel(radius=90.0)
    eng = SegmentationEngine(m, "v1", max_crops=4)
    r = eng.segment("i", path, "a", [[150, 70, 70]], [])
    assert 1 < r.num_crops <= 4
    assert m.encode_calls == r.num_crops
    # The mask now reaches well beyond the first crop (x in [86, 214)).
    xs = np.nonzero(r.mask.any(axis=(1, 2)))[0]
    assert xs.min() < 86 - 20 or xs.max() > 214 + 20
    # Grown crops get an include seed (plus, in "all" mode, the user click they contain) and
    # start from the source crop's shifted logits, not from zeros.
    grown = m.decode_calls[1:]
    assert all(set(c[1]) == {1} for c in grown) and all(c[2] > 0 for c in grown)
    one = SegmentationEngine(BallModel(radius=90.0), "v1", max_crops=1)
    assert one.segment("i", path, "a", [[150, 70, 70]], []).num_crops == 1


def test_click_outside_current_crop_adds_a_crop(tmp_path):
    affine = ras_affine((1.5, 1.5, 1.5))
    path = write_nifti(tmp_path / "long.nii.gz", smooth_volume((400, 60, 60)), affine)
    m = BallModel(radius=8.0)
    eng = SegmentationEngine(m, "v1")
    r1 = eng.segment("i", path, "a", [[60, 30, 30]], [])
    assert r1.num_crops == 1
    r2 = eng.segment("i", path, "a", [[60, 30, 30], [330, 30, 30]], [])
    assert r2.num_crops == 2 and r2.mask[330, 30, 30] == 1 and r2.mask[60, 30, 30] == 1
    assert m.encode_calls == 2
    # An exclude outside every crop changes nothing and encodes nothing.
    r3 = eng.segment("i", path, "a", [[60, 30, 30], [330, 30, 30]], [[200, 30, 30]])
    assert m.encode_calls == 2 and np.array_equal(r3.mask, r2.mask)


def test_unchanged_crops_are_not_refined_again_and_the_mask_is_the_same(tmp_path, monkeypatch):
    """_crop_mask memoises each crop's pasted mask: a click that decodes one crop of a multi-crop label
    refines only that crop, and the answer equals a fresh engine's for the same clicks."""
    import lib.session.engine as engine_mod
    from lib.session.refine import GeodesicRefine

    path = write_nifti(tmp_path / "long.nii.gz", smooth_volume((400, 60, 60)), ras_affine((1.5, 1.5, 1.5)))
    calls = []
    real = engine_mod.refine_logits
    monkeypatch.setattr(engine_mod, "refine_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    refine = GeodesicRefine(band=2.0, gamma=20.0, factor=2)
    eng = SegmentationEngine(BallModel(radius=8.0), "v1", refine=refine)
    eng.segment("i", path, "a", [[60, 30, 30]], [])
    eng.segment("i", path, "a", [[60, 30, 30], [330, 30, 30]], [])  # a second crop
    assert len(calls) == 2  # the first crop's mask was reused
    calls.clear()
    r = eng.segment("i", path, "a", [[60, 30, 30], [330, 30, 30], [335, 30, 30]], [])  # in the second crop only
    assert r.num_crops == 2 and len(calls) == 1
    fresh = SegmentationEngine(BallModel(radius=8.0), "v1", refine=refine)
    expect = fresh.segment("i", path, "a", [[60, 30, 30], [330, 30, 30], [335, 30, 30]], [])
    assert np.array_equal(r.mask, expect.mask) and r.mask[60, 30, 30] == 1 and r.mask[335, 30, 30] == 1
    calls.clear()
    again = eng.segment("i", path, "a", [[60, 30, 30], [330, 30, 30], [335, 30, 30]], [], reset=True)
    assert len(calls) == 2 and np.array_equal(again.mask, expect.mask)  # a reset label starts afresh
