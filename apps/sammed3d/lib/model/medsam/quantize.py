"""Optional int8 encoder of LiteMedSAM (`--conf medsam_encoder int8`; docs/medsam.md has the Dice with and without)."""
from __future__ import annotations

from torch import nn

from .lite_medsam import LiteMedSAM


ENCODER_MODES = ("fp32", "int8")


def quantize_encoder(model: LiteMedSAM, mode: str = "fp32") -> LiteMedSAM:
    """mode "int8": the encoder's Linear layers (attention qkv/proj and MLPs of stages 1-3, about
    half its FLOPs) become dynamically quantised int8 layers (per-output-channel weight scales,
    activations quantised per call; torch.ao.quantization.quantize_dynamic, fbgemm on x86). The
    decoder and all convolutions stay fp32. Outputs change (docs/medsam.md has the Dice with and
    without); "fp32" returns the model unchanged. In place; returns the model."""
    if mode not in ENCODER_MODES:
        raise ValueError(f"medsam encoder must be one of {list(ENCODER_MODES)}, got {mode!r}")
    if mode == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        model.image_encoder = quantize_dynamic(model.image_encoder, {nn.Linear: per_channel_dynamic_qconfig})
    return model
