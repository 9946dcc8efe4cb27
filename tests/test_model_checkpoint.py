"""Checkpoint loading: every accepted format loads strictly; every bad file gets a clear error."""
import os

import pytest
import torch

from lib.model import CheckpointError, build_sam_med3d, infer_config, load_checkpoint, save_checkpoint

SMALL = {"encoder_embed_dim": 48, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
         "prompt_embed_dim": 48, "decoder_transformer": {"mlp_dim": 64}}


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_sam_med3d(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init values: a load must really copy
    return model.eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_released_format(tmp_path, small_model):
    path = tmp_path / "release.pth"
    torch.save({"model_state_dict": small_model.state_dict()}, path)
    model, info = load_checkpoint(str(path))
    assert _same_weights(model, small_model)
    assert info["released_architecture"] is False


def test_released_architecture_is_recognised(tmp_path):
    """The full-size release format (no config in the file) resolves to vit_b_ori."""
    model = build_sam_med3d(None)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    loaded, info = load_checkpoint(str(path))
    assert info["released_architecture"] is True
    assert _same_weights(loaded, model)


def test_bare_state_dict(tmp_path, small_model):
    path = tmp_path / "bare.pth"
    torch.save(small_model.state_dict(), path)
    model, _ = load_checkpoint(str(path))
    assert _same_weights(model, small_model)
    assert infer_config(small_model.state_dict()) == small_model.config


def test_ddp_prefix(tmp_path, small_model):
    path = tmp_path / "ddp.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in small_model.state_dict().items()}}, path)
    model, _ = load_checkpoint(str(path))
    assert _same_weights(model, small_model)


def test_app_format_round_trip_atomic(tmp_path, small_model):
    path = tmp_path / "versions" / "v0001.pt"
    save_checkpoint(small_model, str(path), version="v0001", metrics={"dice_1": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["v0001.pt"]  # no temp file left behind
    model, info = load_checkpoint(str(path))
    assert _same_weights(model, small_model)
    assert info["version"] == "v0001" and info["metrics"] == {"dice_1": 0.5}


def test_mismatch_names_missing_unexpected_and_wrong_shape(tmp_path, small_model):
    sd = dict(small_model.state_dict())
    sd.pop("mask_decoder.iou_token.weight")
    sd["mask_decoder.extra.weight"] = torch.zeros(3)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 47)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": sd, "config": small_model.config}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    msg = str(err.value)
    assert "missing: mask_decoder.iou_token.weight" in msg
    assert "unexpected: mask_decoder.extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 47) vs model (1, 48)" in msg


def test_release_into_wrong_config_is_refused(tmp_path, small_model):
    path = tmp_path / "small.pth"
    torch.save({"model_state_dict": small_model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(str(path), config={"encoder_embed_dim": 96, "encoder_depth": 2,
                                                              "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
                                                              "prompt_embed_dim": 48, "decoder_transformer": {"mlp_dim": 64}})


def test_truncated_file(tmp_path, small_model):
    good = tmp_path / "good.pth"
    torch.save({"model_state_dict": small_model.state_dict()}, good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(str(bad))


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint at all\n", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))


def test_pickled_object_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"model_state_dict": {}, "optimizer": os.environ.__class__}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))


def test_missing_file_and_non_tensor_entries(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    path = tmp_path / "dict.pth"
    torch.save({"a": 1, "b": "x"}, path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(str(path))
