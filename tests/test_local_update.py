"""LocalUpdate (lib/session/local_update.py): a later click takes only the change its sign asks for
("monotone"), or only the piece of it the click lies in ("piece"); the rest of the mask stays as shown."""
import numpy as np
import pytest

from lib.session.local_update import LocalUpdate, ShownMask, resolve_local


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


SHAPE = (40, 40, 40)


def test_an_include_click_only_adds_and_in_piece_mode_only_its_piece():
    shown = _box(SHAPE, (5, 5, 5), (15, 15, 15))
    near = _box(SHAPE, (15, 5, 5), (20, 15, 15))   # the model's growth where the click is
    far = _box(SHAPE, (30, 30, 30), (35, 35, 35))  # and a blob far away
    lost = _box(SHAPE, (5, 5, 5), (8, 15, 15))     # and it dropped part of the accepted mask
    proposed = (shown | near | far) & ~lost
    click = [((17, 10, 10), 1)]
    np.testing.assert_array_equal(LocalUpdate("monotone")(shown, proposed, click), shown | near | far)
    np.testing.assert_array_equal(LocalUpdate("piece")(shown, proposed, click), shown | near)


def test_an_exclude_click_only_removes_and_in_piece_mode_only_its_piece():
    second = _box(SHAPE, (25, 25, 25), (30, 30, 30))
    shown = _box(SHAPE, (5, 5, 5), (15, 15, 15)) | second
    cut = _box(SHAPE, (5, 5, 5), (8, 15, 15))
    proposed = shown & ~cut & ~second                      # it also dropped the second object
    proposed |= _box(SHAPE, (0, 30, 0), (3, 35, 5))        # and grew a blob elsewhere
    click = [((6, 10, 10), 0)]
    np.testing.assert_array_equal(LocalUpdate("monotone")(shown, proposed, click), shown & ~cut & ~second)
    np.testing.assert_array_equal(LocalUpdate("piece")(shown, proposed, click), shown & ~cut)


@pytest.mark.parametrize("mode", ["monotone", "piece"])
def test_with_a_focus_a_click_by_the_edge_changes_the_mask_near_it_and_one_far_from_it_far(mode):
    """focus (factor, minimum mm): the change is kept within factor x the click's distance to the nearest voxel
    that already has its label (at least the minimum): a boundary click cannot flood the mask's surroundings."""
    shown = _box(SHAPE, (5, 5, 5), (15, 15, 15))
    leak = _box(SHAPE, (15, 0, 0), (40, 40, 40))  # the model's proposal after an include click by the edge
    focused = LocalUpdate(mode, focus=(3.0, 3.0))
    by_edge = focused(shown, shown | leak, [((15, 10, 10), 1)])  # 1 voxel out: within max(3, 3 x 1) = 3 voxels
    added = by_edge & ~shown
    assert added.any() and added.sum() < leak.sum() / 50
    assert np.sqrt(((np.argwhere(added) - np.array([15, 10, 10])) ** 2).sum(1)).max() <= 3.0
    np.testing.assert_array_equal(LocalUpdate(mode)(shown, shown | leak, [((15, 10, 10), 1)]), shown | leak)
    # anisotropic voxels: distances and reach in mm (2 mm along the first axis: the click is 2 mm from the mask, so
    # the change reaches 6 mm: 3 voxels along the first axis, 6 along the others)
    added_mm = focused(shown, shown | leak, [((15, 10, 10), 1)], spacing=(2.0, 1.0, 1.0)) & ~shown
    assert np.abs(np.argwhere(added_mm)[:, 0] - 15).max() == 3 and np.abs(np.argwhere(added_mm)[:, 1] - 10).max() == 6
    # a click in the middle of a large missed part (15 voxels from the mask) takes that part whole
    far = _box(SHAPE, (5, 5, 25), (15, 15, 40)) | _box(SHAPE, (5, 5, 15), (15, 15, 25))
    np.testing.assert_array_equal(focused(shown, shown | far, [((10, 10, 30), 1)]), shown | far)
    # an exclude click by the edge removes only near it
    proposed = shown & ~_box(SHAPE, (5, 5, 5), (15, 15, 6)) & ~_box(SHAPE, (5, 5, 5), (15, 6, 15))
    kept = focused(shown, proposed, [((10, 10, 5), 0)])
    removed = shown & ~kept
    assert removed[10, 10, 5] and not removed[5:15, 5, 14].any() and removed.sum() < (shown & ~proposed).sum()
    with pytest.raises(ValueError, match="local_update_focus"):
        LocalUpdate(mode, focus=(3.0,))
    assert resolve_local("auto", {"local_update": mode, "local_update_focus": [2, 4]}).focus == (2.0, 4.0, 0.0)


@pytest.mark.parametrize("mode", ["monotone", "piece"])
def test_a_click_the_model_did_not_follow_takes_the_proposal_whole(mode):
    """Otherwise nothing would change and the user would click the same voxel for ever."""
    shown = _box(SHAPE, (5, 5, 5), (15, 15, 15))
    proposed = _box(SHAPE, (5, 5, 5), (12, 15, 15))  # an exclude at (14, 10, 10) is still foreground
    proposed[14, 10, 10] = True
    np.testing.assert_array_equal(LocalUpdate(mode)(shown, proposed, [((14, 10, 10), 0)]), proposed)
    np.testing.assert_array_equal(LocalUpdate(mode)(shown, proposed, [((45, 10, 10), 1)]), proposed)  # outside
    # an exclude click beyond both masks asks for nothing: the shown mask stays
    np.testing.assert_array_equal(LocalUpdate(mode)(shown, proposed, [((45, 10, 10), 0)]), shown)


def test_diagonal_voxels_are_one_piece_and_clicks_round_to_their_voxel():
    shown = np.zeros(SHAPE, dtype=bool)
    proposed = shown.copy()
    proposed[10, 10, 10] = proposed[11, 11, 11] = proposed[20, 20, 20] = True
    out = LocalUpdate("piece")(shown, proposed, [((9.6, 10.4, 10.2), 1)])
    assert out.sum() == 2 and out[11, 11, 11] and not out[20, 20, 20]


def test_the_volume_update_works_inside_the_masks_box_and_keeps_the_shown_mask_there():
    shape = (60, 50, 40)
    shown = ShownMask(_box(shape, (10, 10, 10), (20, 20, 20)).astype(np.uint8))
    proposed = np.zeros(shape, dtype=np.uint8)
    proposed[18:30, 10:20, 10:20] = 1  # pasted crop box (15:35, 5:25, 5:25): grew at one end, lost the other
    out, kept = LocalUpdate("monotone").update(shown, proposed, [(slice(15, 35), slice(5, 25), slice(5, 25))],
                                               [((25, 15, 15), 1)])
    expect = _box(shape, (10, 10, 10), (30, 20, 20))
    np.testing.assert_array_equal(out.astype(bool), expect)
    assert kept.box == (slice(10, 30), slice(10, 20), slice(10, 20))
    np.testing.assert_array_equal(kept.full(), expect)
    np.testing.assert_array_equal(kept.full((slice(25, 35), slice(0, 50), slice(0, 40))), expect[25:35])


def test_shown_mask_keeps_its_bounding_box_only():
    m = _box(SHAPE, (3, 4, 5), (6, 9, 12))
    kept = ShownMask(m)
    assert kept.piece.shape == (3, 5, 7) and kept.piece.all() and kept.nbytes == 14  # 105 voxels, 8 a byte
    np.testing.assert_array_equal(kept.full(), m)
    empty = ShownMask(np.zeros(SHAPE, dtype=np.uint8))
    assert empty.box is None and not empty.full().any()


def test_resolve_local_follows_the_config_unless_told():
    assert resolve_local("auto", {"local_update": "piece"}).mode == "piece"
    assert resolve_local(None, {}) is None and resolve_local("auto", None) is None
    assert resolve_local("auto", {"local_update": None}) is None
    assert resolve_local("monotone", None).mode == "monotone"
    assert resolve_local("off", {"local_update": "monotone"}) is None
    with pytest.raises(ValueError, match="local_update must be one of"):
        resolve_local("sometimes", None)
    with pytest.raises(ValueError, match="local_update must be one of"):
        LocalUpdate("on")


@pytest.mark.parametrize("mode", ["monotone", "piece"])
def test_the_engine_keeps_an_accepted_object_when_a_click_moves_the_models_answer(tmp_path, mode):
    """BallModel answers a ball around the LAST include click only: a second include click elsewhere moves its
    answer. With the update the first ball stays (an include click only adds); an exclude click then removes
    what the model removed ("monotone": the first ball too, which the model no longer proposes) or only the
    piece it lies in ("piece"); removing a click restarts the label from the model's answer."""
    from lib.session import SegmentationEngine
    from test_session_fakes import BallModel, ras_affine, smooth_volume, write_nifti

    path = write_nifti(tmp_path / "v.nii.gz", smooth_volume((64, 64, 64)), ras_affine((1.5, 1.5, 1.5)))
    plain = SegmentationEngine(BallModel(radius=6.0), "v", click_mode="all", max_crops=1)
    local = SegmentationEngine(BallModel(radius=6.0), "v", click_mode="all", max_crops=1, local=LocalUpdate(mode))
    first, second = [20, 32, 32], [44, 32, 32]
    masks = {}
    for name, eng in (("plain", plain), ("local", local)):
        a = eng.segment("i", path, "l", [first], []).mask.astype(bool)
        b = eng.segment("i", path, "l", [first, second], []).mask.astype(bool)
        c = eng.segment("i", path, "l", [first, second], [[44, 32, 36]]).mask.astype(bool)
        d = eng.segment("i", path, "l", [second], [[44, 32, 36]]).mask.astype(bool)  # a click removed
        masks[name] = (a, b, c, d)
    a, b, c, d = masks["local"]
    np.testing.assert_array_equal(a, masks["plain"][0])  # a first click: the model's answer
    assert b[tuple(first)] and b[tuple(second)] and not masks["plain"][1][tuple(first)]
    assert b.sum() > 1.8 * a.sum()
    assert not c[44, 32, 36] and c[tuple(second)]
    if mode == "piece":
        assert c[tuple(first)] and (b & ~c).sum() < 0.5 * a.sum()
    else:
        np.testing.assert_array_equal(c, masks["plain"][2])  # everything the model removed
    np.testing.assert_array_equal(d, masks["plain"][3])  # restarted: the model's answer again


def test_a_click_on_a_voxel_that_already_has_its_label_keeps_the_shown_mask_in_piece_mode():
    """An include click inside the mask (a redundant click): "piece" takes nothing, "monotone" only additions."""
    shown = _box(SHAPE, (5, 5, 5), (15, 15, 15))
    grown = _box(SHAPE, (5, 5, 5), (18, 15, 15))
    proposed = grown & ~_box(SHAPE, (5, 5, 5), (7, 15, 15))
    np.testing.assert_array_equal(LocalUpdate("piece")(shown, proposed, [((10, 10, 10), 1)]), shown)
    np.testing.assert_array_equal(LocalUpdate("monotone")(shown, proposed, [((10, 10, 10), 1)]), grown)


def test_an_undo_returns_the_mask_those_clicks_showed(tmp_path):
    """Removing the last click (Slicer's undo) restarts the label; with the click update the mask comes back as
    it was shown for those clicks, not the model's answer to them replayed at once (they differ: BallModel's
    answer to two includes is the last ball only). An edited click gets the model's answer; a reset forgets."""
    from lib.session import SegmentationEngine
    from test_session_fakes import BallModel, ras_affine, smooth_volume, write_nifti

    path = write_nifti(tmp_path / "v.nii.gz", smooth_volume((64, 64, 64)), ras_affine((1.5, 1.5, 1.5)))
    eng = SegmentationEngine(BallModel(radius=6.0), "v", click_mode="all", max_crops=1, local=LocalUpdate())
    plain = SegmentationEngine(BallModel(radius=6.0), "v", click_mode="all", max_crops=1)
    a, b, c = [20, 32, 32], [44, 32, 32], [44, 32, 36]
    seg = lambda e, fg, bg, **k: e.segment("i", path, "l", fg, bg, **k).mask.astype(bool)  # noqa: E731
    one = seg(eng, [a], [])
    two = seg(eng, [a, b], [])
    three = seg(eng, [a, b], [c])
    assert two[tuple(a)] and not three[tuple(c)]
    np.testing.assert_array_equal(seg(eng, [a, b], []), two)  # undo the exclude
    assert not seg(plain, [a, b], [])[tuple(a)]  # the replayed answer would have lost the first ball
    np.testing.assert_array_equal(seg(eng, [a], []), one)  # and the second include
    np.testing.assert_array_equal(seg(eng, [a, b], []), two)  # redo: an increment from `one`, as before
    moved = seg(eng, [a, [44, 30, 32]], [])  # an edited click: the model's answer to the new lists
    np.testing.assert_array_equal(moved, seg(plain, [a, [44, 30, 32]], []))
    np.testing.assert_array_equal(seg(eng, [a], [], reset=True), one)  # a reset: the answer (here the same)
    assert len(eng._states[("i", "l")].shown_for) == 1
