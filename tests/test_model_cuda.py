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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_runner_matches_eager(cuda_model, fixture, precision):
    from lib.model.cuda_graphs import CudaGraphRunner

    inputs = fixture["inputs"]
    runner = CudaGraphRunner(cuda_model, precision)
    image = inputs["image"].float().cuda()
    coords, labels = inputs["case2_point_coords"].cuda(), inputs["case2_point_labels"].cuda()
    with torch.inference_mode(), autocast(precision, "cuda"):
        emb = cuda_model.encode(image)
        eager = cuda_model.decode(emb, coords, labels, None)
    g_emb = runner.encode(image)
    g_logits = runner.decode(g_emb, coords, labels, None)
    again = runner.decode(g_emb, coords[:, :1], labels[:, :1], None)  # another signature, another graph
    tol = 1e-4 if precision == "fp32" else 5e-2
    assert (g_emb.float() - emb.float()).abs().max().item() <= tol * 10
    assert (g_logits.float() - eager.float()).abs().max().item() <= tol * 10
    assert again.shape == g_logits.shape and not torch.equal(again, g_logits)
