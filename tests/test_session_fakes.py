"""Stand-in model and volume writers shared by the session tests (imported by test_session_*).

BallModel has the released model's encode/decode interface but no learned weights: its
low-res logits are `radius - distance` (crop voxels) to the LAST include click, minus balls
around exclude clicks, so a correct session must return a ball around the clicked voxel in
world space whatever the file's orientation. It records every call for the tests.
"""
from __future__ import annotations


import nibabel as nib
import numpy as np
import torch
from torch import nn


class BallModel(nn.Module):
    def __init__(self, radius: float = 8.0, image_size: int = 128, exclude_radius: float = 4.0):
        super().__init__()
        self.radius = radius
        self.exclude_radius = exclude_radius
        self.image_size = image_size
        self.dummy = nn.Parameter(torch.zeros(()))  # so .to(device) has something to move
        self.encode_calls = 0
        self.decode_calls = []  # (points (N,3) list, labels list, mask_input sum)
        self.encoded_images = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 1, S, S, S) -> (1, 2, S/16, S/16, S/16): pooled intensity (depends on the crop)."""
        assert image.shape[1:] == (1,) + (self.image_size,) * 3, image.shape
        self.encode_calls += 1
        self.encoded_images.append(image.detach().cpu().clone())
        pooled = torch.nn.functional.avg_pool3d(image, 16)
        return torch.cat([pooled, pooled], dim=1)

    def decode(self, image_embedding, point_coords, point_labels, mask_input):
        n = self.image_size // 4
        assert point_coords.shape[0] == 1 and point_coords.shape[2] == 3
        assert mask_input is not None and mask_input.shape == (1, 1, n, n, n)
        pts = point_coords[0].cpu().numpy()
        labs = point_labels[0].cpu().numpy()
        self.decode_calls.append((pts.tolist(), labs.tolist(), float(mask_input.abs().sum())))
        centres = torch.arange(n, dtype=torch.float32) * 4 + 1.5  # low-res cell centres, crop coords
        g = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1)
        inc = pts[labs == 1]
        if len(inc) == 0:
            # No include click in this step ("newest" mode, an exclude): keep the fed-back mask,
            # as a real model given its previous logits does.
            prev = mask_input[0, 0].float().cpu()
            logits = prev.clone() if prev.abs().sum() > 0 else torch.full((n, n, n), -1.0)
        else:
            logits = self.radius - (g - torch.tensor(inc[-1])).norm(dim=-1)
        for p in pts[labs == 0]:
            logits = torch.minimum(logits, (g - torch.tensor(p)).norm(dim=-1) - self.exclude_radius)
        return logits[None, None].to(image_embedding.device)


def ras_affine(spacing, directions=None, origin=(0.0, 0.0, 0.0)):
    """4x4 RAS affine from per-axis spacing and unit direction columns (RAS)."""
    d = np.eye(3) if directions is None else np.asarray(directions, float)
    a = np.eye(4)
    a[:3, :3] = d * np.asarray(spacing, float)[None, :]
    a[:3, 3] = origin
    return a


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def write_nifti(path, data, affine):
    """Write with nibabel (independent of the SimpleITK reader under test)."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return str(path)


def smooth_volume(shape, seed=0, ct=False):
    """Positive-valued structured volume (or HU-like for ct=True), int16."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, s) for s in shape], indexing="ij")
    v = 200 + 100 * np.sin(grids[0]) * np.cos(grids[1]) + 50 * grids[2] + rng.normal(0, 5, shape)
    if ct:
        v = v - 1100
    return v.astype(np.int16)


def test_ball_model_marks_ball_around_last_include():
    m = BallModel(radius=8.0)
    emb = m.encode(torch.zeros(1, 1, 128, 128, 128))
    logits = m.decode(emb, torch.tensor([[[10.0, 20.0, 30.0], [60.0, 64.0, 70.0]]]), torch.tensor([[1, 1]]), torch.zeros(1, 1, 32, 32, 32))
    up = torch.nn.functional.interpolate(logits, size=(128,) * 3, mode="trilinear", align_corners=False)[0, 0] > 0
    assert up[60, 64, 70] and not up[10, 20, 30]
    idx = torch.nonzero(up).float()
    assert ((idx - torch.tensor([60.0, 64.0, 70.0])).norm(dim=1).max() < 8.0 + 2.0)
