"""The shared training recipe with any model that has the Sam3D interface (encode, decode,
upsample_logits, image_size, three parts), not only Sam3D; the choice of decoder view; the
fine-tuning task's /info config kept as it was. CPU, tiny models."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer_utils import tiny_model

from lib.model.sam3d import Sam3D
from lib.model.training_view import LossGridView, TrainingView, training_view
from lib.trainers import FineTuneOptions
from lib.training.loop import TrainConfig, build_optimizer, train_step
from lib.training.recipe import PARTS, ClickChain, RecipeOptions, click_rngs, set_trainable
from lib.training.recipe import build_optimizer as recipe_optimizer
from lib.training.recipe import train_step as recipe_step


class ConvClickModel(nn.Module):
    """The Sam3D interface without Sam3D: a strided-conv encoder, a click bias, a conv decoder."""

    image_size = 128

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = nn.Conv3d(1, 8, 16, stride=16)
        self.prompt_encoder = nn.Linear(4, 8)
        self.mask_decoder = nn.Conv3d(9, 1, 3, padding=1)

    @property
    def device(self):
        return self.image_encoder.weight.device

    def encode(self, image):
        return self.image_encoder(image)

    def decode(self, emb, coords, labels, mask_input):
        x = F.interpolate(emb, scale_factor=4, mode="trilinear", align_corners=False)
        if coords is not None:
            click = torch.cat([coords[:, -1] / self.image_size, labels[:, -1:].float()], dim=1)
            x = x + self.prompt_encoder(click)[..., None, None, None]
        mask = mask_input if mask_input is not None else torch.zeros_like(x[:, :1])
        return self.mask_decoder(torch.cat([x, mask], dim=1))

    def upsample_logits(self, low):
        return F.interpolate(low.float(), scale_factor=4, mode="trilinear", align_corners=False)


class DecodeOverride(Sam3D):
    def decode(self, *args, **kwargs):  # another decode: TrainingView would not compute it
        return super().decode(*args, **kwargs)


def _cube(size):
    tgt = torch.zeros(2, 1, size, size, size)
    tgt[0, 0, size // 4:size // 2, size // 4:size // 2, size // 4:3 * size // 4] = 1
    tgt[1, 0, size // 3:3 * size // 4, size // 3:size // 2, size // 4:size // 2] = 1
    img = torch.where(tgt > 0, 2.0, -0.5) + 0.1 * torch.randn(tgt.shape, generator=torch.Generator().manual_seed(0))
    return img, tgt


def test_view_choice_falls_back_to_the_models_own_decode():
    sam = tiny_model()
    assert isinstance(training_view(sam, 64), TrainingView) and isinstance(training_view(sam), TrainingView)
    assert training_view(sam, None, fast=False) is sam and isinstance(training_view(sam, 64, fast=False), LossGridView)
    other = ConvClickModel()
    assert training_view(other) is other and isinstance(training_view(other, 32), LossGridView)
    override = DecodeOverride(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder)
    assert training_view(override) is override


def test_from_scratch_step_trains_a_model_that_is_not_sam3d_on_smaller_crops():
    """The default-model trainer's step on an interface-only model, with 64^3 crops (its own grid)."""
    torch.set_num_threads(1)
    model = ConvClickModel()
    cfg = TrainConfig(lr=3e-3, decoder_lr_ratio=1.0, num_clicks=3, bf16=False)
    opt = build_optimizer(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    img, tgt = _cube(64)
    rs, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    steps = [train_step(model, opt, img, tgt, cfg, rs, gen) for _ in range(8)]
    assert all(np.isfinite([s["loss"] for s in steps])) and steps[-1]["loss"] < steps[0]["loss"]
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(PARTS)


def test_fine_tuning_chain_on_a_loss_grid_with_a_model_that_is_not_sam3d():
    """The fine-tuning task's chain (cached embeddings, 32^3 loss grid, fast view asked for) falls
    back to the model's decode; only the trainable parts move."""
    model = ConvClickModel()
    set_trainable(model, ("mask_decoder",))
    opts = RecipeOptions(lr=1e-2, num_clicks=2)
    opt = recipe_optimizer(model, opts)
    img, tgt = _cube(128)
    with torch.no_grad():
        emb = model.encode(img)
    enc0 = model.image_encoder.weight.clone()
    r = recipe_step(ClickChain(model, loss_size=32, fast=True), opt, emb, tgt, opts, *click_rngs(1, "cpu"),
                    encode=False)
    assert np.isfinite(r["loss"]) and 0.0 <= r["dice"] <= 1.0 and r["grad_norm"] > 0
    assert torch.equal(model.image_encoder.weight, enc0)
    assert [g["name"] for g in opt.param_groups] == ["prompt+decoder"]


def test_fine_tuning_info_config_keeps_its_keys_and_order():
    """RecipeOptions became FineTuneOptions' base class; /info lists the same options in the same order."""
    assert list(FineTuneOptions().to_config()) == [
        "train_parts", "max_epochs", "lr", "decoder_lr_ratio", "weight_decay", "batch_size", "steps_per_epoch",
        "num_clicks", "grad_clip", "loss_size", "val_split", "val_folds", "max_components", "min_voxels", "variants", "jitter",
        "flip", "embedding_cache", "modality", "val_max_crops", "click_mode", "key_metric", "min_improvement",
        "publish", "device", "world_size", "backend", "seed", "progress"]
