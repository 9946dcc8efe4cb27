"""CUDA paths: parity on the GPU in fp32 and bounded error in reduced precision (skipped without CUDA)."""
import pytest
import torch

from lib.model import build_sam_med3d
from lib.model.precision import autocast, check_precision

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def fixture(parity_fixture_path):
    return torch.load(parity_fixture_path, weights_only=True)


@pytest.fixture(scope="module")
def cuda_model(fixture):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    m = build_sam_med3d(fixture["config"])
    m.load_state_dict(fixture["state_dict"])
    return m.eval().cuda()


@pytest.mark.parametrize("fast", [False, True])
def test_cuda_fp32_parity(cuda_model, fixture, fast):
    inputs, expected = fixture["inputs"], fixture["outputs"]
    cuda_model.image_encoder.fast = fast
    with torch.inference_mode():
        emb = cuda_model.encode(inputs["image"].float().cuda())
        logits = cuda_model.decode(emb, inputs["case1_point_coords"].cuda(), inputs["case1_point_labels"].cuda(),
                                   inputs["case1_mask_input"].cuda())
    cuda_model.image_encoder.fast = True
    assert (emb.cpu() - expected["image_embedding"]).abs().max().item() <= 1e-4
    assert (logits.cpu() - expected["case1_low_res_masks"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_mask_agrees(cuda_model, fixture, precision):
    inputs, expected = fixture["inputs"], fixture["outputs"]
    with torch.inference_mode(), autocast(precision, "cuda"):
        emb = cuda_model.encode(inputs["image"].float().cuda())
        logits = cuda_model.decode(emb, inputs["case1_point_coords"].cuda(), inputs["case1_point_labels"].cuda(),
                                   inputs["case1_mask_input"].cuda())
        mask = cuda_model.upsample_logits(logits)[0, 0].cpu() > 0
    ref = expected["case1_mask_128_bool"]
    dice = 2 * (mask & ref).sum().item() / (mask.sum().item() + ref.sum().item())
    assert dice > 0.98, dice


def test_precision_validation():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        check_precision("fp8", "cuda")
