"""Small building blocks shared by the LiteMedSAM encoder and decoder.

Parameter names follow the released `lite_medsam.pth` exactly (module attribute names are part of
the state-dict contract: `c`/`bn` of Conv2d_BN, `weight`/`bias` of LayerNorm2d, `lin1`/`lin2`).
"""
from __future__ import annotations

import torch
from torch import nn

# The two-way transformer's MLP blocks are SAM's, shared with the 3D model (same parameter names).
from ..common import MLP, MLPBlock  # noqa: F401  (re-exported for the decoder)
# SAM's LayerNorm2d (channel axis, eps 1e-6) is the same module as the 3D model's, on 4D input.
from ..common import LayerNormChannels as LayerNorm2d  # noqa: F401


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
