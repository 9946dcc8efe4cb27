"""SAM-Med3D (arXiv 2310.15161), ported so the released weights load and compute what the public code computes.

Pure torch: no MONAI Label imports, usable from a notebook, a batch job or the server.
"""
from .build import RELEASED_CONFIG, RELEASED_NUM_PARAMETERS, ConfigError, build_model, build_sam_med3d, count_parameters, model_click_mode, model_finetune, model_refine, resolve_config
from .checkpoint import CheckpointError, atomic_write, extract_state_dict, infer_config, load_checkpoint, load_state_dict_strict, read_checkpoint, save_checkpoint
from .click_unet import ClickUNet3D, build_click_unet
from .click_unet_config import CLICK_UNET_CONFIG
from .sam3d import Sam3D

__all__ = [
    "RELEASED_CONFIG", "RELEASED_NUM_PARAMETERS", "ConfigError", "build_model", "build_sam_med3d", "count_parameters", "model_click_mode", "model_finetune", "model_refine", "resolve_config",
    "CheckpointError", "atomic_write", "extract_state_dict", "infer_config", "load_checkpoint", "load_state_dict_strict",
    "read_checkpoint", "save_checkpoint", "Sam3D", "CLICK_UNET_CONFIG", "ClickUNet3D", "build_click_unet",
]
