"""Pinned numbers of the three training paths (from scratch, the fine-tuning task, the
active-learning simulation): the losses and final weights each gives for a fixed tiny model,
data and seed. Recorded from the three separate loops before they became one recipe
(lib/training/recipe.py); the shared step must reproduce them, so any change to the recipe's
numerics (click draws, loss, clipping, optimiser, autocast) shows up here. CPU, fp32."""
import numpy as np
import pytest
import torch

from trainer_utils import make_samples, tiny_model

# Tolerances: the same machine gives the same bits; other CPUs may sum in another order.
REL = 1e-4


def _moved(model, start) -> float:
    """How far training moved the weights: sum of |w - w0| (pins the optimiser's updates)."""
    return float(sum((v.double() - start[k].double()).abs().sum() for k, v in model.state_dict().items()))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _cube_batch(b=2):
    g = torch.Generator().manual_seed(7)
    tgt = torch.zeros(b, 1, 128, 128, 128)
    for i in range(b):
        s = 40 + 8 * i
        tgt[i, 0, s:s + 40, s:s + 40, 44:84] = 1
    img = torch.where(tgt > 0, 2.0, -0.5) + 0.1 * torch.randn(tgt.shape, generator=g)
    return img, tgt


def from_scratch_numbers(freeze_encoder: bool):
    from lib.training.loop import TrainConfig, build_optimizer, train_step

    torch.set_num_threads(1)
    model = tiny_model(3)
    start = _state(model)
    cfg = TrainConfig(lr=2e-3, decoder_lr_ratio=0.5, num_clicks=3, bf16=False, freeze_encoder=freeze_encoder)
    opt = build_optimizer(model, cfg)
    img, tgt = _cube_batch()
    rs, gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    steps = [train_step(model, opt, img, tgt, cfg, rs, gen) for _ in range(3)]
    return [[s["loss"], s["dice"], s["grad_norm"]] for s in steps] + [[_moved(model, start)]]


def fine_tune_numbers(tmp_path, parts: str, loss_size: int):
    from lib.trainers import fine_tune, options_from_request

    torch.set_num_threads(1)
    samples = make_samples(str(tmp_path), 2, seed=4)
    opts = options_from_request({"max_epochs": 2, "num_clicks": 3, "loss_size": loss_size, "variants": 2,
                                 "val_split": 0, "max_components": 1, "lr": 1e-2, "train_parts": parts,
                                 "batch_size": 2, "progress": False, "seed": 1})
    start = _state(tiny_model(1))
    model, m = fine_tune(tiny_model(1), samples, opts)
    return [[e["train"]["loss"], e["train"]["dice"]] for e in m["epochs"]] + [[_moved(model, start)]]


def simulation_numbers():
    from lib.activelearning.sim_pool import S, Volume
    from lib.activelearning.sim_train import fine_tune_decoder

    torch.set_num_threads(1)
    model = tiny_model(2).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ax = torch.arange(S, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))
    vols = []
    for i, (c, r) in enumerate((((60.0, 64.0, 70.0), 18.0), ((70.0, 58.0, 62.0), 22.0))):
        tgt = ((grid - torch.tensor(c).view(3, 1, 1, 1)) ** 2).sum(0) < r * r
        emb = torch.randn(1, 48, 8, 8, 8, generator=torch.Generator().manual_seed(20 + i)) * 0.1
        emb[0, :8] += torch.nn.functional.avg_pool3d(tgt[None, None].float(), 16)[0, 0]
        vols.append(Volume(f"pool{i}", "ct_bright_blob", emb, tgt, [int(x) for x in c]))
    losses = fine_tune_decoder(model, base, vols, steps=4, batch=2, lr=3e-3, num_clicks=3, seed=9,
                               parts=("mask_decoder", "prompt_encoder"), weight_decay=0.05)
    return [losses, [_moved(model, base)]]


PINNED = {  # recorded at commit abbe44d (the three loops before the recipe), CPU, OMP_NUM_THREADS=1
    'scratch_freeze=False': [
        [1.641645113627116, 0.06093963235616684, 0.6476957201957703],
        [1.6350326538085938, 0.06234544515609741, 0.4462059438228607],
        [1.6271874109903972, 0.07951652258634567, 0.492613285779953],
        [1411.003170641154],
    ],
    'scratch_freeze=True': [
        [1.641645113627116, 0.06093963235616684, 0.44120797514915466],
        [1.6357154846191406, 0.06273539364337921, 0.3630739152431488],
        [1.6313236554463704, 0.060424160212278366, 0.3931192457675934],
        [94.7965814703291],
    ],
    'finetune_mask_decoder+prompt_encoder_32': [
        [1.6839319864908855, 0.0027898335829377174],
        [1.6715752283732097, 0.002705924678593874],
        [71.46944492101738],
    ],
    'finetune_all_64': [
        [1.6844696998596191, 0.003730312455445528],
        [1.6717907587687175, 0.008640225976705551],
        [5199.187315182198],
    ],
    'simulation': [
        [1.6640116373697917, 1.634133021036784, 1.6057780583699544, 1.5800046920776367],
        [282.58150279419715],
    ],
}


def _check(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=REL, abs=1e-6), (got, want)


@pytest.mark.parametrize("freeze", [False, True])
def test_from_scratch_step_is_pinned(freeze):
    _check(from_scratch_numbers(freeze), PINNED[f"scratch_freeze={freeze}"])


@pytest.mark.parametrize("parts,loss_size", [("mask_decoder+prompt_encoder", 32), ("all", 64)])
def test_fine_tuning_task_is_pinned(tmp_path, parts, loss_size):
    _check(fine_tune_numbers(tmp_path, parts, loss_size), PINNED[f"finetune_{parts}_{loss_size}"])


def test_active_learning_simulation_is_pinned():
    _check(simulation_numbers(), PINNED["simulation"])
