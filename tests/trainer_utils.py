"""Shared by the trainer tests: a tiny SAM-Med3D checkpoint and small labelled NIfTI volumes."""
import os

import numpy as np
import SimpleITK as sitk
import torch

from lib.model import build_sam_med3d, save_checkpoint

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
    """A CT-like volume (HU) with one bright ellipsoid (label 1) and, optionally, a second one
    (label 1, another component). LPS-stored NIfTI with a non-trivial affine. -> (image, label) paths."""
    rs = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    img = rs.normal(0, 20, size=shape).astype(np.float32) + 40.0
    lab = np.zeros(shape, np.uint8)
    centres = [(shape[0] * 0.4, shape[1] * 0.5, shape[2] * 0.5)]
    if two_blobs:
        centres.append((shape[0] * 0.75, shape[1] * 0.3, shape[2] * 0.5))
    for c in centres:
        r = rs.uniform(5, 8, size=3)
        inside = ((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2 < 1
        lab[inside] = 1
        img[inside] += 300.0
    img[:2] = -1000.0  # some air: CT
    os.makedirs(os.path.join(folder, "labels"), exist_ok=True)
    paths = []
    for arr, sub, dtype in ((img, "", np.float32), (lab, "labels", np.uint8)):
        im = sitk.GetImageFromArray(arr.transpose(2, 1, 0).astype(dtype))
        im.SetSpacing(spacing)
        im.SetOrigin((10.0, -20.0, 5.0))
        im.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        p = os.path.join(folder, sub, f"{name}.nii.gz")
        sitk.WriteImage(im, p)
        paths.append(p)
    return paths[0], paths[1]


def make_samples(folder, n: int, seed: int = 0, two_blobs=False):
    out = []
    for s in range(n):
        img, lab = write_volume(folder, f"case{s:02d}", seed * 100 + s, two_blobs=two_blobs)
        out.append({"image": img, "label": lab})
    return out
