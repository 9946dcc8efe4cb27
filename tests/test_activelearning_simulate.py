"""The offline simulation's shortcuts stay faithful to the model and the report's arithmetic."""
import math

import torch

from lib.activelearning.simulate import decoder_head, decoder_trunk, labels_to_reach
from lib.model import build_sam_med3d

TINY = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
        "prompt_embed_dim": 48, "decoder_transformer": {"mlp_dim": 64, "num_heads": 2}}


def test_frozen_trunk_plus_head_equals_a_first_click_decode():
    torch.manual_seed(0)
    model = build_sam_med3d(TINY).eval()
    emb = torch.randn(2, 48, 8, 8, 8)
    coords = torch.tensor([[[40.0, 60.0, 70.0]], [[10.0, 100.0, 64.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        ref = model.decode(emb, coords, labels, torch.zeros(2, 1, 32, 32, 32))
        up, tok = decoder_trunk(model, emb, coords, labels)
        out = decoder_head(model, up, tok)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=1e-2)  # the trunk cache is fp16


def test_labels_to_reach_interpolates():
    assert labels_to_reach([2, 4, 6], [0.1, 0.2, 0.4], 0.3) == 5.0
    assert labels_to_reach([2, 4], [0.5, 0.6], 0.4) == 2.0
    assert math.isinf(labels_to_reach([2, 4], [0.1, 0.2], 0.3))
