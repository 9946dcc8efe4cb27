"""lib.model.segments: a fine-tuned version answers with its learned residual only for the segments it learnt; the
trainer records them from the labels' label_info and the published checkpoint carries them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.model import load_checkpoint
from lib.model.click_unet_config import resolve_click_unet_config
from lib.model.segments import answers_with_residual, learned_segments, residual_for_segment
from test_flood_region import _prior_only_model
from test_plain_region import _scene


def _fine_tuned(names=("Lung lobe",)):
    """A reduced default with a non-zero residual (as after fine-tuning) that learnt `names`."""
    model = _prior_only_model(margin=7)
    with torch.no_grad():
        model.mask_decoder.head.bias.fill_(0.5)
    model.config["learned_segments"] = list(names) if names else None
    return model


def test_names_match_with_case_and_spacing_folded():
    model = _fine_tuned(("Lung  lobe", "liver"))
    assert learned_segments(model) == {"lung lobe", "liver"}
    assert answers_with_residual(model, " lung Lobe") and answers_with_residual(model, "LIVER")
    assert not answers_with_residual(model, "lung")
    assert answers_with_residual(_fine_tuned(None), "anything")  # no names: every segment, as before
    assert answers_with_residual(object(), "anything")  # a model without the switch (SAM-Med3D)


def test_the_switch_holds_for_the_call_only():
    model = _fine_tuned()
    assert not model.serves_prior_only()
    with residual_for_segment(model, "lung lobe") as on:
        assert on and model.residual_on
    with residual_for_segment(model, "tumour") as on:
        assert not on and model.serves_prior_only()
    assert model.residual_on
    with pytest.raises(RuntimeError):
        with residual_for_segment(model, "tumour"):
            raise RuntimeError("a failed request")
    assert model.residual_on


def test_config_checks_the_names():
    assert resolve_click_unet_config({"learned_segments": ["lobe"]})["learned_segments"] == ["lobe"]
    for bad in ([], [""], "lobe", [3]):
        with pytest.raises(ValueError, match="learned_segments"):
            resolve_click_unet_config({"learned_segments": bad})


def test_another_segment_is_answered_as_the_model_it_was_fine_tuned_from(tmp_path):
    """Through the engine (with the default's plain region): a segment the version did not learn gets exactly the
    base model's mask; the learnt one gets the residual's, which differs."""
    from lib.session import SegmentationEngine
    from lib.session.plain_region import PlainRegion

    path = _scene(tmp_path)
    tuned, base = _fine_tuned(), _prior_only_model(margin=7)
    engine = SegmentationEngine(tuned, "v0001", click_mode="all", max_crops=2, region=PlainRegion())
    reference = SegmentationEngine(base, "base", click_mode="all", max_crops=2, region=PlainRegion())
    for clicks in ([[48, 48, 40]], [[48, 48, 40], [46, 50, 38]]):
        other = engine.segment("s", path, "tumour", clicks, [], modality="CT").mask
        np.testing.assert_array_equal(other, reference.segment("s", path, "tumour", clicks, [], modality="CT").mask)
    learnt = engine.segment("s", path, "lung lobe", [[48, 48, 40]], [], modality="CT").mask
    assert not np.array_equal(learnt, reference.segment("s", path, "x", [[48, 48, 40]], [], modality="CT").mask)
    assert tuned.residual_on


def test_segment_names_come_from_every_labels_label_info(tmp_path):
    import SimpleITK as sitk

    from lib.datastore import SafeLocalDatastore
    from lib.trainers.data import segment_names

    studies = tmp_path / "studies"
    studies.mkdir()
    for case in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8)), str(studies / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(tmp_path / f"{case}.nii.gz"))
    ds = SafeLocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    ds.save_label("a", str(tmp_path / "a.nii.gz"), "final", {"label_info": [{"name": "lobe", "idx": 1}]})
    ds.save_label("b", str(tmp_path / "b.nii.gz"), "final",
                  {"label_info": [{"name": "lobe", "idx": 1}, {"name": " vessel ", "idx": 2}]})
    assert segment_names(ds) == ["lobe", "vessel"]
    ds.save_label("b", str(tmp_path / "b.nii.gz"), "final", {})  # a label saved without names (OHIF, a script)
    assert segment_names(ds) is None

    class Unreadable:  # label ids that are not image ids (a DICOMweb datastore's SEG series)
        def get_labeled_images(self):
            return ["image"]

        def get_label_info(self, label_id, tag):
            raise KeyError(label_id)

    assert segment_names(Unreadable()) is None


def test_a_published_version_carries_the_names_and_the_trained_model_keeps_its_own(tmp_path):
    from lib.trainers.publish import publish_version
    from lib.versions import VersionStore

    model = _fine_tuned(None)
    store = VersionStore(str(tmp_path / "versions"))
    name = publish_version(store, model, {"dice": 0.5}, None, None, segments=["lobe"])
    loaded, _ = load_checkpoint(store.checkpoint_path(name))
    assert loaded.config["learned_segments"] == ["lobe"] and not answers_with_residual(loaded, "liver")
    assert model.config["learned_segments"] is None
    unnamed, _ = load_checkpoint(store.checkpoint_path(publish_version(store, model, {}, None, name)))
    assert unnamed.config["learned_segments"] is None
