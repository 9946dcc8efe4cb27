"""MONAI Label infer tasks of the SAM-Med3D app, and the request/label-file helpers they share."""
from .output import write_label
from .request import InferOptions, parse_request
from .sammed3d import SAMMed3DInfer

__all__ = ["InferOptions", "SAMMed3DInfer", "parse_request", "write_label"]
