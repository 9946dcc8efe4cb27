"""Builder for SAM-Med3D: the released vit_b_ori configuration or a reduced one."""
from typing import Optional

import torch
from torch import nn

from .click_unet import build_click_unet
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sam3d import Sam3D
from .transformer import TwoWayTransformer3D

RELEASED_CONFIG = {
    "image_size": 128,
    "vit_patch_size": 16,
    "in_chans": 1,
    "encoder_embed_dim": 768,
    "encoder_depth": 12,
    "encoder_num_heads": 12,
    "encoder_global_attn_indexes": [2, 5, 8, 11],
    "window_size": 14,
    "mlp_ratio": 4,
    "qkv_bias": True,
    "use_rel_pos": True,
    "use_abs_pos": True,
    "layernorm_eps": 1e-6,
    "prompt_embed_dim": 384,
    "mask_in_chans": 16,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
    "decoder_transformer": {"depth": 2, "mlp_dim": 2048, "num_heads": 8, "attention_downsample_rate": 2, "activation": "ReLU"},
}
RELEASED_NUM_PARAMETERS = 100_509_232
_IGNORED_KEYS = {"seed"}  # provenance fields that some configs carry
_ACTIVATIONS = {"ReLU": nn.ReLU, "GELU": nn.GELU}


class ConfigError(ValueError):
    """A model configuration that the architecture cannot build."""


def resolve_config(config: Optional[dict]) -> dict:
    """Merge ``config`` over the released one and check that the architecture allows it."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RELEASED_CONFIG.items()}
    if config is None:
        return cfg
    if not isinstance(config, dict):
        raise ConfigError(f"model config must be a dict, got {type(config).__name__}")
    unknown = set(config) - set(cfg) - _IGNORED_KEYS
    if unknown:
        raise ConfigError(f"unknown model config keys: {sorted(unknown)}; allowed: {sorted(cfg)}")
    for key, value in config.items():
        if key in _IGNORED_KEYS:
            continue
        if key == "decoder_transformer":
            if not isinstance(value, dict):
                raise ConfigError("decoder_transformer must be a dict")
            bad = set(value) - set(cfg[key])
            if bad:
                raise ConfigError(f"unknown decoder_transformer keys: {sorted(bad)}")
            cfg[key].update(value)
        else:
            cfg[key] = value
    cfg["encoder_global_attn_indexes"] = list(cfg["encoder_global_attn_indexes"])
    _check(cfg)
    return cfg


def _positive_int(cfg: dict, key: str, value=None) -> int:
    value = cfg[key] if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _check(cfg: dict) -> None:
    for key in ("image_size", "vit_patch_size", "in_chans", "encoder_embed_dim", "encoder_depth",
                "encoder_num_heads", "prompt_embed_dim", "mask_in_chans", "iou_head_depth", "iou_head_hidden_dim"):
        _positive_int(cfg, key)
    if isinstance(cfg["window_size"], bool) or not isinstance(cfg["window_size"], int) or cfg["window_size"] < 0:
        raise ConfigError(f"window_size must be an integer >= 0, got {cfg['window_size']!r}")
    if cfg["image_size"] % cfg["vit_patch_size"]:
        raise ConfigError(f"image_size {cfg['image_size']} is not a multiple of vit_patch_size {cfg['vit_patch_size']}")
    grid = cfg["image_size"] // cfg["vit_patch_size"]
    if grid % 4:
        # The mask input is 4x the embedding grid and the decoder upsamples by 4: 128/16 = 8 works.
        raise ConfigError(f"the token grid ({grid}) must be a multiple of 4")
    if cfg["encoder_embed_dim"] % cfg["encoder_num_heads"]:
        raise ConfigError(f"encoder_embed_dim {cfg['encoder_embed_dim']} not divisible by encoder_num_heads {cfg['encoder_num_heads']}")
    depth = cfg["encoder_depth"]
    for i in cfg["encoder_global_attn_indexes"]:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth:
            raise ConfigError(f"global attention index {i!r} is outside the encoder's {depth} blocks")
    if not isinstance(cfg["mlp_ratio"], (int, float)) or cfg["mlp_ratio"] <= 0:
        raise ConfigError(f"mlp_ratio must be positive, got {cfg['mlp_ratio']!r}")
    if not isinstance(cfg["layernorm_eps"], float) or cfg["layernorm_eps"] <= 0:
        raise ConfigError(f"layernorm_eps must be a positive float, got {cfg['layernorm_eps']!r}")
    pd = cfg["prompt_embed_dim"]
    dec = cfg["decoder_transformer"]
    for key in ("depth", "mlp_dim", "num_heads", "attention_downsample_rate"):
        _positive_int(dec, key, dec[key])
    if pd % 3:
        raise ConfigError(f"prompt_embed_dim {pd} must be divisible by 3 (3 Fourier axes)")
    if pd % 8:
        raise ConfigError(f"prompt_embed_dim {pd} must be divisible by 8 (decoder upscaling to C/4 and C/8)")
    if pd % dec["num_heads"] or (pd // dec["attention_downsample_rate"]) % dec["num_heads"]:
        raise ConfigError(f"prompt_embed_dim {pd} and its /{dec['attention_downsample_rate']} must be divisible by decoder heads {dec['num_heads']}")
    if cfg["mask_in_chans"] % 4:
        raise ConfigError(f"mask_in_chans {cfg['mask_in_chans']} must be divisible by 4")
    if dec["activation"] not in _ACTIVATIONS:
        raise ConfigError(f"decoder activation must be one of {sorted(_ACTIVATIONS)}, got {dec['activation']!r}")
    if _positive_int(cfg, "num_multimask_outputs", cfg["num_multimask_outputs"]) < 1:
        raise ConfigError("num_multimask_outputs must be >= 1")


def build_sam_med3d(config: Optional[dict] = None) -> Sam3D:
    """Build SAM-Med3D. ``None``: the released vit_b_ori (100,509,232 parameters); a dict: any
    configuration of the same architecture (keys as in the parity fixture's ``config``)."""
    cfg = resolve_config(config)
    grid = cfg["image_size"] // cfg["vit_patch_size"]
    dec = cfg["decoder_transformer"]
    encoder = ImageEncoderViT3D(
        img_size=cfg["image_size"], patch_size=cfg["vit_patch_size"], in_chans=cfg["in_chans"],
        embed_dim=cfg["encoder_embed_dim"], depth=cfg["encoder_depth"], num_heads=cfg["encoder_num_heads"],
        mlp_ratio=cfg["mlp_ratio"], out_chans=cfg["prompt_embed_dim"], qkv_bias=cfg["qkv_bias"],
        eps=cfg["layernorm_eps"], use_abs_pos=cfg["use_abs_pos"], use_rel_pos=cfg["use_rel_pos"],
        window_size=cfg["window_size"], global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
    )
    prompt_encoder = PromptEncoder3D(
        embed_dim=cfg["prompt_embed_dim"], image_embedding_size=(grid,) * 3,
        input_image_size=(cfg["image_size"],) * 3, mask_in_chans=cfg["mask_in_chans"],
    )
    decoder = MaskDecoder3D(
        transformer_dim=cfg["prompt_embed_dim"],
        transformer=TwoWayTransformer3D(
            depth=dec["depth"], embedding_dim=cfg["prompt_embed_dim"], num_heads=dec["num_heads"],
            mlp_dim=dec["mlp_dim"], activation=_ACTIVATIONS[dec["activation"]],
            attention_downsample_rate=dec["attention_downsample_rate"],
        ),
        num_multimask_outputs=cfg["num_multimask_outputs"],
        iou_head_depth=cfg["iou_head_depth"], iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
    )
    return Sam3D(encoder, prompt_encoder, decoder, config=cfg)


def build_model(config: Optional[dict] = None):
    """Build whichever architecture ``config`` names: ``{"architecture": "click_unet", ...}`` is the
    convolutional default model (lib.model.click_unet); anything else is SAM-Med3D."""
    if isinstance(config, dict) and config.get("architecture") == "click_unet":
        try:
            return build_click_unet(config)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return build_sam_med3d(config)


def model_click_mode(model) -> Optional[str]:
    """The clicks a model was trained to see, from its config: "all" (its click history, e.g.
    ClickUNet3D with geodesic maps), "newest", or None when the config does not say (SAM-Med3D)."""
    return (getattr(model, "config", None) or {}).get("click_mode")


def model_refine(model) -> Optional[dict]:
    """The post-processing a model's config asks the server for (lib.session.refine's parameters as a
    dict, e.g. {"band": 6.0, "gamma": 60.0}), or None."""
    return (getattr(model, "config", None) or {}).get("refine")


def model_finetune(model) -> Optional[dict]:
    """The train options a model's config asks for beneath the request's (lib.trainers.options
    FineTuneOptions fields, e.g. {"lr": 0.05}), or None (the task's defaults)."""
    return (getattr(model, "config", None) or {}).get("finetune")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
