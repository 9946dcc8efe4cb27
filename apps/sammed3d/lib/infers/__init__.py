"""MONAI Label infer tasks of the SAM-Med3D app."""
from .sammed3d import SAMMed3DInfer

__all__ = ["SAMMed3DInfer"]
