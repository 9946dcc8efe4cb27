"""Decomposed relative position terms of the 3D encoder, in the released (quirky) indexing.

For an S^3 grid and tables of length 2S-1, R*[i, j] = table*[i - j + S - 1]. The public code adds,
for query (qd, qh, qw) and key (kd, kh, kw), with Q the unscaled query:

    Q[qd,qh,qw]·Rd[qd,kw] + Q[qd,qh,kd]·Rh[qh,kw] + Q[qd,qh,kh]·Rw[kh,kw]

(a mis-port from 2D; the released weights depend on it, see the architecture notes, quirk 2).

Two implementations live here:
- ``add_decomposed_rel_pos``: the public code, line for line (the reference path);
- ``quirk_bias`` + ``padded_key_logsumexp``: the same numbers computed only for the real query rows,
  with all padded keys of a windowed block folded into one log-sum-exp (the fast path).
"""
from typing import Optional

import torch


def rel_pos_matrix(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Table (2*size-1, C) -> R (size, size, C) with R[i, j] = table[i - j + size - 1]."""
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(f"relative position table has {rel_pos.shape[0]} rows, expected {2 * size - 1} for size {size}")
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_d: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Reference path. attn (B, N, N) logits, q (B, N, C) unscaled, N = size^3 -> (B, N, N)."""
    rd = rel_pos_matrix(rel_pos_d, size)
    rh = rel_pos_matrix(rel_pos_h, size)
    rw = rel_pos_matrix(rel_pos_w, size)
    b, _, dim = q.shape
    r_q = q.reshape(b, size, size, size, dim)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, rd)
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, rh)
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, rw)
    attn = (
        attn.view(b, size, size, size, size, size, size)
        + rel_d[:, :, :, :, None, None]
        + rel_h[:, :, :, None, :, None]
        + rel_w[:, :, :, None, None, :]
    )
    return attn.view(b, size**3, size**3)


def quirk_terms(q_ext: torch.Tensor, rel_pos_d, rel_pos_h, rel_pos_w, real: int, padded: int):
    """The three rel-pos terms for the real query rows of a (possibly padded) cubic window.

    Args:
        q_ext: (N, S, S, P, C) unscaled queries Q[a, b, x] for real a, b < S and every x < P
            (rows x >= S are the padding tokens' query, i.e. the qkv bias).
        real: S, the real grid edge; padded: P >= S, the window edge the tables belong to.
    Returns:
        t1 (N, S, S, S, P): Q[a,b,c]·Rd[a,f];  t2 (N, S, S, P, P): Q[a,b,d]·Rh[b,f];
        t3 (N, S, S, P, P): Q[a,b,e]·Rw[e,f]  (f is the key's last index, d and e its first two).
    """
    rd = rel_pos_matrix(rel_pos_d, padded)[:real]
    rh = rel_pos_matrix(rel_pos_h, padded)[:real]
    rw = rel_pos_matrix(rel_pos_w, padded)
    t1 = torch.einsum("nabcx,afx->nabcf", q_ext[:, :, :, :real], rd)
    t2 = torch.einsum("nabdx,bfx->nabdf", q_ext, rh)
    t3 = torch.einsum("nabex,efx->nabef", q_ext, rw)
    return t1, t2, t3


def quirk_bias(t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor, real: int,
               last: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rel-pos bias between real queries and real keys: (N, S^3, S^3), or (N, S^3, S^3 + 1) with
    `last` (N, S^3) as the final column (the padded keys' log-sum-exp).

    Without autograd the sum is written straight into one contiguous tensor (the broadcast sum's
    own layout is permuted, and reshaping or concatenating it copied 12.6 MB per block): the same
    additions in the same order, so the same values.
    """
    s = real
    if torch.is_grad_enabled() and any(t.requires_grad for t in (t1, t2, t3)):
        bias = (
            t1[:, :, :, :, None, None, :s]
            + t2[:, :, :, None, :s, None, :s]
            + t3[:, :, :, None, None, :s, :s]
        ).reshape(t1.shape[0], s**3, s**3)
        return bias if last is None else torch.cat([bias, last[..., None]], dim=-1)
    t1, t2, t3 = (t.contiguous() for t in (t1, t2, t3))  # einsum's permuted outputs read slower
    out = t1.new_empty(t1.shape[0], s**3, s**3 + (last is not None))
    view = out[:, :, : s**3].unflatten(2, (s, s, s)).unflatten(1, (s, s, s))
    torch.add(t1[:, :, :, :, None, None, :s] + t2[:, :, :, None, :s, None, :s], t3[:, :, :, None, None, :s, :s], out=view)
    if last is not None:
        out[:, :, s**3] = last
    return out


def padded_key_logsumexp(t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor, real: int) -> torch.Tensor:
    """log Σ over padded keys p of exp(rel-pos term(q, p)), for each real query: (N, S^3).

    Padded keys all share one key and one value vector (the qkv bias), so their share of the
    softmax is exactly that of a single key whose logit is scale·q·k_bias plus this log-sum-exp.
    The sum over the P^3 - S^3 padded keys separates: term 2 depends on (d, f), term 3 on (e, f),
    so for each f the (d, e) sum is a product of two 1D sums; the real (d, e < S, f < S) block is
    excluded without subtraction: pad(d or e) = pad_d·all_e + real_d·pad_e.
    """
    s = real
    l2_all = torch.logsumexp(t2, dim=3)  # (N, S, S, P) over d
    l2_real = torch.logsumexp(t2[:, :, :, :s], dim=3)
    l2_pad = torch.logsumexp(t2[:, :, :, s:], dim=3)
    l3_all = torch.logsumexp(t3, dim=3)  # over e
    l3_pad = torch.logsumexp(t3[:, :, :, s:], dim=3)
    mass_real_f = torch.logaddexp(l2_pad + l3_all, l2_real + l3_pad)[..., :s]  # f < S: (d, e) not both real
    mass_pad_f = (l2_all + l3_all)[..., s:]  # f >= S: every (d, e) is padding
    log_mass = torch.cat([mass_real_f, mass_pad_f], dim=-1)  # (N, S, S, P)
    lse = torch.logsumexp(t1 + log_mass[:, :, :, None, :], dim=-1)  # (N, S, S, S)
    return lse.reshape(t1.shape[0], s**3)
