"""MedSAM's box protocol: LiteMedSAM (a 2D, box-prompted network) run slice by slice on 3D volumes.

MedSAM's 3D protocol (centre slice, then slice-by-slice propagation with the neighbour's mask box)
on the stored grid of any 3D volume: windowing and 256x256 inputs (preprocess.py), slice axis and
frame (slices.py), the per-slice embedding cache (predictor.py), propagation (propagate.py), the
file-level engine (engine.py), weights location and setup (weights.py, fetch.py) and pseudo-labels
(teacher.py). The network itself is lib.model.medsam (re-exported here: LiteMedSAM,
load_lite_medsam, CheckpointError). Pure torch: no timm, torchvision or MONAI Label imports here
(the infer task lives in lib.infers.medsam_box, the evaluation row in lib.evaluation.medsam).

    from lib.medsam import MedSAMEngine, load_lite_medsam, locate_weights
    engine = MedSAMEngine(load_lite_medsam(locate_weights().path), "lite_medsam")
    mask = engine.segment_box("ct.nii.gz", [i0, i1, j0, j1, k0, k1]).mask
"""
from lib.model.medsam import CheckpointError, LiteMedSAM, load_lite_medsam

from .engine import MedSAMEngine, MedSAMResult, build_medsam_engine
from .predictor import VolumePredictor
from .propagate import BoxError, PropagationResult, propagate_box
from .weights import MedSAMWeightsError, WeightsLocation
from .weights import locate as locate_weights

__all__ = [
    "BoxError", "CheckpointError", "LiteMedSAM", "MedSAMEngine", "MedSAMResult", "MedSAMWeightsError",
    "PropagationResult", "VolumePredictor", "WeightsLocation", "build_medsam_engine", "load_lite_medsam",
    "locate_weights", "propagate_box",
]
