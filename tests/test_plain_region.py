"""lib.session.plain_region: where the prior answers with its plain box competition, the stored-grid region."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.session.plain_region import PlainRegion, answered_plainly, resolve_region


def test_resolve_region_modes():
    assert resolve_region("auto", None) is None and resolve_region(None, {"plain_region": None}) is None
    assert isinstance(resolve_region("auto", {"plain_region": "geodesic"}), PlainRegion)
    assert isinstance(resolve_region("on", {}), PlainRegion)
    assert resolve_region("off", {"plain_region": "geodesic"}) is None
    with pytest.raises(ValueError, match="plain_region must be one of"):
        resolve_region("yes", {})
    with pytest.raises(ValueError, match="geodesic prior"):
        resolve_region("on", {}, has_prior=False)  # the released SAM-Med3D: no decode is a box competition
    from lib.model import CLICK_UNET_CONFIG, build_model

    with pytest.raises(ValueError, match="plain_region"):
        build_model({**CLICK_UNET_CONFIG, "plain_region": "random_walker"})


def test_a_decode_is_plain_only_when_nothing_beyond_the_box_answered():
    assert answered_plainly(True, False, False, False)
    assert not answered_plainly(False, False, False, False)  # a learned residual (a fine-tuned default)
    for flags in ((True, False, False), (False, True, False), (False, False, True)):
        assert not answered_plainly(True, *flags)


def _scene(tmp_path):
    """A CT: a faint 1.4 ml lesion in a large homogeneous tissue (the prior's box competition answers a click
    there), and a large walled block of air-like density (a click there floods)."""
    from test_session_fakes import ras_affine, write_nifti

    rng = np.random.default_rng(0)
    img = (400.0 + rng.normal(0, 2.0, (96, 96, 96))).astype(np.float32)
    img[:, :, 84:] = 2000.0
    z, y, x = np.ogrid[:96, :96, :96]
    img[(z - 48) ** 2 + (y - 48) ** 2 + (x - 40) ** 2 <= 6 ** 2] += 10.0
    img[10:40, 10:40, 50:80] = -800.0
    return write_nifti(tmp_path / "scene.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))


def test_the_region_is_the_classical_geodesic_row_on_the_stored_grid(tmp_path):
    from lib.evaluation.classical import ClassicalSegmenter
    from lib.session.volume import load_volume

    path = _scene(tmp_path)
    fg, bg = [[48, 48, 40], [50, 47, 42]], [[48, 30, 40]]
    got = PlainRegion()(load_volume(path), True, fg, bg)
    expected = ClassicalSegmenter("geodesic").segment(path, fg, bg)
    assert got.dtype == np.uint8 and got.sum() > 100
    np.testing.assert_array_equal(got.astype(bool), expected)


def test_the_engine_answers_plain_clicks_with_the_region_and_the_rest_with_the_model(tmp_path):
    from lib.session import SegmentationEngine
    from lib.session.volume import load_volume
    from test_flood_region import _prior_only_model

    path = _scene(tmp_path)
    volume = load_volume(path)
    model = _prior_only_model(margin=7)
    served = SegmentationEngine(model, "v", click_mode="all", max_crops=2, region=PlainRegion())
    without = SegmentationEngine(model, "v", click_mode="all", max_crops=2)
    lesion = [[48, 48, 40]]
    got = served.segment("s", path, "lesion", lesion, [], modality="CT").mask
    np.testing.assert_array_equal(got, PlainRegion()(volume, True, lesion, []))
    assert not np.array_equal(got, without.segment("s", path, "lesion", lesion, [], modality="CT").mask)
    # the same clicks again decode nothing: the label keeps its answer
    np.testing.assert_array_equal(served.segment("s", path, "lesion", lesion, [], modality="CT").mask, got)
    # a second click the prior also answers plainly: the region of both clicks
    two = lesion + [[46, 50, 38]]
    np.testing.assert_array_equal(served.segment("s", path, "lesion", two, [], modality="CT").mask,
                                  PlainRegion()(volume, True, two, []))
    # a click the prior floods (a walled tissue): the model's answer, as without the region
    air = [[25, 25, 65]]
    flooded = served.segment("s", path, "air", air, [], modality="CT", prior_flood="on").mask
    assert model.prior.last_flooded == [True]
    np.testing.assert_array_equal(flooded, without.segment("s", path, "air", air, [], modality="CT",
                                                           prior_flood="on").mask)
    # an ROI clips the region's answer too
    roi_mask = served.segment("s", path, "roi", lesion, [], modality="CT", roi=(0, 95, 0, 95, 0, 39)).mask
    assert roi_mask[:, :, 40:].sum() == 0 and roi_mask.sum() > 0


def test_a_model_with_a_learned_residual_answers_itself(tmp_path):
    """A fine-tuned default (non-zero output layer) is not its prior alone: what it learnt is served."""
    from lib.session import SegmentationEngine
    from test_flood_region import _prior_only_model

    path = _scene(tmp_path)
    model = _prior_only_model(margin=7)
    with torch.no_grad():
        model.mask_decoder.head.bias.fill_(0.5)
    served = SegmentationEngine(model, "v", click_mode="all", max_crops=2, region=PlainRegion())
    without = SegmentationEngine(model, "v", click_mode="all", max_crops=2)
    np.testing.assert_array_equal(served.segment("s", path, "l", [[48, 48, 40]], [], modality="CT").mask,
                                  without.segment("s", path, "l", [[48, 48, 40]], [], modality="CT").mask)


def test_a_failed_request_leaves_the_labels_choice_as_it_was(tmp_path, monkeypatch):
    from lib.session import SegmentationEngine
    from test_flood_region import _prior_only_model

    path = _scene(tmp_path)
    served = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                region=PlainRegion())
    first = served.segment("s", path, "l", [[48, 48, 40]], [], modality="CT").mask
    state = served._states[("s", "l")]
    assert state.plain
    monkeypatch.setattr(PlainRegion, "answer", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        served.segment("s", path, "l", [[48, 48, 40], [46, 50, 38]], [], modality="CT")
    assert state.plain and len(state.fg) == 1
    monkeypatch.undo()
    np.testing.assert_array_equal(served.segment("s", path, "l", [[48, 48, 40]], [], modality="CT").mask, first)


def test_an_undo_answers_as_the_click_it_goes_back_to(tmp_path):
    """An undo restarts the label and replays its clicks; the last replayed click decides, as it did."""
    from lib.session import SegmentationEngine
    from lib.session.volume import load_volume
    from test_flood_region import _prior_only_model

    path = _scene(tmp_path)
    served = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                region=PlainRegion())
    one, two = [[48, 48, 40]], [[48, 48, 40], [46, 50, 38]]
    first = served.segment("s", path, "l", one, [], modality="CT").mask
    served.segment("s", path, "l", two, [], modality="CT")
    undone = served.segment("s", path, "l", one, [], modality="CT").mask
    np.testing.assert_array_equal(undone, first)
    np.testing.assert_array_equal(undone, PlainRegion()(load_volume(path), True, one, []))


def test_nothing_bounds_the_region_in_a_volume_smaller_than_its_box(tmp_path):
    """No exclude click and a box (clicks + 40 mm) that fills the volume on every side: the classical rule would
    make the whole volume foreground, so the region gives way to the model's answer."""
    from lib.session import SegmentationEngine
    from lib.session.volume import load_volume
    from test_flood_region import _prior_only_model
    from test_session_fakes import ras_affine, write_nifti

    img = (100 + np.random.default_rng(0).normal(0, 5, (40, 40, 40))).astype(np.float32)
    path = write_nifti(tmp_path / "small.nii.gz", img, ras_affine((1.0, 1.0, 1.0), np.eye(3)))
    assert PlainRegion()(load_volume(path), False, [[0, 0, 0]], []) is None
    assert PlainRegion()(load_volume(path), False, [[0, 0, 0]], [[10, 10, 10]]) is not None  # an exclude bounds it
    model = _prior_only_model(margin=7)
    served = SegmentationEngine(model, "v", click_mode="all", max_crops=1, region=PlainRegion())
    without = SegmentationEngine(model, "v", click_mode="all", max_crops=1)
    got = served.segment("s", path, "l", [[0, 0, 0]], []).mask
    np.testing.assert_array_equal(got, without.segment("s", path, "l", [[0, 0, 0]], []).mask)
    assert got.sum() < got.size


def _ball_scene(tmp_path, radius=10):
    """An MR-like volume at 1.5 mm: a bright ball (radius in voxels) in a noisy darker tissue."""
    from test_session_fakes import ras_affine, write_nifti

    rng = np.random.default_rng(1)
    img = (100.0 + rng.normal(0, 3.0, (96, 96, 96))).astype(np.float32)
    z, y, x = np.ogrid[:96, :96, :96]
    img[(z - 48) ** 2 + (y - 48) ** 2 + (x - 48) ** 2 <= radius ** 2] = 160.0
    return write_nifti(tmp_path / "ball.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))


def test_the_first_click_region_is_the_one_whose_region_stands_out(tmp_path):
    """A 30 mm ball clicked at its centre: a 10 mm box cuts it (its region touches the ball's own tissue all round),
    a 40 mm box holds it whole (the region ends at the ball's edge): the 40 mm margin is chosen, and only for the
    first click; later clicks use the tuned margin."""
    from dataclasses import replace

    from lib.session.classical_region import TUNED, segment_array
    from lib.session.plain_region import first_click_region
    from lib.session.volume import load_volume

    volume = load_volume(_ball_scene(tmp_path, radius=10))
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(volume.image).transpose(2, 1, 0)
    params, spacing, click = TUNED["geodesic"], (1.5, 1.5, 1.5), [[48, 48, 48]]
    assert first_click_region(image, False, spacing, click, params, (10.0, 40.0))[0] == 40.0
    assert first_click_region(image, False, spacing, click, params, (40.0, 10.0))[0] == 40.0
    region = PlainRegion(margins=(10.0, 40.0))
    got = region(volume, False, click, [])
    ball = segment_array("geodesic", image, False, spacing, click, [], replace(params, margin_mm=40.0))
    np.testing.assert_array_equal(got.astype(bool), ball)
    assert abs(int(ball.sum()) - 4189) < 600  # the ball's 4,189 voxels
    narrow = PlainRegion(replace(params, margin_mm=10.0), margins=(10.0, 40.0))
    np.testing.assert_array_equal(narrow(volume, False, click, []), got)  # the first click: chosen
    two = click + [[50, 48, 48]]
    np.testing.assert_array_equal(narrow(volume, False, two, []), PlainRegion(replace(params, margin_mm=10.0))(
        volume, False, two, []))  # later clicks: the tuned margin


def test_resolve_region_reads_the_configs_margins():
    assert resolve_region("auto", {"plain_region": "geodesic"}).margins is None
    assert resolve_region("auto", {"plain_region": "geodesic", "plain_region_margins": [20, 40]}).margins == (20.0, 40.0)
    assert resolve_region("auto", {"plain_region": "geodesic"}).params.margin_mm == 40.0  # the classical row's
    assert resolve_region("auto", {"plain_region": "geodesic", "plain_region_margin": 25}).params.margin_mm == 25.0
    assert not resolve_region("auto", {"plain_region": "geodesic"}).merge
    assert resolve_region("on", {"plain_region_merge": True}).merge
    assert not resolve_region("on", {"plain_region_merge": True}, merge="off").merge
    assert resolve_region("auto", {"plain_region": "geodesic"}, merge="on").merge
    with pytest.raises(ValueError, match="plain_region_merge must be one of"):
        resolve_region("on", {}, merge="sometimes")
    from lib.model import CLICK_UNET_CONFIG, build_model

    for bad in ([], [0], [20, "40"], 40, [True]):
        with pytest.raises(ValueError, match="plain_region_margins"):
            build_model({**CLICK_UNET_CONFIG, "plain_region_margins": bad})
    with pytest.raises(ValueError, match="plain_region_merge"):
        build_model({**CLICK_UNET_CONFIG, "plain_region_merge": "yes"})
    for bad in (0, -5, "25", True, 600):
        with pytest.raises(ValueError, match="plain_region_margin must"):
            build_model({**CLICK_UNET_CONFIG, "plain_region_margin": bad})


def test_with_a_click_update_the_region_is_merged_into_what_the_label_showed(tmp_path):
    """An include click only adds to the shown mask, an exclude click only removes, where the region answers as
    where the model does (lib.session.local_update); an undo gets back what those clicks showed. The region's
    first click takes a 40 mm box (chosen), the second its 6 mm one: alone it would take back most of the lesion."""
    from dataclasses import replace

    from lib.session import SegmentationEngine
    from lib.session.classical_region import TUNED
    from lib.session.local_update import LocalUpdate
    from lib.session.volume import load_volume
    from test_flood_region import _prior_only_model

    path = _scene(tmp_path)
    volume = load_volume(path)
    region = PlainRegion(replace(TUNED["geodesic"], margin_mm=6.0), margins=(6.0, 40.0), merge=True)
    served = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                region=region, local=LocalUpdate("monotone"))
    replaced = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                  region=PlainRegion(region.params, region.margins), local=LocalUpdate("monotone"))
    one = [[48, 48, 40]]
    first = served.segment("s", path, "l", one, [], modality="CT").mask
    np.testing.assert_array_equal(first, region(volume, True, one, []))  # a first click: the region whole
    two = one + [[46, 50, 38]]
    second = served.segment("s", path, "l", two, [], modality="CT").mask
    proposed = region(volume, True, two, []).astype(bool)
    assert (first.astype(bool) & ~proposed).sum() > 500  # what the region alone would take back
    np.testing.assert_array_equal(second.astype(bool), first.astype(bool) | proposed)
    replaced.segment("s", path, "l", one, [], modality="CT")  # without merge (default-v9): the region as it is
    np.testing.assert_array_equal(replaced.segment("s", path, "l", two, [], modality="CT").mask, proposed)
    exclude = [[48, 53, 40]]
    assert second[tuple(exclude[0])]
    third = served.segment("s", path, "l", two, exclude, modality="CT").mask
    np.testing.assert_array_equal(third.astype(bool), second.astype(bool) & region(volume, True, two, exclude)
                                  .astype(bool))
    assert not third[tuple(exclude[0])] and third.sum() > 0
    np.testing.assert_array_equal(served.segment("s", path, "l", two, [], modality="CT").mask, second)  # an undo
