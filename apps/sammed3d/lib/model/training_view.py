"""Model views for the training click chain (lib.training.recipe.click_losses): the reference view
on a loss grid, and a faster, numerically equivalent view of Sam3D's decoder.

``training_view(model, loss_size, fast)`` picks one. Any model with the Sam3D interface (encode,
decode, upsample_logits, image_size) gets the reference view: ``model.decode`` and, on a coarser
loss grid, trilinear upsampling plus the click mapping of ``LossGridView``. Only a model whose decode
*is* ``Sam3D.decode`` over this package's prompt encoder and mask decoder gets ``TrainingView``,
because it re-implements that decoder from its parameters.

click_losses calls ``view.decode(emb, coords, labels, low)`` and ``view.upsample_logits(low)`` 11
times per step, with backward through all of them. ``Sam3D.decode`` is written for one inference
click; in training on a CPU most of the chain's time went to memory shuffling, not arithmetic:

* the decoder's two k=s=2 transposed convolutions were un-patchified to spatial order with 24-48
  channels per voxel (permute copies of 1.5 M floats, forward and backward);
* trilinear upsampling of the logits to the loss grid: PyTorch's CPU ``upsample_trilinear3d_backward``
  is a scalar scatter loop (about 12 % of a step);
* the 4 multimask hypernetwork products (only the single-mask output is trained), the IoU head
  (never in the loss), NCDHW <-> token-major copies of the image embedding.

TrainingView computes the same function with the same parameters:

* the upscaling runs in *patch order* -- token (X, Y, Z), first kernel offset, second kernel offset,
  channel -- where LayerNorm, GELU and the hypernetwork product are per voxel anyway; only the final
  single-channel logits are permuted to spatial order (24x less data moved);
* trilinear upsampling (align_corners False) is separable: three small matrix products with the
  1-D interpolation matrices PyTorch's kernel uses (same weights, same clamping at the borders), whose
  backward is three more matrix products;
* only mask 0 is multiplied out; the other hypernetwork MLPs still get exact zero gradients (as the
  slice of the original gives them), so AdamW's weight decay treats them exactly as before;
* the image embedding and the dense positional encoding are fed channels-last, so the transformer's
  flatten/permute is a view.

Results equal ``Sam3D.decode`` + ``F.interpolate`` up to float summation order (tests compare the
losses, logits and gradients of a whole step).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sam3d import Sam3D


def interp_matrix(n_in: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_out, n_in) 1-D linear interpolation matrix of F.interpolate(mode='*linear', align_corners=False).

    Same source index as PyTorch's ``area_pixel_compute_source_index``: (dst + 0.5) * in / out - 0.5,
    negative values clamped to 0, the upper neighbour clamped to n_in - 1.
    """
    scale = n_in / n_out
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    l1 = src - i0.double()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), i0] += 1.0 - l1
    m[torch.arange(n_out), i1] += l1
    return m.to(device=device, dtype=dtype)


_MATS: Dict[Tuple[int, int, str], torch.Tensor] = {}


def _mat(n_in: int, n_out: int, device) -> torch.Tensor:
    key = (n_in, n_out, str(device))
    if key not in _MATS:
        _MATS[key] = interp_matrix(n_in, n_out, device)
    return _MATS[key]


def upsample_trilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, D, H, W) -> (B, 1, size, size, size): F.interpolate(trilinear, align_corners=False) as
    three 1-D interpolations (matrix products; cheap backward)."""
    b, c, d, h, w = x.shape
    if (d, h, w) == (size, size, size):
        return x.float()
    x = x.float().reshape(b * c, d, h * w)
    x = _mat(d, size, x.device) @ x  # (BC, S, H*W)
    x = _mat(h, size, x.device) @ x.reshape(b * c * size, h, w)  # (BC*S, S, W)
    x = x @ _mat(w, size, x.device).t()  # (BC*S, S, S)
    return x.reshape(b, c, size, size, size)


class _ZeroGradTie(torch.autograd.Function):
    """Identity on the first input; the others get exact zero gradients (never None), as the
    unused multimask columns of the original's ``masks[:, 0:1]`` slice give their MLPs."""

    @staticmethod
    def forward(ctx, x, *others):
        ctx.shapes = [(o.shape, o.dtype, o.device) for o in others]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad,) + tuple(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.shapes)


class _Contract(torch.autograd.Function):
    """(B, N, C) @ (B, C) -> (B, N, 1) as per-item matrix-vector products (batched matmul with one
    output column, and its outer-product backward, are several times slower on CPU). Under autocast
    it computes in the autocast dtype, as the matmul it replaces would."""

    @staticmethod
    def forward(ctx, feats, h):
        dev = feats.device.type
        dt = _autocast_dtype(dev) if _autocast_on(dev) else torch.promote_types(feats.dtype, h.dtype)
        ctx.dtypes = (feats.dtype, h.dtype)
        feats, h = feats.to(dt), h.to(dt)
        ctx.save_for_backward(feats, h)
        return torch.stack([feats[i] @ h[i] for i in range(feats.shape[0])])[..., None]

    @staticmethod
    def backward(ctx, grad):
        feats, h = ctx.saved_tensors
        g = grad[..., 0].to(feats.dtype)
        grad_feats = grad_h = None
        if ctx.needs_input_grad[0]:
            grad_feats = (g[..., None] * h[:, None, :]).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_h = torch.stack([feats[i].t() @ g[i] for i in range(feats.shape[0])]).to(ctx.dtypes[1])
        return grad_feats, grad_h


class _UpscaleTail(torch.autograd.Function):
    """m = GELU(x1 @ W2 + b2) @ h per voxel: the decoder's second transposed conv, its GELU and the
    single-mask hypernetwork product, in row chunks that stay in the CPU cache.

    x1 (B, M, C1); W2 (C1, K*C2) columns (kernel offset, channel); b2 (K*C2,); h (B, C2) -> (B, M*K, 1).
    Autograd would stream 4 tensors of B*M*K*C2 floats (1.6-3.1 M) through memory forward and 4 back;
    here each chunk's pre-activation is written once and re-read once.
    """

    @staticmethod
    def forward(ctx, x1, w2, b2, h, approximate: str, rows: int):
        bsz, m, _ = x1.shape
        kc, c2 = w2.shape[1], h.shape[1]
        k = kc // c2
        z_all = x1.new_empty(bsz, m, kc)
        out = x1.new_empty(bsz, m * k)
        for b in range(bsz):
            for r0 in range(0, m, rows):
                r1 = min(r0 + rows, m)
                z = torch.addmm(b2, x1[b, r0:r1], w2, out=z_all[b, r0:r1])
                g = F.gelu(z, approximate=approximate).view(-1, c2)
                torch.mv(g, h[b], out=out[b, r0 * k:r1 * k])
        ctx.save_for_backward(x1, w2, h, z_all)
        ctx.approximate, ctx.rows = approximate, rows
        return out[..., None]

    @staticmethod
    def backward(ctx, grad):
        x1, w2, h, z_all = ctx.saved_tensors
        bsz, m, _ = x1.shape
        kc, c2 = w2.shape[1], h.shape[1]
        k, rows = kc // c2, ctx.rows
        grad = grad[..., 0].contiguous()
        gx1 = torch.empty_like(x1) if ctx.needs_input_grad[0] else None
        gw2 = torch.zeros_like(w2) if ctx.needs_input_grad[1] else None
        gb2 = w2.new_zeros(kc) if ctx.needs_input_grad[2] else None
        gh = torch.zeros_like(h) if ctx.needs_input_grad[3] else None
        for b in range(bsz):
            for r0 in range(0, m, rows):
                r1 = min(r0 + rows, m)
                z = z_all[b, r0:r1].view(-1, c2)
                gm = grad[b, r0 * k:r1 * k]
                if gh is not None:
                    gh[b].addmv_(F.gelu(z, approximate=ctx.approximate).t(), gm)
                gz = torch.ops.aten.gelu_backward(gm[:, None] * h[b], z, approximate=ctx.approximate).view(r1 - r0, kc)
                if gw2 is not None:
                    gw2.addmm_(x1[b, r0:r1].t(), gz)
                if gb2 is not None:
                    gb2.add_(gz.sum(0))
                if gx1 is not None:
                    torch.mm(gz, w2.t(), out=gx1[b, r0:r1])
        return gx1, gw2, gb2, gh, None, None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # older torch
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _deconv_weight(conv) -> torch.Tensor:
    """ConvTranspose3d weight (Cin, Cout, k, k, k) -> (Cin, k^3 * Cout), columns ordered (kd, kh, kw, cout)."""
    cin, cout = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 4, 1).reshape(cin, -1)


class LossGridView:
    """The reference view on a coarser loss grid (loss_size^3 instead of the crop's image_size^3),
    through the model's own decode: any model with the Sam3D interface.

    upsample_logits goes to loss_size; clicks drawn on that grid are mapped to crop voxel
    coordinates (voxel centres) before the decoder sees them.
    """

    def __init__(self, model, loss_size: int, crop: Optional[int] = None):
        # `crop`: the training crop's edge when a fully convolutional model trains on crops
        # smaller than the image_size it serves (default: image_size)
        self.model, self.size = model, int(loss_size)
        self.scale = int(crop or model.image_size) / self.size

    def decode(self, emb, coords, labels, mask_input):
        if coords is not None and self.scale != 1:
            coords = coords * self.scale + (self.scale - 1) / 2
        return self.model.decode(emb, coords, labels, mask_input)

    def upsample_logits(self, low):
        return F.interpolate(low.float(), size=(self.size,) * 3, mode="trilinear", align_corners=False)


def has_sam3d_decoder(model) -> bool:
    """True when TrainingView computes exactly model.decode: Sam3D's decode over its own decoder parts."""
    return (isinstance(model, Sam3D) and type(model).decode is Sam3D.decode
            and isinstance(model.prompt_encoder, PromptEncoder3D) and isinstance(model.mask_decoder, MaskDecoder3D))


def training_view(model, loss_size: Optional[int] = None, fast: bool = True):
    """The view click_losses decodes through: TrainingView when ``fast`` and the model is a Sam3D
    (see has_sam3d_decoder); otherwise the model itself on its own grid, LossGridView on a coarser one."""
    size = int(loss_size or model.image_size)
    if fast and has_sam3d_decoder(model):
        return TrainingView(model, size)
    return model if size == model.image_size else LossGridView(model, size)


class TrainingView:
    """Sam3D's decode + upsampling to a loss grid of ``loss_size``^3, computed with less data movement.

    Clicks drawn on the loss grid are mapped to crop voxel coordinates (voxel centres) before the
    prompt encoder sees them, as LossGridView does (identity when loss_size == the crop size).
    """

    def __init__(self, model, loss_size: Optional[int] = None):
        self.model = model
        self.size = int(loss_size or model.image_size)
        self.scale = model.image_size / self.size
        self._pe = None
        self._emb = (None, None)

    # -- helpers --------------------------------------------------------------------------------
    def _dense_pe(self) -> torch.Tensor:
        """(1, C, X, Y, Z) channels-last; constant (a buffer's function), computed once per view."""
        if self._pe is None:
            with torch.no_grad():
                self._pe = self.model.prompt_encoder.get_dense_pe().contiguous(memory_format=torch.channels_last_3d)
        return self._pe

    def _channels_last(self, emb: torch.Tensor) -> torch.Tensor:
        if self._emb[0] is not emb:  # the same embedding is decoded 11 times per step
            self._emb = (emb, emb.contiguous(memory_format=torch.channels_last_3d))
        return self._emb[1]

    # -- the click_losses interface --------------------------------------------------------------
    def upsample_logits(self, low: torch.Tensor) -> torch.Tensor:
        return upsample_trilinear(low, self.size)

    def decode(self, emb: torch.Tensor, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
               mask_input: Optional[torch.Tensor]) -> torch.Tensor:
        """Same as Sam3D.decode (single-mask output): -> (B, 1, 4X, 4Y, 4Z) low-resolution logits."""
        model = self.model
        if coords is not None and self.scale != 1:
            coords = coords * self.scale + (self.scale - 1) / 2
        points = None if coords is None else (coords.to(emb.device), labels.to(emb.device))
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=mask_input)
        md = model.mask_decoder
        b = emb.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((out_tokens, sparse.to(out_tokens.dtype)), dim=1)
        src = self._channels_last(emb)
        if dense.shape[0] != b:
            dense = dense.expand(b, -1, -1, -1, -1)
        src = src + dense  # channels-last: the transformer's flatten(2).permute is a view
        _, c, x, y, z = src.shape
        hs, keys = md.transformer(src, self._dense_pe(), tokens)  # keys (B, XYZ, C) token-major
        mask_tokens_out = hs[:, 1: 1 + md.num_mask_tokens, :]
        hyper = [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)]
        deconv1, ln, act1, deconv2, act2 = md.output_upscaling
        x1 = keys @ _deconv_weight(deconv1)  # (B, XYZ, k1^3 * C1)
        x1 = x1.reshape(b, -1, deconv1.out_channels) + deconv1.bias
        x1 = act1(F.layer_norm(x1, (x1.shape[-1],), ln.weight, ln.bias, ln.eps))  # (B, XYZ k1^3, C1)
        if x1.device.type == "cpu" and not _autocast_on("cpu"):  # the last stage in cache-sized chunks
            kc = deconv2.out_channels * deconv2.kernel_size[0] ** 3
            masks = _UpscaleTail.apply(x1, _deconv_weight(deconv2), deconv2.bias.repeat(kc // deconv2.out_channels),
                                       hyper[0], act2.approximate, max(16, (1 << 16) // kc))
        else:
            feats = (x1 @ _deconv_weight(deconv2)).reshape(b, -1, deconv2.out_channels) + deconv2.bias
            masks = _Contract.apply(act2(feats), hyper[0])  # (B, N, 1): the single-mask output only
        # the unused multimask MLPs: exact zero gradients, as the original's slice gives them
        masks = _ZeroGradTie.apply(masks, *hyper[1:])
        return self._to_spatial(masks, b, (x, y, z))

    def _to_spatial(self, masks: torch.Tensor, b: int, grid) -> torch.Tensor:
        """(B, X*Y*Z*k1^3*k2^3, 1) in patch order -> (B, 1, k1 k2 X, k1 k2 Y, k1 k2 Z)."""
        deconv1, _, _, deconv2, _ = self.model.mask_decoder.output_upscaling
        k1, k2 = deconv1.kernel_size[0], deconv2.kernel_size[0]
        x, y, z = grid
        m = masks.reshape(b, x, y, z, k1, k1, k1, k2, k2, k2)
        # spatial index along each axis = (token * k1 + first offset) * k2 + second offset
        m = m.permute(0, 1, 4, 7, 2, 5, 8, 3, 6, 9)
        f = k1 * k2
        return m.reshape(b, 1, x * f, y * f, z * f)
