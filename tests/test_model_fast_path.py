"""The fast encoder path equals the reference path on random inputs and random weights (fp32)."""
import pytest
import torch

from lib.model import build_sam_med3d
from lib.model.attention3d import Attention3D

TOL = 1e-4


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Random weights, larger than trained ones (~0.02) so every term matters, but not so large
    that the fp32 reference itself loses 1e-4 in a near one-hot softmax over 2,744 keys."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("padded", [None, 14, 10])
@pytest.mark.parametrize("qkv_bias,use_rel_pos", [(True, True), (False, True), (True, False)])
def test_attention_fast_equals_reference(seed, padded, qkv_bias, use_rel_pos):
    dim, heads, s = 32, 4, 8
    p = padded or s
    attn = Attention3D(dim, heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, input_size=p)
    _randomise(attn, seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(2, s, s, s, dim, generator=g)
    with torch.no_grad():
        padded_x = torch.nn.functional.pad(x, (0, 0, 0, p - s, 0, p - s, 0, p - s))
        ref = attn(padded_x)[:, :s, :s, :s]
        fast = attn.forward_fast(x, padded=padded)
    assert (fast - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("padded", [None, 14, 10])
@pytest.mark.parametrize("qkv_bias,use_rel_pos", [(True, True), (False, True), (True, False)])
def test_attention_fast_is_exact_in_float64(padded, qkv_bias, use_rel_pos):
    """In float64 the two paths agree to roundoff even with large weights: the math is exact."""
    dim, heads, s = 32, 4, 8
    p = padded or s
    attn = Attention3D(dim, heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, input_size=p).double()
    _randomise(attn, 7, scale=0.5)
    x = torch.randn(2, s, s, s, dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        ref = attn(torch.nn.functional.pad(x, (0, 0, 0, p - s, 0, p - s, 0, p - s)))[:, :s, :s, :s]
        fast = attn.forward_fast(x, padded=padded)
    assert ref.abs().max() > 1.0
    assert (fast - ref).abs().max().item() <= 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_fast_equals_reference(seed):
    model = build_sam_med3d({"encoder_embed_dim": 64, "encoder_depth": 3, "encoder_num_heads": 4,
                             "encoder_global_attn_indexes": [1], "prompt_embed_dim": 48})
    _randomise(model.image_encoder, seed)
    x = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(seed))
    enc = model.image_encoder
    with torch.no_grad():
        enc.fast = False
        ref = enc(x)
        enc.fast = True
        fast = enc(x)
    assert ref.abs().max() > 0.1  # a real signal, not two zero tensors
    assert (fast - ref).abs().max().item() <= TOL


def test_multi_window_grid_falls_back_to_reference():
    """A grid larger than the window needs several windows: the fast flag must not change results."""
    model = build_sam_med3d({"image_size": 256, "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
                             "encoder_global_attn_indexes": [1], "window_size": 6, "prompt_embed_dim": 48})
    _randomise(model.image_encoder, 3)
    x = torch.randn(1, 1, 256, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.image_encoder.fast = False
        ref = model.image_encoder(x)
        model.image_encoder.fast = True
        fast = model.image_encoder(x)
    assert (fast - ref).abs().max().item() <= TOL
