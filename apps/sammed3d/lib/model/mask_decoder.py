"""SAM-Med3D mask decoder: tokens + image embedding -> low-resolution mask logits."""
from typing import Tuple

import torch
from torch import nn

from .common import MLP, LayerNorm3d
from .patch_ops import conv_transpose3d_unpatchify, layer_norm_channels_last
from .transformer import TwoWayTransformer3D


class MaskDecoder3D(nn.Module):
    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer3D, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> masks (B, 1 or 3, 32, 32, 32) logits and IoU predictions (B, 1 or 3).

        The multimask outputs and the IoU head were never supervised in training: callers use the
        single-mask output.
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)
        src = image_embeddings
        if src.shape[0] != tokens.shape[0]:
            src = torch.repeat_interleave(src, tokens.shape[0], dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe
        if pos_src.shape[0] != tokens.shape[0]:
            pos_src = torch.repeat_interleave(pos_src, tokens.shape[0], dim=0)
        b, c, x, y, z = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self._upscale(src.reshape(b, x, y, z, c))  # (B, 4X, 4Y, 4Z, C/8) channels-last
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = (upscaled.reshape(b, -1, upscaled.shape[-1]) @ hyper_in.transpose(1, 2)).transpose(1, 2)
        return masks.reshape(b, -1, 4 * x, 4 * y, 4 * z), self.iou_prediction_head(iou_token_out)

    def _upscale(self, src: torch.Tensor) -> torch.Tensor:
        """output_upscaling on channels-last (B, X, Y, Z, C), its k=s=2 transposed convs as matmuls."""
        deconv1, ln, act1, deconv2, act2 = self.output_upscaling
        x = act1(layer_norm_channels_last(conv_transpose3d_unpatchify(src, deconv1), ln))
        return act2(conv_transpose3d_unpatchify(x, deconv2))
