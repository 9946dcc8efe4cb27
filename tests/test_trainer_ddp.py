"""Distributed fine-tuning as MONAI Label's multi-GPU training runs it (torch.multiprocessing.spawn,
DistributedSampler shards, DistributedDataParallel on the learned parts), here with two CPU
processes and the gloo backend: both ranks end with identical weights and the loss falls."""
import torch

from trainer_utils import make_samples, tiny_model

from lib.trainers import fine_tune, options_from_request


def test_two_gloo_processes_agree_and_learn(tmp_path):
    samples = make_samples(str(tmp_path / "vols"), 4, seed=3)
    work = tmp_path / "ddp"
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = options_from_request({
        "world_size": 2, "device": "cpu", "backend": "gloo", "max_epochs": 3, "num_clicks": 3, "loss_size": 32,
        "variants": 1, "jitter": 0, "flip": False, "batch_size": 1, "val_split": 0, "lr": 0.05,
        "max_components": 1, "progress": False, "publish": "never"})
    opts.work_dir = str(work)
    model, metrics = fine_tune(model, samples, opts)
    r0 = torch.load(work / "rank0_final.pt", weights_only=True)
    r1 = torch.load(work / "rank1_final.pt", weights_only=True)
    assert set(r0) == set(r1) and all(k.startswith("mask_decoder.") for k in r0)
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    # each rank saw its own shard (2 targets each, batch 1 -> 2 steps per epoch)
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 * 2 * 3
    losses = [e["train"]["loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0], losses
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in r0)  # the returned model learned
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("mask_decoder."))
