"""ClickUNet3D, the convolutional default model: contract shapes, click maps, checkpoint round
trip, serving through the SegmentationEngine, and that the click recipe trains it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.model import (CLICK_UNET_CONFIG, CheckpointError, ClickUNet3D, build_model, load_checkpoint, model_click_mode,
                       save_checkpoint)
from lib.model.click_unet import ClickMaps
from lib.session import SegmentationEngine
from lib.model.training_view import LossGridView
from lib.training.recipe import click_losses, loss_targets
from test_session_fakes import ras_affine, smooth_volume, write_nifti

SMALL = {**CLICK_UNET_CONFIG, "image_size": 64, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8,
         "decoder_widths": [8, 8, 8], "groups": 2}


def _model(**kw):
    torch.manual_seed(0)
    return build_model({**SMALL, **kw})


def test_contract_shapes_and_mask_only_decode():
    m = _model().eval()
    emb = m.encode(torch.randn(2, 1, 64, 64, 64))
    assert emb.shape == (2, 8, 16, 16, 16)
    coords = torch.tensor([[[10.0, 20.0, 30.0]], [[40.0, 5.0, 60.0]]])
    low = m.decode(emb, coords, torch.ones(2, 1, dtype=torch.long), None)
    assert low.shape == (2, 1, 16, 16, 16)
    # mask-only step (no points) and a SAM-style 4x-sized zero mask input are both accepted
    again = m.decode(emb, None, None, torch.zeros(2, 1, 64, 64, 64))
    assert again.shape == (2, 1, 16, 16, 16)
    assert m.upsample_logits(low).shape == (2, 1, 64, 64, 64)


def test_click_maps_peak_at_the_clicked_cell_and_keep_polarities_apart():
    maps = ClickMaps(64, [1.0, 6.0])
    coords = torch.tensor([[[4 * 3 + 1.5, 4 * 7 + 1.5, 4 * 11 + 1.5], [1.5, 1.5, 1.5]]])
    labels = torch.tensor([[1, 0]])
    out = maps(coords, labels, None, 1)
    assert out.shape == (1, 5, 16, 16, 16)
    narrow_pos, narrow_neg = out[0, 0], out[0, 1]
    assert narrow_pos[3, 7, 11] == pytest.approx(1.0) and narrow_pos.argmax() == np.ravel_multi_index((3, 7, 11), (16,) * 3)
    assert narrow_neg[0, 0, 0] == pytest.approx(1.0) and narrow_neg[3, 7, 11] < 1e-6
    assert out[0, 2].max() == pytest.approx(1.0) and out[0, 2, 3, 7, 15] > 0.5  # wide map reaches 4 cells away
    # padding labels (-1) contribute to neither polarity
    pad = maps(coords, torch.tensor([[1, -1]]), None, 1)
    assert pad[0, 1].abs().max() == 0
    # previous logits come in squashed as the last channel
    prev = torch.full((1, 1, 16, 16, 16), 8.0)
    assert torch.allclose(maps(None, None, prev, 1)[0, 4], torch.tanh(torch.tensor(2.0)).expand(16, 16, 16))


def test_checkpoint_round_trip_and_bad_config(tmp_path):
    m = _model().eval()
    path = str(tmp_path / "cu.pt")
    save_checkpoint(m, path, version="t1")
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, ClickUNet3D) and info["version"] == "t1" and not info["released_architecture"]
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        a = m.decode(m.encode(x), torch.tensor([[[30.0, 30.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long), None)
        b = loaded.decode(loaded.encode(x), torch.tensor([[[30.0, 30.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long), None)
    assert torch.equal(a, b)
    torch.save({"model_state_dict": m.state_dict(), "config": {**SMALL, "encoder_widths": [4, 8]}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="encoder_widths"):
        load_checkpoint(str(tmp_path / "bad.pt"))


def test_served_through_the_segmentation_engine(tmp_path):
    affine = ras_affine((1.0, 1.0, 2.0), np.diag([-1.0, -1.0, 1.0]))
    path = write_nifti(tmp_path / "v.nii.gz", smooth_volume((70, 60, 30)), affine)
    m = _model(image_size=128)
    eng = SegmentationEngine(m, "cu-test")
    r = eng.segment("img", path, "a", [[35, 30, 15]], [])
    assert r.mask.shape == (70, 60, 30) and r.mask.dtype == np.uint8
    r2 = eng.segment("img", path, "a", [[35, 30, 15]], [[10, 10, 5]])
    assert r2.cache_hit and r2.mask.shape == (70, 60, 30)


def test_click_recipe_trains_it_on_a_ball():
    """A few steps of the click chain on one ball target lower the loss (the model can learn)."""
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    grid = torch.stack(torch.meshgrid(*[torch.arange(64.0)] * 3, indexing="ij"))
    ball = (((grid - 32) ** 2).sum(0) < 14 ** 2).float()[None, None]
    image = (ball * 2 - 1 + 0.1 * torch.randn_like(ball))
    losses = []
    for step in range(40):
        emb = m.encode(image)
        loss, _ = click_losses(LossGridView(m, 32, crop=64), emb, loss_targets(ball, 32), 3,
                               np.random.default_rng(step), torch.Generator().manual_seed(step), False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_frozen_encoder_stays_unchanged_through_a_training_step():
    """BatchNorm statistics of a frozen part must not drift (the trainer caches its embeddings)."""
    m = _model()
    for p in m.image_encoder.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in m.image_encoder.state_dict().items()}
    m.train()
    assert not m.image_encoder.training and m.mask_decoder.training
    emb = m.encode(torch.randn(2, 1, 64, 64, 64) * 3 + 1)
    m.decode(emb, torch.tensor([[[30.0, 30.0, 30.0]]] * 2), torch.ones(2, 1, dtype=torch.long), None).sum().backward()
    after = m.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # an unfrozen encoder does update its running statistics in training mode
    for p in m.image_encoder.parameters():
        p.requires_grad_(True)
    m.train()
    m.encode(torch.randn(2, 1, 64, 64, 64) * 3 + 1)
    assert not all(torch.equal(before[k], m.image_encoder.state_dict()[k]) for k in before)


def test_extreme_normalised_inputs_are_clamped():
    """A z-scored CT crop with little tissue above 0 HU has air at hundreds of units below zero;
    the encoder sees at most +-10, so such a crop encodes like its clamped self."""
    m = _model().eval()
    x = torch.randn(1, 1, 64, 64, 64)
    x[..., :20] = -372.0
    with torch.no_grad():
        assert torch.equal(m.encode(x), m.encode(x.clamp(-10, 10)))


GEO = {"geodesic_taus": [2.0, 8.0], "click_mode": "all"}


def test_geodesic_maps_stop_at_an_edge_that_euclidean_distance_crosses():
    from lib.model.geodesic_maps import GeodesicMaps

    inten = torch.zeros(1, 16, 16, 16)
    inten[0, :, :, 8:] = 3.0  # two regions, edge between cells 7 and 8 on the last axis
    maps = GeodesicMaps(gamma=20.0, taus=[4.0])
    click = torch.tensor([[[4 * 8 + 1.5, 4 * 8 + 1.5, 4 * 5 + 1.5]]])  # cell (8, 8, 5), 3 cells before the edge
    out = maps(inten, click, torch.tensor([[1]]))
    assert out.shape == (1, 2, 16, 16, 16)
    inc, exc = out[0, 0], out[0, 1]
    assert inc[8, 8, 5] == pytest.approx(1.0)
    assert exc.abs().max() == 0  # no exclude click: that polarity is empty
    # same Euclidean distance (3 cells) on both sides of the click; the far side is across the edge
    assert inc[8, 8, 2] > 0.4 and inc[8, 8, 8] < 0.01
    # an exclude click fills the other polarity; padding labels (-1) are ignored
    both = maps(inten, torch.tensor([[[33.5, 33.5, 21.5], [33.5, 33.5, 49.5], [0.0, 0.0, 0.0]]]),
                torch.tensor([[1, 0, -1]]))
    assert both[0, 1, 8, 8, 12] == pytest.approx(1.0) and both[0, 1, 8, 8, 5] < 0.01
    assert torch.equal(maps(inten, None, None), torch.zeros(1, 2, 16, 16, 16))


def test_geodesic_model_contract_and_checkpoint_round_trip(tmp_path):
    m = _model(**GEO).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    emb = m.encode(x)
    assert emb.shape == (1, 9, 16, 16, 16)  # 8 feature channels + the cell-mean intensity
    assert torch.allclose(emb[:, -1:], torch.nn.functional.avg_pool3d(x, 4))
    coords, labels = torch.tensor([[[30.0, 30.0, 30.0], [5.0, 5.0, 5.0]]]), torch.tensor([[1, 0]])
    low = m.decode(emb, coords, labels, None)
    assert low.shape == (1, 1, 16, 16, 16)
    assert m.decode(emb, None, None, low).shape == (1, 1, 16, 16, 16)
    path = str(tmp_path / "geo.pt")
    save_checkpoint(m, path, version="geo")
    loaded, _ = load_checkpoint(path)
    assert loaded.config["click_mode"] == "all" and loaded.geodesic is not None
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x), coords, labels, None), m.decode(emb, coords, labels, None))
    for bad in ({"geodesic_taus": [0.0]}, {"geodesic_taus": "3"}, {"click_mode": "some"}, {"geodesic_gamma": -1}):
        with pytest.raises(ValueError):
            build_model({**SMALL, **bad})


def test_click_history_feeds_every_click_so_far_and_no_mask_only_step():
    seen = []

    class Spy:
        def __init__(self, model):
            self.view = LossGridView(model, 32, crop=64)

        def decode(self, emb, coords, labels, mask_input):
            seen.append(None if coords is None else (tuple(coords.shape), tuple(labels.shape)))
            return self.view.decode(emb, coords, labels, mask_input)

        def upsample_logits(self, low):
            return self.view.upsample_logits(low)

    m = _model(**GEO)
    ball = torch.zeros(1, 1, 64, 64, 64)
    ball[..., 20:40, 20:40, 20:40] = 1
    emb = m.encode(ball * 2 - 1)
    click_losses(Spy(m), emb, loss_targets(ball, 32), 4, np.random.default_rng(0), torch.Generator().manual_seed(0),
                 False, history=True)
    assert seen == [((1, n, 3), (1, n)) for n in range(1, 5)]
    seen.clear()
    click_losses(Spy(m), emb, loss_targets(ball, 32), 4, np.random.default_rng(0), torch.Generator().manual_seed(0),
                 False)
    assert None in seen and all(s is None or s[0] == (1, 1, 3) for s in seen)  # SAM-Med3D's chain unchanged


def test_warm_start_widens_the_decoder_input_and_keeps_everything_else(tmp_path):
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "train_click_unet", os.path.join(os.path.dirname(__file__), "..", "scripts", "train_click_unet.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old = _model()
    torch.save({"model": old.state_dict(), "step": 7}, tmp_path / "state.pt")
    new = _model(**GEO)
    script.warm_start(new, str(tmp_path / "state.pt"))
    w_old, w_new = old.mask_decoder.inp.weight, new.mask_decoder.inp.weight
    assert w_new.shape[1] == w_old.shape[1] + 5  # + intensity + 2 taus x 2 polarities
    assert torch.equal(w_new[:, : w_old.shape[1]], w_old) and w_new[:, w_old.shape[1]:].abs().max() == 0
    assert torch.equal(new.image_encoder.stem.conv.weight, old.image_encoder.stem.conv.weight)
    # with zero weights on the new inputs, the widened model decodes exactly as the old one
    x = torch.randn(1, 1, 64, 64, 64)
    c, lab = torch.tensor([[[30.0, 30.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        old.eval(), new.eval()
        assert torch.allclose(new.decode(new.encode(x), c, lab, None), old.decode(old.encode(x), c, lab, None), atol=1e-5)
    torch.save({"model": {"mask_decoder.head.weight": torch.zeros(3, 3)}, "step": 1}, tmp_path / "bad.pt")
    with pytest.raises(SystemExit, match="head.weight"):
        script.warm_start(_model(**GEO), str(tmp_path / "bad.pt"))


def test_every_training_path_trains_a_history_model_on_its_click_history(monkeypatch):
    """ClickChain (fine-tuning, active-learning simulation) and the fine-tune validation engine follow
    the model config's click mode, as the server does."""
    import lib.training.recipe as recipe

    seen = []
    real = recipe.click_losses
    monkeypatch.setattr(recipe, "click_losses", lambda *a, **k: seen.append(k.get("history")) or real(*a, **k))
    x = torch.randn(1, 1, 64, 64, 64)
    y = (torch.rand(1, 1, 64, 64, 64) > 0.5).float()
    for kw, history, mode in (({}, False, "newest"), (GEO, True, "all")):
        m = _model(**kw)
        recipe.ClickChain(m, loss_size=32)(x, y, np.random.default_rng(0), torch.Generator().manual_seed(0), 2, True)
        assert seen[-1] is history and (model_click_mode(m) or "newest") == mode


def test_geodesic_prior_is_the_classical_region_on_the_cell_grid():
    from lib.model.geodesic_maps import GeodesicPrior, box_face_seeds

    inten = torch.zeros(1, 16, 16, 16)
    inten[0, :, :, 8:] = 3.0  # edge between cells 7 and 8 on the last axis
    prior = GeodesicPrior(gamma=20.0, margin=4, clip=6.0)
    click = torch.tensor([[[4 * 8 + 1.5, 4 * 8 + 1.5, 4 * 5 + 1.5], [0.0, 0.0, 0.0]]])  # cell (8, 8, 5); padding
    out = prior(inten, click, torch.tensor([[1, -1]]))[0, 0]
    assert out.shape == (16, 16, 16)
    assert out[8, 8, 5] == 6.0 and out[8, 8, 4] > 0 and out[8, 8, 7] > 0  # the click's side of the edge, in the box
    assert out[8, 8, 8] < 0 and out[8, 8, 12] == -6.0  # across the edge (nearer the box face than the click)
    assert out[8, 1, 5] < 0 and out[8, 15, 5] < 0  # outside the box of the click plus 4 cells
    # an exclude click keeps its own label and pulls its neighbourhood to the background
    both = prior(inten, torch.tensor([[[33.5, 33.5, 21.5], [33.5, 33.5, 13.5]]]), torch.tensor([[1, 0]]))[0, 0]
    assert both[8, 8, 3] == -6.0 and both[8, 8, 5] == 6.0
    # no include click: background everywhere; a box that covers the whole grid: foreground everywhere
    assert torch.equal(prior(inten, click, torch.tensor([[0, -1]])), torch.full((1, 1, 16, 16, 16), -6.0))
    assert torch.equal(prior(inten, None, None), torch.full((1, 1, 16, 16, 16), -6.0))
    wide = GeodesicPrior(gamma=20.0, margin=20, clip=6.0)
    assert torch.equal(wide(inten, click[:, :1], torch.tensor([[1]])), torch.full((1, 1, 16, 16, 16), 6.0))
    faces = box_face_seeds(np.array([[8, 8, 5]]), 16, 4)
    assert {tuple(f) for f in faces} >= {(4, 8, 5), (12, 8, 5), (8, 8, 1), (8, 8, 9)}
    assert len(box_face_seeds(np.array([[8, 8, 7]]), 16, 8)) == 0  # every face on or beyond the grid's border


def test_a_prior_model_with_a_zero_output_layer_serves_exactly_the_prior(tmp_path):
    from lib.model.geodesic_maps import GeodesicPrior

    m = _model(**GEO, prior_margin_cells=4, prior_gamma=20.0).eval()
    with torch.no_grad():
        m.mask_decoder.head.weight.zero_()
        m.mask_decoder.head.bias.zero_()
    x = torch.randn(1, 1, 64, 64, 64)
    emb = m.encode(x)
    coords, labels = torch.tensor([[[30.0, 30.0, 30.0], [5.0, 5.0, 5.0]]]), torch.tensor([[1, 0]])
    expected = GeodesicPrior(20.0, 4, 6.0)(emb[:, -1], coords, labels)
    with torch.no_grad():
        assert torch.equal(m.decode(emb, coords, labels, None), expected)
    path = str(tmp_path / "prior.pt")
    save_checkpoint(m, path, version="prior")
    loaded, _ = load_checkpoint(path)
    assert loaded.prior is not None and loaded.prior.margin == 4
    for bad in ({"prior_margin_cells": -1}, {"prior_margin_cells": 2.5}, {"prior_gamma": 0},
                {"prior_clip": True}, {"prior_margin_cells": 3, "geodesic_taus": []}):
        with pytest.raises(ValueError):
            build_model({**SMALL, **GEO, **bad} if "geodesic_taus" not in bad else {**SMALL, **bad})


def test_export_packages_a_zero_head_prior_model_with_its_serving_refinement(tmp_path):
    """scripts/train_click_unet.py --export: how default-v3 was built (default-v2's weights, output layer
    zeroed, the prior on, the server's refinement in the config), without training a step."""
    import importlib.util
    import os

    from lib.model.build import model_refine

    spec = importlib.util.spec_from_file_location(
        "train_click_unet", os.path.join(os.path.dirname(__file__), "..", "scripts", "train_click_unet.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    src = _model(**GEO)
    save_checkpoint(src, str(tmp_path / "v2.pt"), version="v2")
    out = str(tmp_path / "v3.pt")
    config = json.dumps({**SMALL, **GEO, "architecture": "click_unet", "prior_margin_cells": 4})
    script.main(["--out", str(tmp_path / "run"), "--init", str(tmp_path / "v2.pt"), "--zero-head", "--config", config,
                 "--export", out, "--export-config", '{"refine": {"band": 6.0, "gamma": 60.0}}',
                 "--export-version", "v3"])
    model, info = load_checkpoint(out)
    assert info["version"] == "v3" and model_refine(model) == {"band": 6.0, "gamma": 60.0}
    assert model.prior is not None and model.mask_decoder.head.weight.abs().max() == 0
    assert torch.equal(model.image_encoder.stem.conv.weight, src.image_encoder.stem.conv.weight)
    assert not os.path.exists(tmp_path / "run" / "state.pt")  # nothing trained, no run state left behind
    with pytest.raises(json.JSONDecodeError):
        script.main(["--out", str(tmp_path / "run"), "--init", str(tmp_path / "v2.pt"), "--config", config,
                     "--export", out, "--export-config", "{refine"])


def test_the_maps_and_the_prior_share_one_include_solve_per_click_and_give_the_same_logits(monkeypatch):
    import lib.model.geodesic_maps as gm

    m = _model(**GEO, prior_margin_cells=4, prior_gamma=20.0).eval()  # = geodesic_gamma
    x = torch.randn(1, 1, 64, 64, 64)
    coords, labels = torch.tensor([[[30.0, 30.0, 30.0], [40.0, 20.0, 30.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        emb = m.encode(x)
        calls = []
        real = gm.geodesic_from
        monkeypatch.setattr(gm, "geodesic_from", lambda cost, seeds: calls.append(len(seeds)) or real(cost, seeds))
        shared = m.decode(emb, coords, labels, None)
        assert len(calls) == 3  # include (maps and prior), exclude (maps), exclude + box faces (prior)
        # the same numbers as each part solving on its own
        cells = emb[:, -1]
        geo = m.geodesic(cells, coords, labels)
        prompts = torch.cat([m.prompt_encoder(coords, labels, None, 1, 16), emb[:, -1:], geo], dim=1)
        alone = m.mask_decoder(emb[:, :-1], prompts) + m.prior(cells, coords, labels)
        assert torch.equal(shared, alone)


def test_a_zero_output_layer_skips_the_decoder_at_inference_with_the_same_logits(monkeypatch):
    """default-v3/v4 serve their prior alone (output layer all zeros): the decoder's exact-zero output is
    not computed at inference (about half a click's decode), and is under grad (training needs it)."""
    m = _model(**GEO, prior_margin_cells=4, prior_gamma=20.0).eval()
    with torch.no_grad():
        m.mask_decoder.head.weight.zero_()
        m.mask_decoder.head.bias.zero_()
    emb = m.encode(torch.randn(1, 1, 64, 64, 64)).detach()
    coords, labels = torch.tensor([[[30.0, 30.0, 30.0], [5.0, 5.0, 5.0]]]), torch.tensor([[1, 0]])
    full = m.decode(emb, coords, labels, None)  # grad enabled: the decoder runs
    calls = []
    real = m.mask_decoder.forward
    monkeypatch.setattr(m.mask_decoder, "forward", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = m.decode(emb, coords, labels, None)
    assert not calls and torch.equal(fast, full.detach())
    with torch.no_grad():
        m.mask_decoder.head.bias.fill_(0.5)  # a fine-tuned (non-zero) output layer always runs
        m.decode(emb, coords, labels, None)
    assert calls == [1]


def _walled_ball(grid=32, radius=12.0):
    """Cell intensities: a homogeneous ball of `radius` cells (larger than a 7-cell box) walled by an edge,
    blurred as a scanner blurs it (a one-voxel digital wall lets 26-connected paths slip through diagonally)."""
    from scipy import ndimage

    r = np.sqrt(((np.indices((grid,) * 3) - grid // 2) ** 2).sum(0))
    return ndimage.gaussian_filter(np.where(r <= radius, 10.0, 0.0), 1.0)


def test_prior_growth_covers_a_walled_structure_larger_than_the_box():
    from lib.model.geodesic_maps import GeodesicPrior, PriorGrowth

    inten = torch.from_numpy(_walled_ball()).float()[None]
    click = torch.tensor([[[4 * 16 + 1.5] * 3]])
    fixed = GeodesicPrior(gamma=20.0, margin=7, clip=6.0)(inten, click, torch.tensor([[1]]))[0, 0]
    grown = GeodesicPrior(gamma=20.0, margin=7, clip=6.0, grow=PriorGrowth(20, 1.0))(
        inten, click, torch.tensor([[1]]))[0, 0]
    ball = torch.from_numpy(_walled_ball() > 5.0)
    dice = lambda m: float(2 * (m & ball).sum() / (m.sum() + ball.sum()))  # noqa: E731
    assert dice(fixed > 0) < 0.5  # cut by the 15-cell box
    assert dice(grown > 0) > 0.85  # the plateau (the ball filled, its wall not crossed) sets the margin
    growth = PriorGrowth(20, 1.0)
    d = np.abs(np.indices((32,) * 3) - 16).max(0).astype(float)  # homogeneous: V grows as T^3, no plateau
    assert growth.margin(d, np.array([[16, 16, 16]]), 7) == 7
    assert PriorGrowth(9, 1.0).margin(d * 0 + np.where(_walled_ball() > 5.0, 1.0, 99.0), np.array([[16, 16, 16]]),
                                      7) == 9  # capped at max_margin


def test_prior_growth_ignores_a_plateau_that_is_the_crop_filling_up():
    from lib.model.geodesic_maps import PriorGrowth

    # everything reachable at cost ~1 except a thin rim: the region fills the grid, a "plateau" of the crop
    d = np.abs(np.indices((32,) * 3) - 16).max(0).astype(float)
    d[d >= 15] += 1000.0
    assert PriorGrowth(20, 1.0).margin(d, np.array([[16, 16, 16]]), 7) == 7
    for bad in ({"prior_grow_max": -1}, {"prior_grow_max": 2.5}, {"prior_grow_slope": 0}, {"prior_grow_slope": True}):
        with pytest.raises(ValueError):
            build_model({**SMALL, **GEO, "prior_margin_cells": 4, **bad})
    m = build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12, "prior_grow_slope": 0.8})
    assert m.prior.grow.max_margin == 12 and m.prior.grow.slope == 0.8
    assert build_model({**SMALL, **GEO, "prior_margin_cells": 4}).prior.grow is None


def test_train_script_lr_schedule_warms_up_then_decays_by_a_cosine_from_the_invocations_first_step():
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "train_click_unet", os.path.join(os.path.dirname(__file__), "..", "scripts", "train_click_unet.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.lr_scale(0, 0, 50, 0) == pytest.approx(1 / 50) and script.lr_scale(700, 0, 50, 0) == 1.0
    # resumed at step 1481 (warm-up long over): 1 at the resume step, half-way 0.525, 0.05 at the end and after
    assert script.lr_scale(1481, 1481, 50, 1000) == pytest.approx(1.0)
    assert script.lr_scale(1981, 1481, 50, 1000) == pytest.approx(0.525)
    assert script.lr_scale(2481, 1481, 50, 1000) == pytest.approx(0.05)
    assert script.lr_scale(3000, 1481, 50, 1000) == pytest.approx(0.05)
    args = script.parse_args(["--out", "x", "--cosine", "1000", "--lr", "3e-4"])
    assert args.cosine == 1000 and args.lr == 3e-4


def test_prior_growth_until_exclude_stops_growing_once_the_user_excludes():
    """prior_grow_until_exclude: with an exclude click the box keeps its base margin (the exclude click
    says the region went too far), without one it grows as before."""
    from lib.model.geodesic_maps import GeodesicPrior, PriorGrowth

    inten = torch.from_numpy(_walled_ball()).float()[None]
    click = torch.tensor([[[4 * 16 + 1.5] * 3]])
    far = torch.tensor([[[4 * 16 + 1.5] * 2 + [4 * 31 + 1.5]]])  # an exclude click in the grid's last cell layer
    both, labels = torch.cat([click, far], 1), torch.tensor([[1, 0]])
    ball = torch.from_numpy(_walled_ball() > 5.0)
    dice = lambda m: float(2 * (m & ball).sum() / (m.sum() + ball.sum()))  # noqa: E731

    def prior(until, coords, labs):
        return GeodesicPrior(20.0, 7, 6.0, grow=PriorGrowth(20, 1.0, until_exclude=until))(inten, coords, labs)[0, 0]

    assert dice(prior(True, click, torch.tensor([[1]])) > 0) > 0.85  # no exclude click: grows
    assert dice(prior(False, both, labels) > 0) > 0.85  # the old rule grows regardless
    assert dice(prior(True, both, labels) > 0) < 0.5  # an exclude click: the 15-cell box again
    assert PriorGrowth(20, 1.0, until_exclude=True).applies(0) and not PriorGrowth(20, 1.0, True).applies(1)
    assert PriorGrowth(20, 1.0).applies(3)
    m = build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12, "prior_grow_until_exclude": True})
    assert m.prior.grow.until_exclude
    with pytest.raises(ValueError, match="until_exclude"):
        build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12, "prior_grow_until_exclude": 1})


def _walled_ellipsoid(axes, grid=32, shell=1.5):
    """Cell intensities of a head-like phantom: an ellipsoid of tissue (10) in a denser shell (30) in air
    (0), blurred as _walled_ball; and the ellipsoid's own cells."""
    from scipy import ndimage

    x = (np.indices((grid,) * 3) - grid // 2 + 0.5) / np.array(axes, dtype=float)[:, None, None, None]
    r = np.sqrt((x ** 2).sum(0))
    image = np.where(r <= 1.0, 10.0, np.where(r <= 1.0 + shell / min(axes), 30.0, 0.0))
    return ndimage.gaussian_filter(image, 1.0), r <= 1.0


def test_prior_growth_cap_keeps_a_grown_box_without_faces_inside_the_structure():
    """A structure long along one axis (a brain in a head CT crop) grows the box's margin on every axis past
    the grid, so no face is left to seed the background and the prior was +clip over the whole crop, the
    air outside the shell included. With prior_grow_cap the region stops at the plateau the growth found."""
    from lib.model.geodesic_graph import geodesic_cost, geodesic_from
    from lib.model.geodesic_maps import GeodesicPrior, PriorGrowth, box_face_seeds

    image, tissue = _walled_ellipsoid((17.0, 10.0, 10.0))
    inten, click, inc = torch.from_numpy(image).float()[None], torch.tensor([[[4 * 16 + 1.5] * 3]]), torch.tensor([[1]])
    d = geodesic_from(geodesic_cost(image, 20.0), np.array([[16, 16, 16]]))
    growth = PriorGrowth(20, 1.0, cap=1.0)
    level = growth.plateau_threshold(d)
    margin = growth.margin(d, np.array([[16, 16, 16]]), 7, level)
    assert level is not None and margin == 16 and not len(box_face_seeds(np.array([[16, 16, 16]]), 32, margin))
    uncapped = GeodesicPrior(20.0, 7, 6.0, grow=PriorGrowth(20, 1.0))(inten, click, inc)[0, 0] > 0
    capped = GeodesicPrior(20.0, 7, 6.0, grow=growth)(inten, click, inc)[0, 0] > 0
    assert bool(uncapped.all())  # the failure: every cell, air included
    inside = torch.from_numpy(tissue)
    assert int(capped.sum()) > 0.3 * int(inside.sum()) and float((capped & inside).sum() / capped.sum()) > 0.98
    assert torch.equal(capped, torch.from_numpy(d < level))  # {d < level}: the plateau region itself
    # no bound without a cap configured or without a plateau
    assert PriorGrowth(20, 1.0).bound(d, level, 6.0) is None and growth.bound(d, None, 6.0) is None
    for bad in (-1.0, 0.5, True, "1"):
        with pytest.raises(ValueError):
            build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12, "prior_grow_cap": bad})
    m = build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12, "prior_grow_cap": 1.0})
    assert m.prior.grow.cap == 1.0
    assert build_model({**SMALL, **GEO, "prior_margin_cells": 4, "prior_grow_max": 12}).prior.grow.cap == 0.0
