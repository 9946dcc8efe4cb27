"""Loading and saving SAM-Med3D checkpoints: strict, weights-only, with clear errors.

Accepted formats:
- the release: ``{"model_state_dict": state_dict}`` (``sam_med3d_turbo.pth``);
- a bare state dict;
- either of the above with a DDP ``module.`` prefix on every key;
- the app's own: ``{"model_state_dict": ..., "config": {...}, "version": ..., "metrics": {...}}``.
"""
import os
import pickle
import tempfile
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

import torch

from .build import ConfigError, build_model, resolve_config
from .sam3d import Sam3D

APP_FORMAT = "sammed3d-app-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message says why.

    The root of every checkpoint error: lib.medsam's (LiteMedSAM weights) is a subclass."""


def read_checkpoint(path: str, map_location="cpu") -> Any:
    """torch.load with weights_only=True, turning every failure into a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: not a complete PyTorch checkpoint ({msg})") from e


def extract_state_dict(obj: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """-> (state dict with any ``module.`` prefix removed, metadata of the app format or {})."""
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and "model_state_dict" in obj:
        meta = {k: v for k, v in obj.items() if k != "model_state_dict"}
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("checkpoint holds no state dict (expected a dict of tensors or {'model_state_dict': ...})")
    non_tensor = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(f"checkpoint is not a state dict: entries that are not tensors: {non_tensor[:5]}")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, meta


def infer_config(state_dict: Dict[str, torch.Tensor]) -> dict:
    """Recover a build config from tensor shapes (for bare state dicts of reduced models).

    Decoder heads cannot be read off shapes; the released value (8) is assumed.
    """
    try:
        sd = state_dict
        patch = sd["image_encoder.patch_embed.proj.weight"]  # (E, in, p, p, p)
        embed, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks."))
        use_rel = "image_encoder.blocks.0.attn.rel_pos_d" in sd
        use_abs = "image_encoder.pos_embed" in sd
        grid = sd["image_encoder.pos_embed"].shape[1] if use_abs else None
        head_dim = sd["image_encoder.blocks.0.attn.rel_pos_d"].shape[1] if use_rel else None
        if grid is None or head_dim is None:
            raise CheckpointError("cannot infer the config of a model without abs/rel positions; save it with its config")
        global_idx, window = [], 0
        for i in range(depth):
            rows = sd[f"image_encoder.blocks.{i}.attn.rel_pos_d"].shape[0]
            if rows == 2 * grid - 1:
                global_idx.append(i)
            else:
                window = (rows + 1) // 2
        prompt = sd["prompt_encoder.no_mask_embed.weight"].shape[1]
        return resolve_config({
            "image_size": grid * patch_size, "vit_patch_size": patch_size, "in_chans": in_chans,
            "encoder_embed_dim": embed, "encoder_depth": depth, "encoder_num_heads": embed // head_dim,
            "encoder_global_attn_indexes": global_idx, "window_size": window or 14,
            "mlp_ratio": sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed,
            "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in sd, "use_rel_pos": use_rel, "use_abs_pos": use_abs,
            "prompt_embed_dim": prompt, "mask_in_chans": sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            "num_multimask_outputs": sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            "iou_head_hidden_dim": sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            "decoder_transformer": {
                "depth": 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("mask_decoder.transformer.layers.")),
                "mlp_dim": sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            },
        })
    except KeyError as e:
        raise CheckpointError(f"not a SAM-Med3D state dict: missing {e.args[0]}") from e
    except ConfigError as e:
        raise CheckpointError(f"state dict shapes do not form a valid SAM-Med3D config: {e}") from e


def load_state_dict_strict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Strict load that names every missing, unexpected and wrong-shape key (nothing is loaded on error)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str, map_location="cpu", config: Optional[dict] = None) -> Tuple[Sam3D, Dict[str, Any]]:
    """Build the model a checkpoint describes and load it strictly -> (model in eval mode, info).

    The config comes from ``config`` if given, else the checkpoint's own, else the released one if
    the shapes match it, else it is inferred from the tensor shapes. info holds the resolved
    config, the metadata saved with the checkpoint, and ``released`` (the vit_b_ori shapes).
    """
    obj = read_checkpoint(path, map_location=map_location)
    state_dict, meta = extract_state_dict(obj)
    cfg = config if config is not None else meta.get("config")
    if cfg is None:
        cfg = infer_config(state_dict)
    try:
        model = build_model(cfg)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} carries an invalid config: {e}") from e
    load_state_dict_strict(model, state_dict)
    info = dict(meta)
    info["config"] = model.config
    info["released_architecture"] = model.config == resolve_config(None)
    info["path"] = os.path.abspath(path)
    return model.eval(), info


def atomic_write(path: str, write: Callable[[BinaryIO], None], tmp_suffix: Optional[str] = None) -> str:
    """Write a file atomically: ``write(f)`` into a temp file in the same folder, fsync, os.replace.

    Readers see the old file or the new one, never a truncated one; a crash mid-write leaves the
    previous file intact (model files, the live-version pointer and saved labels are written so).
    `tmp_suffix` (default: the file's extension) keeps the temp file out of folder scans by pattern.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] if tmp_suffix is None else tmp_suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(model: Sam3D, path: str, **metadata: Any) -> str:
    """Write the app format atomically (see atomic_write)."""
    payload = {"format": APP_FORMAT, "model_state_dict": model.state_dict(), "config": model.config, **metadata}
    return atomic_write(path, lambda f: torch.save(payload, f))
