"""Issue 17 speed options: MedSAM two slices per encoder call (same masks), the int8 encoder (--conf),
per-slice progress log; and the scoring subprocess priority (clicks first)."""
import logging

import numpy as np
import pytest
import torch

from lib.medsam import VolumePredictor, propagate_box
from lib.model.medsam import quantize_encoder


class _StandIn(torch.nn.Module):
    """encode: the input's mean per image as a 1-channel 'embedding' (records each call's batch);
    decode: the box filled when the slice is bright (a structure there), else nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches = []

    def encode(self, x):
        self.batches.append(int(x.shape[0]))
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 256, 64, 64).clone()

    def decode(self, emb, boxes):
        out = torch.full((1, 1, 256, 256), -1.0)
        if float(emb.mean()) > 0.05:
            x0, y0, x1, y1 = (int(v) for v in boxes[0])
            out[..., max(0, y0 + 4):y1 - 3, max(0, x0 + 4):x1 - 3] = 1.0
        return out, torch.ones(1, 1)


def _volume():
    vol = np.full((40, 40, 16), -1000.0, np.float32)  # CT air
    vol[10:30, 12:28, 4:11] = 200.0  # a structure on slices 4..10 only
    vol[0, 0, :] = 300.0  # keeps every slice's min-max normalisation defined
    return vol


def _run(batch, roi=(5, 34, 6, 33, 1, 14)):
    model = _StandIn()
    pred = VolumePredictor(model, _volume(), (1.0, 1.0, 3.0), np.eye(3).ravel(), True, window=(40.0, 400.0),
                           slice_axis=2, encode_batch=batch)
    res = propagate_box(pred, roi, clip_to_roi=True)
    return res, model, pred


def test_two_slices_per_encoder_call_give_the_same_masks():
    one, m1, p1 = _run(1)
    two, m2, p2 = _run(2)
    assert one.slices == two.slices == list(range(4, 11))
    np.testing.assert_array_equal(one.mask, two.mask)
    assert one.mask.sum() > 0
    assert set(m1.batches) == {1}
    assert max(m2.batches) == 2 and len(m2.batches) < len(m1.batches)
    # at most one slice per direction beyond where propagation stopped
    assert p2.stats["encoded"] <= p1.stats["encoded"] + 2
    # a second box on the same slices reuses every encoding
    before = p2.stats["encoded"]
    propagate_box(p2, (5, 34, 6, 33, 1, 14), clip_to_roi=True)
    assert p2.stats["encoded"] == before


def test_batch_never_reaches_outside_the_volume():
    res, model, pred = _run(2, roi=(5, 34, 6, 33, 0, 15))
    assert res.slices == list(range(4, 11))
    assert all(0 <= s < 16 for s in pred._cache)


def test_progress_is_logged_per_slice(caplog):
    with caplog.at_level(logging.INFO, logger="lib.medsam.propagate"):
        res, _, _ = _run(2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("medsam box: slice")]
    assert len(lines) >= len(res.slices)
    assert any("encoded" in line for line in lines) and any("of at most 14" in line for line in lines)


def test_real_encoder_batch_of_two_equals_one_at_a_time(medsam_weights):
    from lib.medsam import load_lite_medsam

    torch.manual_seed(0)
    model = load_lite_medsam(medsam_weights)
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        both = model.encode(x)
        alone = torch.cat([model.encode(x[:1]), model.encode(x[1:])])
    assert float((both - alone).abs().max()) < 1e-4


def test_int8_encoder_quantises_only_the_encoders_linear_layers(medsam_weights):
    from lib.medsam import load_lite_medsam

    model = quantize_encoder(load_lite_medsam(medsam_weights), "int8")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    mods = list(model.image_encoder.modules())
    assert not any(type(m) is torch.nn.Linear for m in mods)  # no float Linear left in the encoder
    assert sum(isinstance(m, DynamicLinear) for m in mods) == 40  # 10 blocks x (qkv, proj, fc1, fc2)
    assert not any("quantized" in type(m).__module__ for m in model.mask_decoder.modules())
    assert quantize_encoder(load_lite_medsam(medsam_weights), "fp32").image_encoder is not None
    with pytest.raises(ValueError, match="medsam encoder"):
        quantize_encoder(model, "int4")


def test_server_options_are_checked():
    from lib.configs.medsam import build_medsam_task

    with pytest.raises(RuntimeError, match="medsam_encoder"):
        build_medsam_task({"medsam_encoder": "int4"})


# ------------------------------------------------------------- scoring priority (issue 17 item 3)
def test_scoring_lowers_only_a_task_subprocess_priority(monkeypatch):
    import os
    import subprocess
    import sys

    from lib.activelearning import scoring

    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert scoring.DEFAULTS["nice"] == 10 and scoring.DEFAULTS["idle"] == 0
    assert not scoring.in_task_subprocess()
    policy = os.sched_getscheduler(0)
    assert scoring.lower_priority(10, idle=True) == before  # in the server process: untouched
    assert os.sched_getscheduler(0) == policy
    # in a process whose __main__ is MONAI Label's task runner, every thread gets the nice value
    code = (
        "import os, sys, threading, types; sys.path.insert(0, %r)\n"
        "sys.modules['__main__'].__spec__ = types.SimpleNamespace(name='monailabel.interfaces.utils.app')\n"
        "ev = threading.Event(); th = threading.Thread(target=ev.wait); th.start()\n"
        "from lib.activelearning.scoring import lower_priority\n"
        "n = lower_priority(7, idle=True)\n"
        "tids = [int(t) for t in os.listdir('/proc/self/task')]\n"
        "print(n, sorted({os.getpriority(os.PRIO_PROCESS, t) for t in tids}),\n"
        "      sorted({os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids}))\n"
        "ev.set(); th.join()\n"
    ) % os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "sammed3d")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(max(7, before)), f"[{max(7, before)}]", "[True]"]
