"""ClickUNet3D: a small convolutional promptable model with SAM-Med3D's encode/decode contract.

Why a CNN for the offline default: a ViT with 16^3 patches learns low-level image features slowly
from little data (default-v1 reached Dice 0.14 after 922 GPU steps), while a CNN's locality and
weight sharing learn edges and textures from a few volumes, and train on a 2-core CPU. The model
keeps the contract the session, trainer and scoring use (lib.session.runner), so it is served,
fine-tuned and scored exactly like SAM-Med3D:

    encode(image (B, 1, S, S, S))               -> embedding (B, C, S/4, S/4, S/4)   (once per crop)
    decode(embedding, coords (B, N, 3), labels (B, N), mask_input (B, 1, S/4, S/4, S/4) | None)
                                                -> low-res logits (B, 1, S/4, S/4, S/4) (per click)

The embedding lives on the logits grid (32^3 for a 128^3 crop, 6 mm cells at 1.5 mm), so the
decoder sees image features where it predicts. Clicks become dense maps on that grid (a narrow
and a wide Gaussian per polarity: where the click is, and how far away it is), and the previous
logits come in as a third kind of map; a small U-Net over (features, maps) reaches the whole crop
through its 8^3 level, so one click can fill a structure that spans the crop.

The three parts keep SAM-Med3D's names (image_encoder, prompt_encoder, mask_decoder) so the
trainer's part selection and the encoder fingerprint work unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .click_unet_config import resolve_click_unet_config
from .flood_region import FloodRegion
from .geodesic_maps import GeodesicMaps, GeodesicPrior, GeodesicSolves, PriorGrowth

INPUT_CLAMP = 10.0


def _norm(ch: int, groups: int) -> nn.Module:
    """groups > 0: GroupNorm; groups == 0: BatchNorm3d (see CLICK_UNET_CONFIG["norm"])."""
    return nn.GroupNorm(min(groups, ch), ch) if groups > 0 else nn.BatchNorm3d(ch)


class ConvBlock(nn.Module):
    """Conv3d(3) -> GroupNorm -> LeakyReLU, optionally strided."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = _norm(cout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.1)


class ResBlock(nn.Module):
    """Two 3^3 convolutions with an identity skip (same width and grid)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.a = ConvBlock(ch, ch, groups)
        self.conv = nn.Conv3d(ch, ch, 3, padding=1, bias=False)
        self.norm = _norm(ch, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.norm(self.conv(self.a(x))), 0.1)


class ImageEncoderCNN(nn.Module):
    """(B, 1, S, S, S) -> (B, embed_dim, S/4, S/4, S/4): a strided CNN with a feature pyramid
    folded back onto the S/4 grid (fine edges from S/4, context from S/8 and S/16)."""

    def __init__(self, widths: Sequence[int], embed_dim: int, groups: int):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = ConvBlock(1, w0, groups, stride=2)  # S/2
        self.down1 = ConvBlock(w0, w1, groups, stride=2)  # S/4
        self.res1 = ResBlock(w1, groups)
        self.down2 = ConvBlock(w1, w2, groups, stride=2)  # S/8
        self.res2 = ResBlock(w2, groups)
        self.down3 = ConvBlock(w2, w3, groups, stride=2)  # S/16
        self.res3 = ResBlock(w3, groups)
        self.lat1 = nn.Conv3d(w1, embed_dim, 1)
        self.lat2 = nn.Conv3d(w2, embed_dim, 1)
        self.lat3 = nn.Conv3d(w3, embed_dim, 1)
        self.out = nn.Conv3d(embed_dim, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The server z-scores a crop with the statistics of its voxels > 0: a CT crop with little
        # tissue above 0 HU puts air hundreds of units below zero (measured: -372), which blew up
        # activations and BatchNorm statistics in training. Ten units keep air, lung and fat apart.
        x = x.clamp(-INPUT_CLAMP, INPUT_CLAMP)
        f1 = self.res1(self.down1(self.stem(x)))
        f2 = self.res2(self.down2(f1))
        f3 = self.res3(self.down3(f2))
        up = lambda t: F.interpolate(t, size=f1.shape[2:], mode="trilinear", align_corners=False)  # noqa: E731
        return F.leaky_relu(self.out(self.lat1(f1) + up(self.lat2(f2)) + up(self.lat3(f3))), 0.1)


class ClickMaps(nn.Module):
    """Clicks and the previous logits -> dense prompt maps on the S/4 grid.

    Channels: for each sigma, max over include clicks of exp(-d^2 / 2 sigma^2), then the same for
    exclude clicks; last, the previous logits squashed to [-1, 1] (tanh(x / 4)). No parameters:
    what the maps mean is learned by the decoder.
    """

    def __init__(self, image_size: int, sigmas: Sequence[float]):
        super().__init__()
        self.image_size = int(image_size)
        self.grid = self.image_size // 4
        self.sigmas = [float(s) for s in sigmas]
        axis = torch.arange(self.grid, dtype=torch.float32)
        self.register_buffer("axis", axis, persistent=False)

    @property
    def num_channels(self) -> int:
        return 2 * len(self.sigmas) + 1

    def forward(self, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                mask_input: Optional[torch.Tensor], batch: int, grid: Optional[int] = None) -> torch.Tensor:
        """coords (B, N, 3) crop voxel indices (tensor-axis order), labels (B, N) 1/0 (other
        values, e.g. SAM's -1 padding, are ignored) -> (B, 2 * len(sigmas) + 1, g, g, g).

        `grid` (default: image_size / 4) lets the fully convolutional model train on smaller crops."""
        g = int(grid or self.grid)
        device = self.axis.device
        axis = torch.arange(g, dtype=torch.float32, device=device) if g != self.grid else self.axis
        maps = []
        if coords is None:
            maps = [torch.zeros((batch, 2 * len(self.sigmas), g, g, g), device=device)]
        else:
            # voxel index -> cell coordinate: cell c covers voxels [4c, 4c + 3], centre 4c + 1.5
            cells = (coords.to(device, torch.float32) - 1.5) / 4.0  # (B, N, 3)
            d2 = [(axis.view(1, 1, g) - cells[..., i:i + 1]) ** 2 for i in range(3)]  # (B, N, g) each
            dist2 = d2[0][..., :, None, None] + d2[1][..., None, :, None] + d2[2][..., None, None, :]  # (B,N,g,g,g)
            labels = labels.to(device)
            for sigma in self.sigmas:
                gauss = torch.exp(-dist2 / (2 * sigma * sigma))
                for polarity in (1, 0):
                    sel = (labels == polarity).to(gauss.dtype)[..., None, None, None]
                    maps.append((gauss * sel).amax(dim=1) if gauss.shape[1] else gauss.sum(dim=1))
            maps = [torch.stack(maps, dim=1)]
        prev = torch.zeros((batch, 1, g, g, g), device=device) if mask_input is None \
            else torch.tanh(mask_input.to(device, torch.float32) / 4.0)
        return torch.cat(maps + [prev], dim=1)


class MaskDecoderUNet(nn.Module):
    """(embedding, prompt maps) on the S/4 grid -> logits on the same grid, through a 3-level U-Net.

    Cost is kept off the S/4 grid (32^3 cells for a 128^3 crop), where a dense 3^3 convolution
    costs 27x more than on S/8: there the decoder only mixes channels (1^3) and runs one depthwise
    3^3 convolution; the spatial reasoning happens at S/8 and S/16 (about 0.8 GFLOP per click).
    """

    def __init__(self, embed_dim: int, prompt_channels: int, widths: Sequence[int], groups: int):
        super().__init__()
        d0, d1, d2 = widths
        self.inp = nn.Conv3d(embed_dim + prompt_channels, d0, 1)
        self.down1 = ConvBlock(d0, d1, groups, stride=2)
        self.down2 = ConvBlock(d1, d2, groups, stride=2)
        self.mid = ResBlock(d2, groups)
        self.fuse1 = nn.Conv3d(d2 + d1, d1, 1)
        self.up1 = ConvBlock(d1, d1, groups)
        self.fuse0 = nn.Conv3d(d1 + d0, d0, 1)
        self.smooth0 = nn.Conv3d(d0, d0, 3, padding=1, groups=d0)
        self.norm0 = _norm(d0, groups)
        self.head = nn.Conv3d(d0, 1, 1)

    def forward(self, embedding: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        x0 = F.leaky_relu(self.inp(torch.cat([embedding, prompts], dim=1)), 0.1)
        x1 = self.down1(x0)
        x2 = self.mid(self.down2(x1))
        up = lambda t, ref: F.interpolate(t, size=ref.shape[2:], mode="trilinear", align_corners=False)  # noqa: E731
        u1 = self.up1(self.fuse1(torch.cat([up(x2, x1), x1], 1)))
        u0 = self.fuse0(torch.cat([up(u1, x0), x0], 1))
        u0 = F.leaky_relu(self.norm0(self.smooth0(u0)), 0.1)
        return self.head(u0)


class ClickUNet3D(nn.Module):
    """The default model; same encode/decode/upsample_logits contract as lib.model.sam3d.Sam3D."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        size = int(config["image_size"])
        groups = int(config["groups"]) if config.get("norm", "batch") == "group" else 0
        self.image_encoder = ImageEncoderCNN(config["encoder_widths"], config["embed_dim"], groups)
        self.prompt_encoder = ClickMaps(size, config["click_sigmas"])
        taus = config.get("geodesic_taus") or []
        self.geodesic = GeodesicMaps(config.get("geodesic_gamma", 20.0), taus) if taus else None
        margin = int(config.get("prior_margin_cells", 0))
        grow = PriorGrowth(config["prior_grow_max"], config.get("prior_grow_slope", 1.0),
                           config.get("prior_grow_until_exclude", False),
                           config.get("prior_grow_cap", 0.0)) if config.get("prior_grow_max") else None
        flood = FloodRegion.from_config(config)
        self.prior = GeodesicPrior(config.get("prior_gamma", 50.0), margin, config.get("prior_clip", 6.0), grow,
                                   flood) if margin > 0 else None
        # prompt maps: click maps, then (geodesic only) the cell-mean intensity and the geodesic maps, so a
        # decoder trained without them is the leading input channels of one trained with them
        extra = 1 + self.geodesic.num_channels if self.geodesic is not None else 0
        self.mask_decoder = MaskDecoderUNet(config["embed_dim"], self.prompt_encoder.num_channels + extra,
                                            config["decoder_widths"], groups)
        self._size = size
        # False: decodes leave the learned residual out, as the model this one was fine-tuned from (its residual
        # zero) decodes; lib.model.segments switches it per request for segments the residual did not learn
        self.residual_on = True

    @property
    def image_size(self) -> int:
        return self._size

    def train(self, mode: bool = True) -> "ClickUNet3D":
        """A part whose parameters are all frozen stays in eval mode: its BatchNorm running
        statistics must not drift either (a frozen encoder's cached embeddings stay valid)."""
        super().train(mode)
        if mode:
            for part in (self.image_encoder, self.mask_decoder):
                params = list(part.parameters())
                if params and not any(p.requires_grad for p in params):
                    part.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.head.weight.device

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) z-normalised crop -> (B, embed_dim, S/4, S/4, S/4); with geodesic maps
        (B, embed_dim + 1, ...), the last channel the clamped intensity averaged over each cell."""
        feats = self.image_encoder(image)
        if self.geodesic is None:
            return feats
        cells = F.avg_pool3d(image.float().clamp(-INPUT_CLAMP, INPUT_CLAMP), 4)
        return torch.cat([feats, cells.to(feats.dtype)], dim=1)

    def encode_cells(self, image: torch.Tensor) -> torch.Tensor:
        """encode's layout with the encoder's features left at zero: all a decode needs while
        serves_prior_only (the cell-intensity channel), at a fraction of the cost."""
        cells = F.avg_pool3d(image.float().clamp(-INPUT_CLAMP, INPUT_CLAMP), 4)
        feats = cells.new_zeros((cells.shape[0], self.config["embed_dim"]) + cells.shape[2:])
        return torch.cat([feats, cells], dim=1)

    def serves_prior_only(self) -> bool:
        """Whether a decode is the prior alone (geodesic prior, zero output layer, no grad): then the encoder's
        features are never read, and encode_cells gives the same logits."""
        plain = not self.residual_on or self._decoder_is_zero()
        return self.prior is not None and self.geodesic is not None and plain

    def decode(self, image_embedding: torch.Tensor, point_coords: Optional[torch.Tensor],
               point_labels: Optional[torch.Tensor], mask_input: Optional[torch.Tensor]) -> torch.Tensor:
        """One interaction step -> low-res logits (B, 1, S/4, S/4, S/4); arguments as Sam3D.decode."""
        g = image_embedding.shape[-1]
        if mask_input is not None and mask_input.shape[-1] != g:
            # callers written for SAM-Med3D size the first (zero) mask input as 4x the embedding grid
            mask_input = F.interpolate(mask_input.float(), size=(g,) * 3, mode="area")
        feats = image_embedding
        if self.geodesic is not None:
            feats, cells = image_embedding[:, :-1], image_embedding[:, -1:]
            solves = GeodesicSolves(cells[:, 0].detach().float().cpu().numpy())  # shared by maps and prior
        if self.prior is not None and (not self.residual_on or self._decoder_is_zero()):
            # the residual decoder's output layer is all zeros (a model that serves its prior alone, as
            # default-v3/v4 ship): its output is exactly 0, so neither it nor its input maps are computed
            # (about half of a click's decode); training and fine-tuning (grad enabled) always run it
            logits = torch.zeros((g,) * 3, dtype=image_embedding.dtype, device=image_embedding.device)
            logits = logits.expand(image_embedding.shape[0], 1, g, g, g)
        else:
            prompts = self.prompt_encoder(point_coords, point_labels, mask_input, image_embedding.shape[0],
                                          image_embedding.shape[-1])
            if self.geodesic is not None:
                geo = self.geodesic(cells[:, 0], point_coords, point_labels, cell=4.0, solves=solves)
                prompts = torch.cat([prompts, cells.float(), geo], dim=1)
            logits = self.mask_decoder(feats, prompts.to(image_embedding.dtype))
        if self.prior is not None:
            logits = logits + self.prior(cells[:, 0], point_coords, point_labels, cell=4.0,
                                         solves=solves).to(logits.dtype)
        return logits

    def _decoder_is_zero(self) -> bool:
        head = self.mask_decoder.head
        return not torch.is_grad_enabled() and not bool(head.weight.any()) and \
            (head.bias is None or not bool(head.bias.any()))

    def upsample_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, S/4, S/4, S/4) -> (B, 1, S, S, S) trilinear (align_corners False), as Sam3D."""
        return F.interpolate(low_res_logits.float(), size=(self._size,) * 3, mode="trilinear", align_corners=False)


def build_click_unet(config: Optional[dict] = None) -> ClickUNet3D:
    return ClickUNet3D(resolve_click_unet_config(config))
