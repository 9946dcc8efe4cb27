"""Small building blocks shared by the encoder, prompt encoder and decoder."""
from typing import Type

import torch
from torch import nn


class LayerNormChannels(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) tensor: (B, C, D, H, W) in SAM-Med3D,
    (B, C, H, W) in LiteMedSAM (SAM's LayerNorm2d), which share this module.

    Written out (biased variance, eps inside the sqrt) because the released weights were trained
    with exactly this form; ``nn.LayerNorm`` would need two permutes per call.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.dim() - 2)  # per channel, broadcast over the spatial axes
        return self.weight.view(shape) * x + self.bias.view(shape)


LayerNorm3d = LayerNormChannels  # the name SAM-Med3D's code uses


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between: (..., D) -> (..., D)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: (..., in) -> (..., out)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x
