"""FloodRegion (lib/model/flood_region.py): the walled region of the clicked intensity as GeodesicPrior's
answer for a click in a large homogeneous structure, and nothing where the tissue is not walled."""
import numpy as np
import pytest
import torch

from lib.model.flood_region import SIGMA_FLOOR, FloodRegion, click_statistics
from lib.model.geodesic_maps import GeodesicPrior


def _prior_only_model(margin: int):
    """A reduced-size ClickUNet3D that serves its geodesic prior alone (zero output layer), as the default."""
    from lib.model import CLICK_UNET_CONFIG, build_model

    small = {**CLICK_UNET_CONFIG, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8],
             "geodesic_taus": [3.0], "click_mode": "all", "prior_margin_cells": margin}
    model = build_model(small).eval()
    with torch.no_grad():
        model.mask_decoder.head.weight.zero_()
        model.mask_decoder.head.bias.zero_()
    return model


def _walled_box(noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """32^3 cells: a 14 x 18 x 16 block of intensity 2 (a 'lung') inside tissue of intensity 0."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, noise, (32, 32, 32))
    img[8:22, 6:24, 8:24] += 2.0
    return img


def test_click_statistics_are_the_neighbourhoods_median_and_robust_spread_with_a_floor():
    img = np.zeros((8, 8, 8))
    assert click_statistics(img, np.array([[4, 4, 4]])) == (0.0, SIGMA_FLOOR)
    img[:, :, 5:] = 1.0  # a click beside an edge: a third of its neighbourhood is the other tissue, ignored
    assert click_statistics(img, np.array([[4, 4, 4]])) == (0.0, SIGMA_FLOOR)
    noisy = np.random.default_rng(0).normal(0.0, 1.0, (8, 8, 8))  # no one tissue: the spread shows it
    assert 0.5 < click_statistics(noisy, np.array([[4, 4, 4]]))[1] < 2.0
    corner = click_statistics(np.arange(512.0).reshape(8, 8, 8), np.array([[0, 0, 0]]))  # clipped at the border
    assert corner[0] == np.median([0, 1, 8, 9, 64, 65, 72, 73])


def test_a_click_in_a_walled_structure_gives_the_whole_structure():
    img = _walled_box()
    logit = FloodRegion(beta=2.0, tolerance=1.0)(img, np.array([[15, 15, 15]]), np.zeros((0, 3), int), 6.0)
    assert logit is not None and logit.shape == (32, 32, 32) and logit.dtype == np.float32
    inside = np.zeros(img.shape, bool)
    inside[8:22, 6:24, 8:24] = True
    pred = logit > 0
    dice = 2 * (pred & inside).sum() / (pred.sum() + inside.sum())
    assert dice > 0.95
    assert logit[15, 15, 15] == 6.0 and logit[2, 2, 2] == -6.0  # clipped: sure inside, sure outside


def test_an_exclude_click_cuts_the_region_it_lands_in():
    img = _walled_box()
    inc, ex = np.array([[15, 8, 15]]), np.array([[15, 16, 15]])
    cut = FloodRegion(beta=2.0, tolerance=1.0, exclude_mode="compete")(img, inc, ex, 6.0)
    assert cut[15, 8, 15] > 0 and cut[15, 16, 15] < 0 and cut[15, 10, 15] > 0 and cut[15, 22, 15] < 0
    assert FloodRegion(2.0, 1.0, exclude_mode="off")(img, inc, ex, 6.0) is None
    # "level" (the default): besides the competition, nothing farther from the include clicks than the
    # exclude click stays in - a corner of the block nearer the include click than the exclude one goes too
    level = FloodRegion(beta=2.0, tolerance=1.0)(img, inc, ex, 6.0)
    assert cut[21, 8, 23] > 0 > level[21, 8, 23] and level[15, 10, 15] > 0
    assert (level > 0).sum() < (cut > 0).sum()


def test_no_wall_or_no_single_tissue_leaves_the_prior_to_the_box():
    rng = np.random.default_rng(1)
    flood = FloodRegion(beta=2.0, tolerance=1.0)
    flat = rng.normal(0.0, 0.02, (32, 32, 32))  # the clicked tissue fills the crop: no plateau
    assert flood(flat, np.array([[15, 15, 15]]), np.zeros((0, 3), int), 6.0) is None
    mixed = _walled_box()
    mixed[14:17, 14:17, 14:17] = rng.normal(0.0, 1.0, (3, 3, 3))  # the click's surroundings are not one tissue
    assert flood(mixed, np.array([[15, 15, 15]]), np.zeros((0, 3), int), 6.0) is None
    # the statistics are the first include click's: a later click on the edge does not switch the flood off
    edge = flood(_walled_box(), np.array([[15, 15, 15], [8, 15, 15]]), np.zeros((0, 3), int), 6.0)
    assert edge is not None and edge[15, 15, 15] == 6.0


def test_the_prior_takes_the_flood_where_it_decides_and_its_own_box_elsewhere():
    img = torch.from_numpy(_walled_box()).float()[None]
    coords, labels = torch.tensor([[[4 * 15 + 1.5] * 3]]), torch.tensor([[1]])
    box = GeodesicPrior(gamma=20.0, margin=3, clip=6.0)
    with_flood = GeodesicPrior(gamma=20.0, margin=3, clip=6.0, flood=FloodRegion(2.0, 1.0))
    small, large = box(img, coords, labels)[0, 0], with_flood(img, coords, labels)[0, 0]
    assert (small > 0).sum() < 8 ** 3 < (large > 0).sum()  # the box limits the region to about 7^3 cells
    flat = torch.zeros(1, 32, 32, 32)
    assert torch.equal(box(flat, coords, labels), with_flood(flat, coords, labels))  # no wall: unchanged


@pytest.mark.parametrize("bad", [{"prior_flood_beta": -1}, {"prior_flood_tolerance": True},
                                 {"prior_flood_max_sigma": "x"}, {"prior_flood_exclude": "never"}])
def test_flood_config_is_validated(bad):
    from lib.model.click_unet_config import resolve_click_unet_config

    with pytest.raises(ValueError):
        resolve_click_unet_config(bad)


def test_a_request_switches_the_flood_for_its_own_clicks_only(tmp_path):
    """SegmentationEngine.segment(prior_flood=...) (the infer task's per-request option): "on" fills the
    walled block from one click where the box prior gives a small region, the model's own setting is back
    after the call, and "on" for a model without the prior is a SessionError (a 400, not a 500)."""
    from lib.model.flood_region import flood_mode_for_label
    from lib.session import SegmentationEngine, SessionError
    from test_session_fakes import BallModel, ras_affine, write_nifti

    torch.manual_seed(0)
    img = np.zeros((96, 96, 96), np.float32)
    img[20:76, 16:80, 24:72] = 400.0  # a 84 x 96 x 72 mm block, walled, in a 1.5 mm MR-like volume
    img += np.random.default_rng(0).normal(0, 4.0, img.shape).astype(np.float32)
    path = write_nifti(tmp_path / "block.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))
    model = _prior_only_model(margin=3)
    eng = SegmentationEngine(model, "v", click_mode="all", max_crops=1)
    click = [[48, 48, 48]]
    box = eng.segment("b", path, "box", click, []).mask.astype(bool)
    flood = eng.segment("b", path, "lung", click, [], prior_flood="on").mask.astype(bool)
    block = img > 200
    dice = lambda m: 2 * (m & block).sum() / (m.sum() + block.sum())  # noqa: E731
    assert dice(flood) > 0.9 > 0.5 > dice(box)
    assert model.prior.flood is None  # back to the model's own after the call
    assert np.array_equal(eng.segment("b", path, "box2", click, [], prior_flood="off").mask, box.astype(np.uint8))
    with pytest.raises(SessionError, match="geodesic prior"):
        SegmentationEngine(BallModel(), "v").segment("b", path, "x", click, [], prior_flood="on")
    # OHIF sends no options: segments named in --conf prior_flood_labels flood; a request's own choice wins
    assert flood_mode_for_label("Lung", None, ["organ", "lung"]) == "on"
    assert flood_mode_for_label("lesion", "auto", ["organ", "lung"]) is None
    assert flood_mode_for_label("lung", "off", ["lung"]) == "off"


def test_the_simulated_annotator_floods_only_targets_of_the_given_size():
    from lib.evaluation.loop import flood_choice

    gt = np.zeros((10, 10, 10), bool)
    gt[:5] = True  # 500 voxels of 2 x 2 x 2 mm = 4 ml
    assert flood_choice(gt, (2.0, 2.0, 2.0), 4.0) == "on"
    assert flood_choice(gt, (2.0, 2.0, 2.0), 4.1) is None
    assert flood_choice(gt, (2.0, 2.0, 2.0), None) is None


def test_a_prior_only_model_skips_the_encoder_features_for_clicks_with_the_same_masks(tmp_path, monkeypatch):
    """The embedded default decodes from its prior alone (zero output layer), which reads only the cell
    intensities: clicks encode those alone (ClickUNet3D.encode_cells), scoring's volume features still get
    the encoder's; the masks are the same as with the full encoder."""
    from lib.session import SegmentationEngine
    from lib.session.runner import ModelRunner
    from test_session_fakes import ras_affine, smooth_volume, write_nifti

    torch.manual_seed(0)
    path = write_nifti(tmp_path / "v.nii.gz", smooth_volume((90, 80, 60)), ras_affine((1.5, 1.5, 1.5), np.eye(3)))
    model = _prior_only_model(margin=5)
    with torch.no_grad():
        x = torch.randn(1, 1, 128, 128, 128)
        full, cells = model.encode(x), model.encode_cells(x)
    assert torch.equal(full[:, -1], cells[:, -1]) and not cells[:, :-1].any() and full[:, :-1].any()
    clicks = ([[40, 40, 30], [50, 35, 28]], [[20, 60, 30]])
    fast = SegmentationEngine(model, "v", click_mode="all", max_crops=2)
    assert fast.runner.prior_only
    got = fast.segment("v", path, "a", *clicks).mask
    embs = [fast.cache.get(k) for k in list(fast.cache._data) if k[0] == "emb"]
    assert embs and all(not e[:, :-1].any() for e in embs)  # features skipped
    assert fast.volume_embeddings("v", path, max_crops=1)[0].embedding[:, :-1].any()  # scoring gets them
    monkeypatch.setattr(ModelRunner, "prior_only", property(lambda self: False))
    slow = SegmentationEngine(model, "v", click_mode="all", max_crops=2)
    assert np.array_equal(slow.segment("v", path, "a", *clicks).mask, got)


def test_the_train_task_fine_tunes_with_the_flood_the_server_serves(tmp_path, monkeypatch):
    """SAMMed3DTrainTask(prepare=...): the server passes its --conf prior_flood (the hot swap's prepare), so a
    fine-tuned version is trained and validated with the prior users get, not the checkpoint's own."""
    import lib.trainers.task as task_module
    from lib.model import save_checkpoint
    from lib.model.flood_region import air_flood_threshold, switch_flood
    from lib.trainers.task import SAMMed3DTrainTask
    from lib.versions import VersionStore
    from lib.weights import WeightsChoice

    ckpt = save_checkpoint(_prior_only_model(margin=3), str(tmp_path / "default.pt"), version="d")
    served = WeightsChoice(path=ckpt, source="default")
    seen = []

    def fake_fine_tune(model, samples, opts, callbacks=()):
        seen.append(model.prior.flood)
        # the validation's air gate follows the server's switch too (lib.trainers.finetune)
        air.append(air_flood_threshold(getattr(model, "flood_switch", "auto"), {"prior_flood_air_hu": -500}))
        return model, {"best_epoch": 0, "published": [], "train_stats": {}}

    monkeypatch.setattr(task_module, "fine_tune", fake_fine_tune)

    class Store:  # the parts of MONAI Label's Datastore the task reads (no label_info: every segment)
        def datalist(self):
            return [{"image": "a.nii.gz", "label": "a_label.nii.gz"}]

        def get_labeled_images(self):
            return []

    store = VersionStore(str(tmp_path / "versions"))
    air = []
    for prepare in (lambda m: switch_flood(m, "on"), None, lambda m: switch_flood(m, "off"),
                    lambda m: switch_flood(m, "auto")):
        SAMMed3DTrainTask(store, lambda: (served, served), prepare=prepare)({}, Store())
    assert isinstance(seen[0], FloodRegion) and seen[1] is None and seen[2] is None
    assert air == [None, -500.0, None, -500.0]


def test_a_ct_click_in_air_density_tissue_gets_the_flood_and_soft_tissue_does_not(tmp_path):
    """The model config's prior_flood_air_hu (lib.model.flood_region.flood_mode_for_tissue): in a CT, a click
    whose surroundings are below the threshold (a lung) is served with the flood; a click in soft tissue, an
    MR with the same values, a request's own "off" and a server's --conf prior_flood other than auto are not."""
    from lib.model.flood_region import air_flood_threshold, air_threshold_of, flood_mode_for_tissue
    from lib.session import SegmentationEngine
    from test_session_fakes import ras_affine, write_nifti

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = (40.0 + rng.normal(0, 15.0, (96, 96, 96))).astype(np.float32)  # soft tissue
    img[20:76, 16:80, 24:60] = -850.0 + rng.normal(0, 30.0, (56, 64, 36))  # a walled 'lung'
    img[:, :, 84:] = -1000.0  # air outside the body: the file reads as a CT
    path = write_nifti(tmp_path / "chest.nii.gz", img, ras_affine((1.5, 1.5, 1.5), np.eye(3)))
    lung = img < -500
    lung[:, :, 84:] = False
    model = _prior_only_model(margin=3)
    model.config["prior_flood_air_hu"] = -500.0  # the engine reads it from the served model (air_threshold_of)
    assert air_threshold_of(model) == air_flood_threshold("auto", model.config) == -500.0
    eng = SegmentationEngine(model, "v", click_mode="all", max_crops=1)
    plain = SegmentationEngine(_prior_only_model(margin=3), "v", click_mode="all", max_crops=1)
    click = [[48, 48, 42]]
    dice = lambda m: 2 * (m & lung).sum() / (m.sum() + lung.sum())  # noqa: E731
    gated = eng.segment("c", path, "lung", click, []).mask.astype(bool)
    box = plain.segment("c", path, "lung", click, []).mask.astype(bool)
    assert dice(gated) > 0.9 > 0.5 > dice(box)
    assert np.array_equal(eng.segment("c", path, "off", click, [], prior_flood="off").mask, box.astype(np.uint8))
    assert np.array_equal(eng.segment("c", path, "mr", click, [], modality="MR").mask,
                          plain.segment("c", path, "mr", click, [], modality="MR").mask)
    soft = [[48, 48, 70]]
    assert np.array_equal(eng.segment("c", path, "soft", soft, []).mask, plain.segment("c", path, "soft", soft, []).mask)
    assert model.prior.flood is None and air_threshold_of(model) == -500.0  # the request's switch is undone
    # the switch: only while the server's prior_flood is auto, and only for a config that sets a threshold
    assert air_flood_threshold("on", model.config) is None and air_flood_threshold("auto", {}) is None
    assert flood_mode_for_tissue("off", True, lambda: -900.0, -500.0) == "off"
    assert flood_mode_for_tissue(None, True, lambda: -400.0, -500.0) is None
    assert flood_mode_for_tissue(None, False, lambda: 1 / 0, -500.0) is None  # not read when it cannot matter


def test_median_around_reads_stored_index_order(tmp_path):
    """LoadedVolume.median_around takes a stored (i, j, k) index, as clicks are, on a non-cubic volume."""
    from lib.session.volume import load_volume
    from test_session_fakes import ras_affine, write_nifti

    i, j, k = np.meshgrid(np.arange(7), np.arange(9), np.arange(11), indexing="ij")
    path = write_nifti(tmp_path / "v.nii.gz", (100 * i + 10 * j + k).astype(np.float32), ras_affine((1.0, 1.0, 1.0)))
    vol = load_volume(str(path))
    assert vol.shape == (7, 9, 11)
    assert vol.median_around((2, 3, 4), radius=0) == 234.0
    assert vol.median_around((6, 8, 10), radius=1) == 100 * 5.5 + 10 * 7.5 + 9.5  # clipped at the far corner
