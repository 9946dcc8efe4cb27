"""Small building blocks shared by the LiteMedSAM encoder and decoder.

Parameter names follow the released `lite_medsam.pth` exactly (module attribute names are part of
the state-dict contract: `c`/`bn` of Conv2d_BN, `weight`/`bias` of LayerNorm2d, `lin1`/`lin2`).
"""
from __future__ import annotations

from typing import Type

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d_BN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; keys `c.weight`, `bn.{weight,bias,running_*}`.

    (B, a, H, W) -> (B, b, H', W'). `fuse()` folds the batch norm into one biased Conv2d for
    inference (numerically equal up to float rounding).
    """

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                         groups=c.groups, bias=True)
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv.to(c.weight.device)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) (SAM's / detectron2's form, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer MLP of the two-way transformer: (..., C) -> (..., mlp_dim) -> (..., C)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (the decoder's hypernetworks and IoU head).

    Keys `layers.{0..n-1}.{weight,bias}`. (..., input_dim) -> (..., output_dim).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x
