"""LiteMedSAM (MedSAM distilled to a TinyViT encoder), ported so the released `lite_medsam.pth` loads exactly.

The 2D network only, pure torch, beside the SAM-Med3D network of lib.model (it shares SAM's two-way
transformer and MLP/LayerNorm blocks with it). The box protocol that runs it on 3D volumes (windowing,
per-slice cache, slice-by-slice propagation, the file-level engine) is lib.medsam.

    from lib.model.medsam import load_lite_medsam
    model = load_lite_medsam("lite_medsam.pth")        # strict key/shape check, eval, BN fused
    logits, iou = model.decode(model.encode(image), box)

Files: lite_medsam.py (LiteMedSAM), tiny_vit.py (encoder), prompt_encoder.py, mask_decoder.py,
common.py (Conv2d_BN and the shared blocks), checkpoint.py (strict loading), quantize.py (int8 encoder).
"""
from .checkpoint import CheckpointError, check_state_dict, load_lite_medsam
from .lite_medsam import LiteMedSAM
from .quantize import ENCODER_MODES, quantize_encoder

__all__ = ["CheckpointError", "ENCODER_MODES", "LiteMedSAM", "check_state_dict", "load_lite_medsam", "quantize_encoder"]
