"""Multi-head self-attention of the 3D encoder, with the reference path and an exact fast path."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rel_pos import add_decomposed_rel_pos, padded_key_logsumexp, quirk_bias, quirk_terms


class Attention3D(nn.Module):
    """Attention over a cubic token grid with decomposed relative positions.

    ``input_size`` is the edge of the grid the rel-pos tables belong to: the window (14) in
    windowed blocks, the token grid (8) in global blocks.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, input_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.input_size = input_size
        if use_rel_pos:
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference path, as the public code: x (B, S, S, S, dim) -> (B, S, S, S, dim)."""
        b, d, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, d * h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, d * h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, d)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.num_heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)
        return self.proj(x)

    def forward_fast(self, x: torch.Tensor, padded: Optional[int] = None) -> torch.Tensor:
        """Exact fast path: x (B, S, S, S, dim) real tokens -> (B, S, S, S, dim).

        ``padded`` = P > S means the public code would zero-pad the normed tokens to P^3 and attend
        over all of them (windowed block, one window). Only the S^3 real query rows survive its crop,
        and every padded token's q, k and v equal the qkv bias, so we project only real tokens and
        fold the P^3 - S^3 padded keys into one extra key (see rel_pos.padded_key_logsumexp).
        Attention itself runs in torch's fused scaled_dot_product_attention with the rel-pos bias.
        """
        b, s, _, _, dim = x.shape
        n_tok, nh, hd = s**3, self.num_heads, self.head_dim
        p = padded or s
        qkv = self.qkv(x).reshape(b, n_tok, 3, nh, hd).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
        q, k, v = qkv.unbind(0)
        extra_k = extra_v = None
        if p > s:
            bias = self.qkv.bias if self.qkv.bias is not None else x.new_zeros(3 * dim)
            qb, kb, vb = bias.reshape(3, nh, hd).unbind(0)
            extra_k = kb.to(k.dtype)[None, :, None, :].expand(b, nh, 1, hd)
            extra_v = vb.to(v.dtype)[None, :, None, :].expand(b, nh, 1, hd)
        attn_bias = None
        if self.use_rel_pos:
            # Rel-pos terms in at least fp32 even under autocast: they feed a log-sum-exp.
            acc = torch.promote_types(q.dtype, torch.float32)
            q_acc = q.to(acc).reshape(b * nh, s, s, s, hd)
            if p > s:
                qb_acc = qb.to(acc)[None, :, None, None, None, :].expand(b, nh, s, s, p - s, hd)
                q_acc = torch.cat([q_acc, qb_acc.reshape(b * nh, s, s, p - s, hd)], dim=3)
            tables = (self.rel_pos_d.to(acc), self.rel_pos_h.to(acc), self.rel_pos_w.to(acc))
            t1, t2, t3 = quirk_terms(q_acc, *tables, s, p)
            lse = padded_key_logsumexp(t1, t2, t3, s) if p > s else None
            attn_bias = quirk_bias(t1, t2, t3, s, lse)  # the padded keys' lse as the last column
            attn_bias = attn_bias.reshape(b, nh, n_tok, -1).to(q.dtype)
        elif p > s:
            # Without rel-pos every padded key has the same logit: log(count) accounts for all of them.
            attn_bias = q.new_zeros(b, nh, n_tok, n_tok + 1)
            attn_bias[..., -1] = math.log(p**3 - s**3)
        if extra_k is not None:
            k = torch.cat([k, extra_k], dim=2)
            v = torch.cat([v, extra_v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(b, s, s, s, dim)
        return self.proj(out)
