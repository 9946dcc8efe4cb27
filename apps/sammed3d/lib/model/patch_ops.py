"""Kernel-equals-stride 3D convolutions computed as matrix products, channels-last.

A Conv3d or ConvTranspose3d whose kernel equals its stride touches each voxel once, so it is a
reshape plus one matmul. PyTorch's CPU path runs these small 3D (de)convolutions through slow
im2col kernels (tens of ms per click here); the matmul form gives the same numbers up to float
summation order and keeps using the modules' own parameters (state dict unchanged, gradients flow).
"""
import torch
import torch.nn.functional as F
from torch import nn


def conv3d_patchify(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """x (B, D, H, W, Cin) channels-last -> (B, D/k, H/k, W/k, Cout) for kernel == stride == k."""
    k = conv.kernel_size[0]
    b, d, h, w, cin = x.shape
    x = x.reshape(b, d // k, k, h // k, k, w // k, k, cin).permute(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, d // k, h // k, w // k, cin * k**3)
    return F.linear(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def conv_transpose3d_unpatchify(x: torch.Tensor, conv: nn.ConvTranspose3d) -> torch.Tensor:
    """x (B, D, H, W, Cin) channels-last -> (B, kD, kH, kW, Cout) for kernel == stride == k."""
    k = conv.kernel_size[0]
    b, d, h, w, cin = x.shape
    cout = conv.out_channels
    y = x.reshape(b, d * h * w, cin) @ conv.weight.reshape(cin, cout * k**3)  # weight (Cin, Cout, k, k, k)
    y = y.reshape(b, d, h, w, cout, k, k, k).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, d * k, h * k, w * k, cout)
    return y + conv.bias if conv.bias is not None else y


def layer_norm_channels_last(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """LayerNorm3d (biased variance over channels) applied to a channels-last tensor."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
