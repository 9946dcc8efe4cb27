"""SAM-Med3D training step, optimiser recipe, click validation, checkpoint round trip (tiny model, CPU)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lib.model import build_sam_med3d, load_checkpoint
from lib.training.loop import TrainConfig, build_optimizer, click_losses, evaluate_clicks, set_lr_scale, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "image_size": 128, "vit_patch_size": 16, "in_chans": 1, "encoder_embed_dim": 48, "encoder_depth": 2,
    "encoder_num_heads": 2, "encoder_global_attn_indexes": [1], "window_size": 4, "mlp_ratio": 2, "qkv_bias": True,
    "use_rel_pos": True, "use_abs_pos": True, "layernorm_eps": 1e-06, "prompt_embed_dim": 48, "mask_in_chans": 8,
    "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 32,
    "decoder_transformer": {"depth": 1, "mlp_dim": 64, "num_heads": 2, "attention_downsample_rate": 2,
                            "activation": "ReLU"},
}


def _trivial_batch(b=2):
    """A bright cube on a dark background: learnable in a few steps."""
    img = torch.zeros(b, 1, 128, 128, 128)
    tgt = torch.zeros_like(img)
    for i in range(b):
        s = 40 + 8 * i
        tgt[i, 0, s:s + 40, s:s + 40, 44:84] = 1
    img = torch.where(tgt > 0, 2.0, -0.5) + 0.1 * torch.randn_like(img)
    return img, tgt


def test_optimizer_groups_follow_recipe():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, decoder_lr_ratio=0.1))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"encoder": 1e-3, "prompt+decoder": 1e-4})
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
    set_lr_scale(opt, 0.5)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx({"encoder": 5e-4, "prompt+decoder": 5e-5})


def test_click_chain_has_mask_only_steps_and_finite_loss(monkeypatch):
    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    calls = []
    orig = model.decode

    def spy(emb, coords, labels, mask):
        calls.append((coords is None, float(mask.detach().abs().sum())))
        return orig(emb, coords, labels, mask)

    monkeypatch.setattr(model, "decode", spy)
    img, tgt = _trivial_batch()
    emb = model.encode(img)
    loss, dice = click_losses(model, emb, tgt, 11, np.random.default_rng(0), torch.Generator().manual_seed(0), False)
    assert torch.isfinite(loss) and loss.requires_grad and dice.shape == (2,)
    mask_only = [i for i, (none, _) in enumerate(calls) if none]
    assert len(calls) == 11 and len(mask_only) == 2 and mask_only[-1] == 10 and 2 <= mask_only[0] <= 8
    assert calls[0][1] == 0.0 and calls[1][1] > 0  # zeros first, then the previous logits


def test_loss_decreases_on_trivial_batch():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    cfg = TrainConfig(lr=3e-3, decoder_lr_ratio=1.0, num_clicks=3, bf16=False)
    opt = build_optimizer(model, cfg)
    img, tgt = _trivial_batch()
    rs, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    losses = [train_step(model, opt, img, tgt, cfg, rs, g)["loss"] for _ in range(6)]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.05, losses


def test_freeze_encoder_leaves_encoder_unchanged():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    cfg = TrainConfig(lr=1e-2, num_clicks=2, freeze_encoder=True, bf16=False)
    opt = build_optimizer(model, cfg)
    enc0 = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    dec0 = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    img, tgt = _trivial_batch(1)
    train_step(model, opt, img, tgt, cfg, np.random.default_rng(0), None)
    assert all(torch.equal(enc0[k], v) for k, v in model.image_encoder.state_dict().items())
    assert any(not torch.equal(dec0[k], v) for k, v in model.mask_decoder.state_dict().items())


def test_evaluate_clicks_reports_dice_after_1_and_5():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY)
    img, tgt = _trivial_batch()
    for acc in (False, True):
        r = evaluate_clicks(model, img, tgt, accumulate=acc)
        assert set(r) == {"dice@1", "dice@5"} and len(r["dice@1"]) == 2
        assert all(0.0 <= v <= 1.0 for v in r["dice@1"] + r["dice@5"])


def test_train_script_end_to_end_and_checkpoint_round_trip(tmp_path):
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "scripts", "train_default_model.py"), "--out", str(out),
           "--minutes", "5", "--device", "cpu", "--config", str(cfg_path), "--batch", "1", "--num-clicks", "2",
           "--pool-size", "1", "--phantom-size", "48", "--val-phantoms", "1", "--max-steps", "2",
           "--eval-reserve-s", "0", "--refresh-per-step", "0"]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=280)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 2
    assert set(metrics["final"]["phantom_newest"]) == {"dice@1", "dice@5"}
    model, info = load_checkpoint(str(out / "model.pt"))
    assert info["version"] == "default-v1" and info["metrics"] == metrics["final"]
    assert model.config["encoder_embed_dim"] == 48
    raw = torch.load(out / "model.pt", weights_only=True)["model_state_dict"]
    assert raw["image_encoder.patch_embed.proj.weight"].dtype == torch.float16
    x = torch.zeros(1, 1, 128, 128, 128)
    with torch.no_grad():
        low = model.decode(model.encode(x), torch.tensor([[[64.0, 64.0, 64.0]]]), torch.tensor([[1]]), None)
    assert low.shape == (1, 1, 32, 32, 32) and torch.isfinite(low).all()
