"""Trainer building blocks: session training crops, targets, options, the embedding cache, fine_tune
progress files. Tiny model (tests/trainer_utils.py), small synthetic NIfTI volumes, CPU."""
import json
import os

import numpy as np
import pytest
import torch

from trainer_utils import make_samples, tiny_model

from lib.session import extract_training_crop, load_volume
from lib.session.geometry import model_grid
from lib.session.preprocess import crop_origin_for, normalise, resample_crop
from lib.trainers import EmbeddingCache, FineTuneOptions, fine_tune, find_targets, options_from_request, split_samples
from lib.trainers.data import CropSource, cache_key, make_variants, read_label_array
from lib.trainers.finetune import _example
from lib.versions import encoder_fingerprint


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(str(tmp_path_factory.mktemp("vols")), 3, two_blobs=True)


def test_training_crop_is_the_sessions_preprocessing(samples):
    s = samples[0]
    t = find_targets([s])[0]
    vol = load_volume(s["image"])
    crop = extract_training_crop(s["image"], s["label"], t.centre)
    grid = model_grid(vol.image)
    origin = crop_origin_for(grid.stored_to_grid(np.array(t.centre))[0])
    assert crop.origin == origin and crop.ct
    torch.testing.assert_close(crop.image, normalise(resample_crop(vol.image, grid, origin), True))
    # the target sits at the crop centre and has the component's volume (at 1.5 mm voxels)
    assert crop.target.shape == (128, 128, 128) and crop.target[64, 64, 64]
    lab = read_label_array(s["label"])
    stored_mm3 = 2.0 * 2.0 * 2.5
    expected = (lab == 1).sum() * stored_mm3 / 1.5 ** 3  # both blobs lie inside the crop
    assert abs(int(crop.target.sum()) - expected) / expected < 0.15
    # an offset moves the crop; an array label gives the same target as the file
    moved = extract_training_crop(vol, lab, t.centre, offset=(3, 0, -2))
    assert moved.origin == (origin[0] + 3, origin[1], origin[2] - 2)
    same = extract_training_crop(vol, lab, t.centre)
    assert torch.equal(same.target, crop.target)


def test_targets_are_components_largest_first(samples):
    ts = find_targets(samples, max_components=2, min_voxels=50)
    assert len(ts) == 6 and [t.component for t in ts[:2]] == [0, 1]
    assert ts[0].voxels >= ts[1].voxels
    assert len(find_targets(samples, max_components=1)) == 3


def test_options_parsing():
    o = options_from_request({"epochs": "3", "train_parts": "mask_decoder+prompt_encoder", "lr": 1e-3,
                              "multi_gpu": True, "flip": "false"})
    assert o.max_epochs == 3 and o.train_parts == ("prompt_encoder", "mask_decoder") and not o.flip
    assert options_from_request({"train_parts": ["image_encoder", "mask_decoder"]}).train_parts == ("image_encoder", "mask_decoder")
    assert options_from_request({"train_parts": "all"}).train_parts == ("image_encoder", "prompt_encoder", "mask_decoder")
    for bad in ({"nope": 1}, {"train_parts": "decoder"}, {"max_epochs": 0}, {"val_split": 1.5}, {"publish": "sometimes"},
                {"max_epochs": 1.5}):
        with pytest.raises(ValueError):
            options_from_request(bad)
    cfg = FineTuneOptions().to_config()
    assert cfg["train_parts"] == "mask_decoder" and cfg["max_epochs"] >= 1 and json.dumps(cfg)


def test_split_is_deterministic_and_keeps_one_for_validation():
    samples = [{"image": f"/x/img{i}.nii.gz", "label": f"/x/lab{i}.nii.gz"} for i in range(5)]
    a, b = split_samples(samples, 0.2, seed=0), split_samples(list(reversed(samples)), 0.2, seed=0)
    assert a == b and len(a[1]) == 1 and len(a[0]) == 4
    assert split_samples(samples[:2], 0.2)[1] and not split_samples(samples[:1], 0.2)[1]
    assert split_samples(samples, 0.0)[1] == []


def test_embedding_cache_hits_misses_and_encoder_invalidation(samples, tmp_path):
    model = tiny_model()
    sha = encoder_fingerprint(model)
    folder = str(tmp_path / "cache")
    cache = EmbeddingCache(folder)
    cache.bind_encoder(sha)
    source = CropSource()
    t = find_targets(samples[:1])[0]
    v0, v1 = make_variants(2, 8, True, np.random.default_rng(0))
    opts = FineTuneOptions()
    e0, y0 = _example(model, t, v0, source, cache, True, sha, opts, "cpu")
    assert (cache.hits, cache.misses, source.built) == (0, 1, 1)
    e0b, _ = _example(model, t, v0, source, cache, True, sha, opts, "cpu")
    assert (cache.hits, cache.misses, source.built) == (1, 1, 1) and torch.equal(e0, e0b)
    e1, y1 = _example(model, t, v1, source, cache, True, sha, opts, "cpu")
    assert cache.misses == 2 and source.built == 2  # another variant is another crop
    if v1.flips:
        assert not torch.equal(y0, y1)
    # the disk copy serves a new process (same encoder) without building a crop
    warm = EmbeddingCache(folder)
    assert warm.bind_encoder(sha) == 0
    e0c, y0c = _example(model, t, v0, CropSource(), warm, True, sha, opts, "cpu")
    assert warm.disk_hits == 1 and torch.equal(e0c, e0) and torch.equal(y0c, y0)
    # a changed encoder: other keys, and binding drops the stale files
    other = tiny_model(seed=1)
    sha2 = encoder_fingerprint(other)
    assert sha2 != sha and cache_key(t, v0, sha2, None) != cache_key(t, v0, sha, None)
    assert EmbeddingCache(folder).bind_encoder(sha2) == 2
    assert not [f for f in os.listdir(folder) if f.endswith(".pt")]
    # the key follows the files: rewriting the label invalidates
    k = cache_key(t, v0, sha, None)
    os.utime(t.label, ns=(1, 1))
    assert cache_key(t, v0, sha, None) != k


def test_fine_tune_reuses_embeddings_and_writes_progress(samples, tmp_path):
    stats_path = tmp_path / "train_stats.json"
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = options_from_request({"max_epochs": 2, "num_clicks": 3, "loss_size": 32, "variants": 1, "batch_size": 2,
                                 "val_split": 0.34, "max_components": 1, "lr": 1e-2, "progress": True})
    opts.stats_path, opts.tensorboard_dir = str(stats_path), str(tmp_path / "tb")
    model, m = fine_tune(model, samples, opts)
    assert m["train_targets"] == 2 and m["val_targets"] == 1 and m["val_cases"] and m["baseline"]
    # one variant per target: computed in epoch 1, reused in epoch 2
    assert m["embedding_cache"]["misses"] == 2 and m["embedding_cache"]["hits"] == 2
    assert m["base_encoder_sha256"] == m["encoder_sha256"]  # encoder frozen
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert m["improved"] == (m["best_epoch"] > 0)
    if not m["improved"]:  # nothing beat the live model: its weights come back
        assert all(torch.equal(before[k], after[k]) for k in before)
    s = json.loads(stats_path.read_text())
    for key in ("total_time", "epoch", "total_epochs", "best_metric", "start_ts", "train", "eval", "current_iteration"):
        assert key in s, key
    assert s["epoch"] == 2 and s["total_epochs"] == 2 and s["status"] == "DONE"
    assert s["eval"]["key_metric_name"] == "val_dice_mean" and "val_dice@1" in s["eval"]["metrics"]
    assert "train_loss" in s["train"]["metrics"] and len(s["history"]) == 2
    assert s["best_metric"] == pytest.approx(max([m["baseline"]["dice_mean"]] + [h["val"]["dice_mean"] for h in m["epochs"]]))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_prompt_encoder_learns_only_when_asked(samples):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = options_from_request({"max_epochs": 1, "num_clicks": 2, "loss_size": 32, "variants": 1, "val_split": 0,
                                 "max_components": 1, "lr": 1e-2, "train_parts": "mask_decoder+prompt_encoder",
                                 "progress": False})
    model, m = fine_tune(model, samples[:2], opts)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"prompt_encoder", "mask_decoder"} and m["val_targets"] == 0


def _chain_step(model, fast, x, y, loss_size, seed=3, clicks=5, bf16=False):
    """One cached-embedding training step (forward, backward, AdamW) -> (loss, dice, grads, new weights)."""
    from lib.training.recipe import ClickChain, build_optimizer, click_rngs, set_trainable

    set_trainable(model, ("prompt_encoder", "mask_decoder"))
    opt = build_optimizer(model, FineTuneOptions(lr=1e-2))
    opt.zero_grad(set_to_none=True)
    loss, dice = ClickChain(model, bf16, loss_size, fast=fast)(x, y, *click_rngs(seed, x.device), clicks, False)
    loss.backward()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    opt.step()
    return loss.detach(), dice, grads, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("loss_size", [64, 128, 32])
def test_fast_click_chain_equals_the_reference_computation(loss_size):
    """TrainingView (patch-order upscaling, separable upsampling, fused DiceCE, lean click sampler,
    foreach AdamW) computes the same step as Sam3D.decode + F.interpolate + autograd: same loss, same
    gradients (the unused multimask MLPs included: zeros, not None), same updated weights."""
    torch.manual_seed(0)
    y = torch.zeros(2, 1, 128, 128, 128)
    y[0, 0, 40:90, 30:70, 50:80] = 1
    y[1, 0, 60:75, 60:100, 20:60] = 1
    results = []
    for fast in (False, True):
        model = tiny_model()
        x = torch.randn(2, model.prompt_encoder.embed_dim, 8, 8, 8)
        results.append(_chain_step(model, fast, x, y, loss_size))
    (l0, d0, g0, w0), (l1, d1, g1, w1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d1, d0)
    assert {k for k, g in g0.items() if g is None} == {k for k, g in g1.items() if g is None}
    for k, g in g0.items():
        if g is not None:
            torch.testing.assert_close(g1[k], g, rtol=1e-4, atol=1e-6, msg=k)
    assert any(k.startswith("mask_decoder.output_hypernetworks_mlps.3") and g is not None and not g.any()
               for k, g in g1.items())
    for k in w0:  # AdamW's first step is ~lr * sign(grad): compare where the gradient is above rounding
        # noise (e.g. k_proj biases have an exactly-zero true gradient: both paths give ~1e-10 noise)
        well = g0[k].abs() > 1e-6 if g0.get(k) is not None else torch.ones_like(w0[k], dtype=torch.bool)
        torch.testing.assert_close(w1[k][well], w0[k][well], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_fast_click_chain_on_cuda_matches_the_reference(bf16, monkeypatch):
    """The CUDA path of TrainingView (the default model's GPU training uses it, with bf16 autocast):
    same loss and gradients as the reference chain; bf16 within bf16 rounding (relative norms).
    TF32 off so fp32 is fp32. bf16: one click, because later clicks are drawn from the error region,
    which rounding may shift by a voxel, after which the two chains legitimately differ."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    y = torch.zeros(2, 1, 128, 128, 128, device="cuda")
    y[0, 0, 40:90, 30:70, 50:80] = 1
    y[1, 0, 60:75, 60:100, 20:60] = 1
    results = []
    for fast in (False, True):
        model = tiny_model().cuda()
        x = torch.randn(2, model.prompt_encoder.embed_dim, 8, 8, 8, generator=torch.Generator().manual_seed(1)).cuda()
        results.append(_chain_step(model, fast, x, y, 128, clicks=1 if bf16 else 5, bf16=bf16))
    (l0, d0, g0, _), (l1, d1, g1, _) = results
    tol = 3e-2 if bf16 else 1e-4
    assert abs(float(l1) - float(l0)) <= tol * max(1.0, abs(float(l0)))
    for k, g in g0.items():
        if g is not None and g.norm() > 1e-6:
            assert g1[k] is not None, k
            assert float((g1[k] - g).norm() / g.norm()) <= (0.1 if bf16 else 1e-3), k


def _sample_click_where(pred, gt, generator):
    """The training click as first written (nested where()s), the reference for sample_click_uniform."""
    b, spatial = pred.shape[0], pred.shape[2:]
    pred, gt = pred.reshape(b, -1).bool(), gt.reshape(b, -1).bool()
    err = pred ^ gt
    has_err, has_gt = err.any(dim=1, keepdim=True), gt.any(dim=1, keepdim=True)
    candidates = torch.where(has_err, err, torch.where(has_gt, gt, torch.ones_like(gt)))
    scores = torch.rand(pred.shape, generator=generator, device=pred.device)
    flat = torch.where(candidates, scores, torch.full_like(scores, -1.0)).argmax(dim=1)
    _, h, w = spatial
    coords = torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=1).float()[:, None, :]
    return coords, gt.gather(1, flat[:, None]).long()


def test_fast_view_pieces_match_the_model():
    from lib.training.clicks import sample_click_uniform
    from lib.model.training_view import TrainingView, upsample_trilinear
    from lib.training.losses import dice_ce_loss, dice_ce_loss_reference

    torch.manual_seed(1)
    for n_in, n_out in ((32, 64), (32, 128), (16, 64), (32, 32)):
        low = torch.randn(2, 1, n_in, n_in, n_in)
        ref = torch.nn.functional.interpolate(low, size=(n_out,) * 3, mode="trilinear", align_corners=False)
        torch.testing.assert_close(upsample_trilinear(low, n_out), ref, rtol=0, atol=2e-6)
    model = tiny_model()
    emb = torch.randn(2, model.prompt_encoder.embed_dim, 8, 8, 8)
    low = torch.randn(2, 1, 32, 32, 32)
    pts, lab = torch.tensor([[[10.0, 20.0, 30.0]], [[90.0, 5.0, 127.0]]]), torch.tensor([[1], [0]])
    for c, lb in ((pts, lab), (None, None)):
        torch.testing.assert_close(TrainingView(model).decode(emb, c, lb, low), model.decode(emb, c, lb, low),
                                   rtol=1e-5, atol=1e-5)
    x = (3 * torch.randn(2, 1, 16, 16, 16)).requires_grad_()
    t = (torch.rand(2, 1, 16, 16, 16) > 0.7).float()
    a, b = dice_ce_loss(x, t), dice_ce_loss_reference(x, t)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])
    for case in range(4):  # errors; no error; empty target; empty everything
        pred, gt = torch.rand(2, 1, 20, 20, 20) > 0.5, torch.rand(2, 1, 20, 20, 20) > 0.8
        if case == 1:
            pred[0] = gt[0]
        if case >= 2:
            gt[1] = False
            pred[1] = False if case == 2 else pred[1]
        if case == 3:
            gt[:], pred[:] = False, False
        got = sample_click_uniform(pred, gt, torch.Generator().manual_seed(case))
        want = _sample_click_where(pred, gt, torch.Generator().manual_seed(case))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fine_tune_validates_with_the_refinement_the_model_is_served_with(samples, monkeypatch):
    """A published version is chosen by its validation Dice, so validation decodes as the server does:
    with the model config's refinement (default-v3 asks for one)."""
    import lib.trainers.finetune as ft
    from lib.model import CLICK_UNET_CONFIG, build_model
    from lib.session.refine import GeodesicRefine

    seen = []
    real = ft.SegmentationEngine
    monkeypatch.setattr(ft, "SegmentationEngine", lambda *a, **k: seen.append(k.get("refine")) or real(*a, **k))
    cfg = {**CLICK_UNET_CONFIG, "image_size": 64, "encoder_widths": [4, 8, 8, 8], "embed_dim": 8,
           "decoder_widths": [8, 8, 8], "groups": 2, "geodesic_taus": [2.0], "click_mode": "all",
           "prior_margin_cells": 4, "refine": {"band": 6.0, "gamma": 60.0}}
    opts = options_from_request({"max_epochs": 1, "num_clicks": 2, "loss_size": 32, "variants": 1, "batch_size": 2,
                                 "val_split": 0.34, "max_components": 1, "progress": False})
    fine_tune(build_model(cfg), samples, opts)
    assert seen == [GeodesicRefine(6.0, 60.0, 2)]
    seen.clear()
    fine_tune(tiny_model(), samples, opts)  # SAM-Med3D's config asks for none
    assert seen == [None]


def test_a_models_finetune_config_sits_between_the_task_defaults_and_the_request():
    """options_for_model: request > the checkpoint config's `finetune` > the task's defaults (the embedded
    default asks for larger steps than SAM-Med3D's recipe); a bad key in the checkpoint config raises."""
    from lib.model import build_model
    from lib.trainers.options import options_for_model

    small = {"architecture": "click_unet", "encoder_widths": [4, 8, 8, 8], "embed_dim": 8, "decoder_widths": [8, 8, 8]}
    task = FineTuneOptions(max_epochs=7)
    plain = build_model(small)
    assert options_for_model({}, task, plain).lr == FineTuneOptions().lr and options_for_model({}, task, plain).max_epochs == 7
    tuned = build_model({**small, "finetune": {"lr": 0.05, "steps_per_epoch": 16}})
    o = options_for_model({"max_epochs": "3", "client_id": "x"}, task, tuned)
    assert (o.lr, o.steps_per_epoch, o.max_epochs) == (0.05, 16, 3)
    assert options_for_model({"lr": 1e-3}, task, tuned).lr == 1e-3  # the request wins
    with pytest.raises(ValueError, match="checkpoint's finetune config"):
        options_for_model({}, task, build_model({**small, "finetune": {"lr_typo": 1.0}}))
    with pytest.raises(ValueError, match="finetune"):
        build_model({**small, "finetune": ["lr", 1.0]})
