"""The SAM-Med3D model: encoder + prompt encoder + decoder, with the encode/decode split."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """Holds the three parts under the public code's names so the state dict matches the release.

    ``encode`` is the expensive step (once per 128^3 crop), ``decode`` the cheap one (per click),
    as segment-anything's SamPredictor splits set_image / predict. Neither disables gradients.
    """

    def __init__(self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D,
                 mask_decoder: MaskDecoder3D, config: Optional[dict] = None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = dict(config or {})

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.prompt_encoder.no_mask_embed.weight.device

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128, 128) z-normalised crop -> (B, C, 8, 8, 8) image embedding."""
        return self.image_encoder(image)

    def decode(
        self,
        image_embedding: torch.Tensor,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        mask_input: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """One interaction step -> low-resolution logits (B, 1, 32, 32, 32).

        point_coords (B, N, 3): voxel indices in the crop, tensor-axis order (axes 2, 3, 4);
        point_labels (B, N) int64, 1 include / 0 exclude; both None for a mask-only step.
        mask_input (B, 1, 32, 32, 32): previous low-res logits, unthresholded (zeros on the first click).
        """
        points = None
        if point_coords is not None:
            points = (point_coords.to(image_embedding.device), point_labels.to(image_embedding.device))
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
        logits, _ = self.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits

    def upsample_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32, 32) -> (B, 1, 128, 128, 128) trilinear (align_corners False); mask = > 0."""
        size = (self.image_size,) * 3
        return F.interpolate(low_res_logits.float(), size=size, mode="trilinear", align_corners=False)
