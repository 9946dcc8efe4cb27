"""SAM-Med3D image encoder: a 3D ViT-B with windowed and global blocks and a conv neck."""
from typing import Sequence, Tuple

import torch
from torch import nn

from .attention3d import Attention3D
from .common import LayerNorm3d, MLPBlock
from .patch_ops import conv3d_patchify


def window_partition3d(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """(B, D, H, W, C) -> windows (B*nW, w, w, w, C), zero-padding the high end, and the padded size."""
    b, d, h, w, c = x.shape
    pd, ph, pw = ((window - n % window) % window for n in (d, h, w))
    if pd or ph or pw:
        x = nn.functional.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.view(b, dp // window, window, hp // window, window, wp // window, window, c)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, window, window, window, c)
    return windows, (dp, hp, wp)


def window_unpartition3d(windows: torch.Tensor, window: int, pad_dhw, dhw) -> torch.Tensor:
    """Inverse of window_partition3d, cropping the padding: -> (B, D, H, W, C)."""
    dp, hp, wp = pad_dhw
    d, h, w = dhw
    b = windows.shape[0] // ((dp // window) * (hp // window) * (wp // window))
    x = windows.view(b, dp // window, hp // window, wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, dp, hp, wp, -1)
    return x[:, :d, :h, :w, :].contiguous()


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, eps, use_rel_pos, window_size, grid_size) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention3D(dim, num_heads, qkv_bias, use_rel_pos, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """x (B, S, S, S, dim) -> same shape."""
        shortcut = x
        x = self.norm1(x)
        s = x.shape[1]
        if fast and (self.window_size == 0 or s <= self.window_size):
            # One window covers the grid (or global attention): the exact fast path applies.
            x = self.attn.forward_fast(x, padded=self.window_size if self.window_size > 0 else None)
        elif self.window_size > 0:
            d, h, w = x.shape[1:4]
            x, pad_dhw = window_partition3d(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition3d(x, self.window_size, pad_dhw, (d, h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """(B, C_in, D, H, W) -> (B, D/p, H/p, W/p, dim) by a strided Conv3d."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kernel == stride: a reshape and one matmul (see patch_ops), already channels-last.
        return conv3d_patchify(x.permute(0, 2, 3, 4, 1), self.proj)


class ImageEncoderViT3D(nn.Module):
    """(B, 1, 128, 128, 128) crop -> (B, out_chans, 8, 8, 8) image embedding (released sizes).

    ``fast`` selects the exact fast attention path (default); ``fast = False`` runs the public
    code's computation step for step, kept as the reference the fast path is tested against.
    """

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim)) if use_abs_pos else None
        self.blocks = nn.ModuleList(
            Block3D(
                embed_dim, num_heads, mlp_ratio, qkv_bias, eps, use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size, grid_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x, fast=self.fast)
        return self.neck(x.permute(0, 4, 1, 2, 3))
