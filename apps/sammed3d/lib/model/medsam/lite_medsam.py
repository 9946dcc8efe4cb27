"""LiteMedSAM: TinyViT image encoder + SAM prompt encoder + SAM mask decoder (2D, box prompts).

    embedding = model.encode(image)           # (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64)
    logits, iou = model.decode(embedding, box) # box (B, 4) x0,y0,x1,y1 in 256-pixels -> (B, 1, 256, 256)

The encoder is the expensive part (about 1 s per slice on 2 CPU cores); the decoder is cheap, so
callers cache embeddings per slice and decode many boxes against them.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT

IMAGE_SIZE = 256  # model input side (pixels)
EMBED_GRID = 64  # image embedding side


class LiteMedSAM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViT(img_size=IMAGE_SIZE, in_chans=3, embed_dims=(64, 128, 160, 320),
                                     depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7))
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(EMBED_GRID, EMBED_GRID),
                                            input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(transformer_dim=256, num_multimask_outputs=3)
        self._dense_pe = None

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) float in [0, 1] -> (B, 256, 64, 64)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"LiteMedSAM.encode expects (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(image.shape)}")
        # channels-last: the CPU convolutions of the full-resolution stage 0 run about 15 % faster
        # (scripts/bench_medsam_encoder.py); the decoder gets the usual contiguous layout back
        return self.image_encoder(image.contiguous(memory_format=torch.channels_last)).contiguous()

    def dense_pe(self) -> torch.Tensor:
        """(1, 256, 64, 64) positional encoding of the grid (constant: computed once per device)."""
        pe = self._dense_pe
        if pe is None or pe.device != self.prompt_encoder.no_mask_embed.weight.device or self.training:
            pe = self.prompt_encoder.get_dense_pe()
            self._dense_pe = None if self.training else pe
        return pe

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """embedding (1 or B, 256, 64, 64), boxes (B, 4) -> logits (B, 1, 256, 256), iou (B, 1).

        Boxes are (x_min, y_min, x_max, y_max) in pixels of the 256x256 input (x = column).
        """
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=embedding.device)
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (B, 4) x0, y0, x1, y1, got {tuple(boxes.shape)}")
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        return self.mask_decoder(embedding, self.dense_pe(), sparse, dense, multimask_output=False)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256), (B, 4) -> low-resolution logits (B, 1, 256, 256) (the package's forward)."""
        return self.decode(self.encode(image), boxes)[0]
