"""LiteMedSAM (MedSAM distilled to TinyViT) as a second, box-prompted model of the app.

2D model (256x256 input, box prompt) + MedSAM's 3D protocol (centre slice, then slice-by-slice
propagation with the neighbour's mask box) on the stored grid of any 3D volume. Pure torch: no
timm, torchvision or MONAI Label imports here (the infer task lives in lib.infers.medsam_box).

    from lib.medsam import MedSAMEngine, load_lite_medsam, locate_weights
    engine = MedSAMEngine(load_lite_medsam(locate_weights().path), "lite_medsam")
    mask = engine.segment_box("ct.nii.gz", [i0, i1, j0, j1, k0, k1]).mask
"""
from .checkpoint import CheckpointError, load_lite_medsam
from .engine import MedSAMEngine, MedSAMResult
from .model import LiteMedSAM
from .predictor import VolumePredictor
from .propagate import BoxError, PropagationResult, propagate_box
from .weights import MedSAMWeightsError, WeightsLocation
from .weights import locate as locate_weights

__all__ = [
    "BoxError", "CheckpointError", "LiteMedSAM", "MedSAMEngine", "MedSAMResult", "MedSAMWeightsError",
    "PropagationResult", "VolumePredictor", "WeightsLocation", "load_lite_medsam", "locate_weights", "propagate_box",
]
