"""Load `lite_medsam.pth` (a plain state dict of 435 tensors, 9.79 M parameters) strictly.

`torch.load(weights_only=True)` only: the file is data, never code. Every key of the file must
match a parameter/buffer of the port with the same shape, and vice versa; otherwise
CheckpointError lists what is missing, unexpected or mis-shaped.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..checkpoint import CheckpointError as ModelCheckpointError
from .lite_medsam import LiteMedSAM


class CheckpointError(ModelCheckpointError, RuntimeError):
    """The file is not a LiteMedSAM state dict this port can load exactly.

    One hierarchy with SAM-Med3D's: `except lib.model.CheckpointError` catches both. Still a
    RuntimeError, as it always was, for callers that catch that."""


def _state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # medsam-lite-train checkpoints wrap the state dict
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return obj


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str = "state dict") -> None:
    """Raise CheckpointError unless `state` has exactly the model's keys with the same shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise CheckpointError(f"{path} is not a LiteMedSAM checkpoint this port can load: " + "; ".join(parts))


def load_lite_medsam(path: str, map_location: str = "cpu", fuse: bool = True,
                     device: Optional[str] = None) -> LiteMedSAM:
    """Build the port, load `path` strictly, set eval mode.

    fuse: fold the encoder's batch norms into its convolutions after loading (same outputs up to
    float rounding, about 10 % faster on CPU).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"LiteMedSAM weights not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-tensor payloads refused by weights_only
        raise CheckpointError(f"cannot read {path} as a weights-only torch file: {str(e).strip().splitlines()[0]}") from None
    state = _state_dict(obj, path)
    model = LiteMedSAM()
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    if fuse:
        model.image_encoder.fuse_batchnorm()
    model.image_encoder.to(memory_format=torch.channels_last)  # see LiteMedSAM.encode
    if device is not None:
        model.to(device)
    return model
