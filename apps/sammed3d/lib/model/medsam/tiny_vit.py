"""TinyViT image encoder of LiteMedSAM (MobileSAM's TinyViT-5M at 256x256 input).

Architecture as in the released `lite_medsam.pth` (its key names and shapes are the contract):

    input (B, 3, 256, 256) in [0, 1]
    patch_embed: two 1x1 Conv2d_BN (3 -> 32 -> 64) with GELU, stride 1  -> (B, 64, 256, 256)
    layers.0:    2 MBConv blocks at 256x256, dim 64; PatchMerging (stride 2) -> (B, 128*128, 128)
    layers.1:    2 TinyViT blocks at 128x128, dim 128, 4 heads, window 7; merge (stride 2) -> 64x64, 160
    layers.2:    6 TinyViT blocks at 64x64, dim 160, 5 heads, window 14; merge (stride 1) -> 64x64, 320
    layers.3:    2 TinyViT blocks at 64x64, dim 320, 10 heads, window 7
    neck:        1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv, LayerNorm2d   -> (B, 256, 64, 64)

LiteMedSAM differs from MobileSAM only in the stride-1, 1x1 patch embedding (a 256 input must give
the decoder's 64x64 grid) and in the last merge being stride 1 (as in MobileSAM).
"""
from __future__ import annotations

import itertools
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv2d_BN, LayerNorm2d


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, embed_dim, H, W): 1x1 Conv2d_BN, GELU, 1x1 Conv2d_BN (keys seq.0, seq.2)."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        n = embed_dim
        self.seq = nn.Sequential(Conv2d_BN(in_chans, n // 2, 1, 1, 0), nn.GELU(), Conv2d_BN(n // 2, n, 1, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. (B, C, H, W) kept."""

    def __init__(self, chans: int, expand_ratio: float):
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, ks=1)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', out_dim); stride 2, or 1 when out_dim is 320."""

    def __init__(self, input_resolution: Tuple[int, int], dim: int, out_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Windowed multi-head attention with a learned bias per (|dy|, |dx|) offset (LeViT style).

    (B', N, C) -> (B', N, C) where N = window*window. Keys: norm, qkv, proj, attention_biases
    (num_heads, number of distinct offsets).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: Tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.d = key_dim  # attn_ratio 1
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.dh))


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded to whole windows), depthwise 3x3 local conv, MLP.

    (B, H*W, C) -> (B, H*W, C) at `input_resolution` (H, W).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, ks=3, stride=1, pad=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        res = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            x = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
            x = x.view(b, n, c)
        x = res + x
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class _Mlp(nn.Module):
    """Pre-norm MLP of a TinyViT block (keys norm, fc1, fc2): (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then PatchMerging. (B, C, H, W) -> (B, H'*W', out_dim)."""

    def __init__(self, dim: int, input_resolution, depth: int, out_dim: int, expand_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then PatchMerging unless last. (B, H*W, C) -> (B, H'*W', C')."""

    def __init__(self, dim: int, input_resolution, depth: int, num_heads: int, window_size: int,
                 out_dim: int, downsample: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """(B, 3, img_size, img_size) in [0, 1] -> image embedding (B, 256, img_size/4, img_size/4)."""

    def __init__(self, img_size: int = 256, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, out_chans: int = 256):
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        n = len(depths)
        for i in range(n):
            scale = 2 ** (i - 1 if i == n - 1 else i)  # the last merge keeps the resolution
            res = (img_size // scale, img_size // scale)
            out_dim = embed_dims[min(i + 1, n - 1)]
            if i == 0:
                self.layers.append(ConvLayer(embed_dims[0], res, depths[0], out_dim, mbconv_expand_ratio))
            else:
                self.layers.append(BasicLayer(embed_dims[i], res, depths[i], num_heads[i], window_sizes[i],
                                              out_dim, downsample=i < n - 1, mlp_ratio=mlp_ratio))
        self.grid = img_size // 2 ** (n - 2)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT expects (B, 3, {self.img_size}, {self.img_size}), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        return self.neck(x)

    @torch.no_grad()
    def fuse_batchnorm(self) -> "TinyViT":
        """Replace every Conv2d_BN by an equivalent biased Conv2d (inference only; irreversible).

        Call after loading the weights: the fused module no longer has the `c`/`bn` keys.
        """
        for name, module in list(self.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, Conv2d_BN):
                    setattr(module, child_name, child.fuse())
        return self
