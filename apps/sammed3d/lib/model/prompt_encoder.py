"""SAM-Med3D prompt encoder: points and a low-resolution mask -> sparse and dense embeddings."""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .common import LayerNorm3d
from .patch_ops import conv3d_patchify, layer_norm_channels_last


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding with a fixed Gaussian matrix (3, num_pos_feats)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 3) in [0, 1] -> (..., 3 * num_pos_feats) as [sin, cos, sin] (sin repeated, as released)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: Sequence[int]) -> torch.Tensor:
        """Dense encoding of an (X, Y, Z) grid -> (C, X, Y, Z).

        The grid vector of cell (i, j, k) is ((j + .5)/Y... ) with the first two axes swapped,
        as the released code does (quirk 3); points use tensor-axis order. Kept as released.
        """
        x, y, z = size
        grid = torch.ones((x, y, z), device=self.positional_encoding_gaussian_matrix.device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / y
        x_embed = (grid.cumsum(dim=1) - 0.5) / x
        z_embed = (grid.cumsum(dim=2) - 0.5) / z
        pe = self._pe_encoding(torch.stack([x_embed, y_embed, z_embed], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Points (B, N, 3) in voxels of the crop -> (B, N, C)."""
        c = coords_input.float()
        # Python scalars, not a tensor: no host-to-device copy (keeps the call CUDA-graph capturable).
        coords = torch.stack([c[..., 0] / image_size[1], c[..., 1] / image_size[0], c[..., 2] / image_size[2]], dim=-1)
        return self._pe_encoding(coords)


class PromptEncoder3D(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int, int],
        input_image_size: Tuple[int, int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.num_point_embeddings = 2  # negative, positive (no box corners in the released model)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, 8, 8, 8) positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 3) points, (B, N) labels -> (B, N [+1], C)."""
        points = points + 0.5  # centre of the voxel
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        # Label -1: positional part dropped, not-a-point embedding only; 0 / 1 add neg / pos embeddings.
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = emb + (lab == 0) * self.point_embeddings[0].weight + (lab == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32, 32) logits -> (B, C, 8, 8, 8): mask_downscaling, with its k=s=2 convs as matmuls."""
        conv1, ln1, act1, conv2, ln2, act2, conv3 = self.mask_downscaling
        x = masks.permute(0, 2, 3, 4, 1)
        x = act1(layer_norm_channels_last(conv3d_patchify(x, conv1), ln1))
        x = act2(layer_norm_channels_last(conv3d_patchify(x, conv2), ln2))
        x = nn.functional.linear(x, conv3.weight.flatten(1), conv3.bias)  # the 1x1x1 conv
        return x.permute(0, 4, 1, 2, 3)

    def forward(
        self,
        points: Optional[Tuple[torch.Tensor, torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> sparse (B, N, C) and dense (B, C, 8, 8, 8) embeddings. ``masks`` is (B, 1, 32, 32, 32)."""
        if boxes is not None:
            raise ValueError("box prompts are not supported: the released SAM-Med3D weights have no box embeddings")
        if points is not None:
            bs = points[0].shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
