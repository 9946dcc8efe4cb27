"""Shared by the trainer tests: a tiny SAM-Med3D checkpoint and small labelled NIfTI volumes."""
import os

import numpy as np
import torch

from lib.model import build_sam_med3d, save_checkpoint
from lib.synthetic.cases import ellipsoid_case, write_nifti

TINY_CONFIG = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
               "window_size": 4, "prompt_embed_dim": 48, "mlp_ratio": 2,
               "decoder_transformer": {"depth": 1, "mlp_dim": 96, "num_heads": 4, "attention_downsample_rate": 2,
                                       "activation": "ReLU"}}


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam_med3d(TINY_CONFIG)


def tiny_checkpoint(path: str, seed: int = 0, version: str = "tiny") -> str:
    return save_checkpoint(tiny_model(seed), str(path), version=version)


def write_volume(folder, name: str, seed: int, shape=(56, 52, 40), spacing=(2.0, 2.0, 2.5), two_blobs=False):
    """lib.synthetic.cases.ellipsoid_case as LPS-stored NIfTI with a non-trivial affine -> (image, label) paths."""
    img, lab = ellipsoid_case(seed, shape, two_blobs)
    os.makedirs(os.path.join(folder, "labels"), exist_ok=True)
    paths = []
    for arr, sub, dtype in ((img, "", np.float32), (lab, "labels", np.uint8)):
        paths.append(write_nifti(arr, os.path.join(folder, sub, f"{name}.nii.gz"), spacing, (10.0, -20.0, 5.0),
                                 (-1, 0, 0, 0, -1, 0, 0, 0, 1), dtype))
    return paths[0], paths[1]


def make_samples(folder, n: int, seed: int = 0, two_blobs=False):
    out = []
    for s in range(n):
        img, lab = write_volume(folder, f"case{s:02d}", seed * 100 + s, two_blobs=two_blobs)
        out.append({"image": img, "label": lab})
    return out
