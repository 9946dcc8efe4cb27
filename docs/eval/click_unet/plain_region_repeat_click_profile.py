"""The in-process timings of docs/default_model.md, "Fourteenth run": a label's repeat clicks on the 1 mm development
brain MR through SegmentationEngine with the served default's region and refinement (the click pattern of
scripts/bench_http.py: each repeat click 3 voxels further along i), then a cProfile of one more click (where the
region, its solves and the model's kept mask spend their time):

    cd apps/sammed3d && OMP_NUM_THREADS=1 ../../.venv/bin/python \\
        ../../docs/eval/click_unet/plain_region_repeat_click_profile.py [image] [i,j,k]
"""
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402

from lib.model.build import model_refine  # noqa: E402
from lib.model.checkpoint import load_checkpoint  # noqa: E402
from lib.model.geodesic_graph import warm_up  # noqa: E402
from lib.session import SegmentationEngine  # noqa: E402
from lib.session.plain_region import resolve_region  # noqa: E402
from lib.session.refine import resolve_refine  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else "../../work_data/dev_brain/images/dev_mni6_brain.nii.gz"
click = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "114,122,53").split(",")]
warm_up()
torch.set_num_threads(1)
model, _ = load_checkpoint("model/default/model.pt")
model.eval()
engine = SegmentationEngine(model, "default", click_mode="all", max_crops=8, region=resolve_region("auto", model.config),
                            refine=resolve_refine("auto", model_refine(model)))
fg = [click]


def timed_click(label: str) -> None:
    t = time.perf_counter()
    res = engine.segment("s", path, "l", fg, [])
    print(label, f"{time.perf_counter() - t:.3f} s", {k: round(v, 3) for k, v in res.timings.items()},
          "plain region" if engine._states[("s", "l")].plain else "model")


timed_click("first")
for _ in range(3):
    fg.append([click[0] + 3 * len(fg), click[1] - 2 * (len(fg) % 7), click[2]])
    timed_click("repeat")
fg.append([click[0] + 3 * len(fg), click[1] - 2 * (len(fg) % 7), click[2]])
profile = cProfile.Profile()
profile.runcall(engine.segment, "s", path, "l", fg, [])
pstats.Stats(profile).sort_stats("cumtime").print_stats(30)
