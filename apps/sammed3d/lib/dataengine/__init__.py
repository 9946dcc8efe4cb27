"""Training data for the offline default model: real backgrounds, supervoxel targets, synthetic
lesions, and randomised contrast, resolution and orientation (issue 14, item 2).

Pure numpy/torch/scikit-image: runs on a machine without SimpleITK or MONAI (the GPU box).
Sources and licences: docs/default_model.md and the model card.
"""
from .augment import randomise_appearance, randomise_orientation
from .lesions import insert_lesion
from .sampler import TrainingSampler
from .supervoxels import SupervoxelGraph, compute_supervoxels

__all__ = ["randomise_appearance", "randomise_orientation", "insert_lesion", "TrainingSampler",
           "SupervoxelGraph", "compute_supervoxels"]
