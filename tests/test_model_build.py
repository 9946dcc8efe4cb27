"""The released configuration matches the manifest; configs are validated."""
import os

import pytest
import torch

from lib.model import RELEASED_NUM_PARAMETERS, ConfigError, build_sam_med3d, count_parameters


@pytest.fixture(scope="module")
def released():
    return build_sam_med3d(None)


def test_released_parameter_count(released):
    assert count_parameters(released) == RELEASED_NUM_PARAMETERS == 100_509_232


def test_released_state_dict_equals_manifest(released, shared_dir):
    path = os.path.join(shared_dir, "reference", "sammed3d_state_dict_manifest.tsv")
    rows = [line.split("\t") for line in open(path).read().splitlines() if line.strip()]
    sd = released.state_dict()
    assert len(rows) == len(sd) == 324
    for (name, tensor), (m_name, m_shape, m_dtype) in zip(sd.items(), rows):
        assert name == m_name
        assert str(tuple(tensor.shape)) == m_shape, name
        assert str(tensor.dtype).replace("torch.", "") == m_dtype, name


def test_gaussian_matrix_is_persistent(released):
    assert "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in released.state_dict()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"encoder_embed_dim": 100, "encoder_num_heads": 3}, "divisible by encoder_num_heads"),
        ({"encoder_depth": 4, "encoder_global_attn_indexes": [1, 7]}, "outside the encoder"),
        ({"prompt_embed_dim": 100}, "divisible by 3"),
        ({"prompt_embed_dim": 60}, "divisible by 8"),
        ({"image_size": 120}, "multiple of vit_patch_size"),
        ({"encoder_depth": 0}, "positive integer"),
        ({"encoder_width": 96}, "unknown model config keys"),
        ({"decoder_transformer": {"heads": 8}}, "unknown decoder_transformer keys"),
        ({"mask_in_chans": 6}, "divisible by 4"),
        ({"window_size": -1}, "window_size"),
        ("vit_b", "must be a dict"),
    ],
)
def test_invalid_configs_get_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_sam_med3d(bad)


def test_partial_config_builds_reduced_model():
    model = build_sam_med3d({"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2,
                             "encoder_global_attn_indexes": [1], "prompt_embed_dim": 48})
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 1, 128, 128, 128))
        logits = model.decode(emb, torch.tensor([[[64.0, 64.0, 64.0]]]), torch.tensor([[1]]), None)
    assert emb.shape == (1, 48, 8, 8, 8)
    assert logits.shape == (1, 1, 32, 32, 32)
