#!/usr/bin/env python
"""Benchmark the atlas prior (lib.session.atlas_prior) on a brain MR against the same clicks without it.

Measures, on one thread (OMP_NUM_THREADS=1, SimpleITK's registration on one thread as served):
  * the atlas fit of the volume (once per volume; the server runs it in the background);
  * with the fit ready, through SegmentationEngine.segment with the served checkpoint's config: a label's first
    click in a deep nucleus (the atlas answers) and a repeat click on it (the band region), each beside the same
    click with `atlas_prior off` (the default-v11 path: the learned first-click margin, the 25 mm plain region).
Wall seconds, medians over --repeats fresh labels (the volume and its crops' embeddings cached, as on a second label);
--pause S between a label's clicks (untimed).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_atlas_prior.py \\
        --image work_data/dev_brain/images/dev_mni6_brain.nii.gz --click 115,123,53 --second 112,122,49
"""
import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps", "sammed3d"))
from lib.model import load_checkpoint, model_refine  # noqa: E402
from lib.session import SegmentationEngine  # noqa: E402
from lib.session.atlas_fit import AtlasFits  # noqa: E402
from lib.session.atlas_prior import AtlasPrior  # noqa: E402
from lib.session.fine_region import resolve_fine  # noqa: E402
from lib.session.fit_pieces import FitPieces  # noqa: E402
from lib.session.local_update import resolve_local  # noqa: E402
from lib.session.plain_region import resolve_region  # noqa: E402
from lib.session.refine import resolve_refine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def engine_for(model, atlas: str, fits: AtlasFits) -> SegmentationEngine:
    config = getattr(model, "config", None)
    region = resolve_region("auto", config, True, "auto", atlas)
    if region is not None and region.atlas is not None:  # the fit computed above, waited for
        region.atlas = AtlasPrior(replace(region.atlas.params, wait=True), fits)
    return SegmentationEngine(model, "bench", click_mode="all", max_crops=8, refine=resolve_refine("auto", model_refine(model)),
                              fine=resolve_fine("auto", config), local=resolve_local("auto", config), region=region)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=os.path.join(ROOT, "work_data", "dev_brain", "images", "dev_mni6_brain.nii.gz"))
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "apps", "sammed3d", "model", "default", "model.pt"))
    p.add_argument("--click", default="115,123,53", help="a first include click in a deep nucleus or a parcel (i,j,k)")
    p.add_argument("--later", default="112,122,49", help="the label's later include clicks, 'i,j,k;i,j,k;...'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds between a label's clicks, not timed: an annotator looking at the mask, while the "
                        "server's background work (a large piece's band seeds) runs")
    args = p.parse_args(argv)
    import SimpleITK as sitk

    from lib.session.volume import load_volume

    model = load_checkpoint(args.checkpoint, map_location="cpu")[0].eval()
    fits = AtlasFits()
    t = time.perf_counter()
    fit = fits.fit(load_volume(args.image), wait=True)
    fit_s = time.perf_counter() - t
    first = [int(v) for v in args.click.split(",")]
    later = [[int(v) for v in c.split(",")] for c in args.later.split(";") if c.strip()]
    rows = {}
    for atlas in ("auto", "off"):
        engine = engine_for(model, atlas, fits)
        engine.segment("warm", args.image, "warm", [first], [], modality="MR")  # volume, crops, embeddings cached
        times = [[] for _ in range(1 + len(later))]
        for n in range(args.repeats):
            label = f"label-{n}"
            if engine.region is not None and engine.region.atlas is not None:  # each label makes its own
                engine.region.atlas._pieces = FitPieces()  # pieces made ahead (the warm-up's dropped)
            for k in range(1 + len(later)):
                time.sleep(args.pause if k else 0.0)  # the annotator looks at the mask (background work runs)
                t = time.perf_counter()
                res = engine.segment("bench", args.image, label, [first] + later[:k], [], modality="MR")
                times[k].append(time.perf_counter() - t)
        rows[atlas] = [statistics.median(v) for v in times] + [int(res.mask.sum())]
    print(f"image {os.path.relpath(args.image, ROOT)}, {sitk.ReadImage(args.image).GetSize()}; atlas fit "
          f"{fit_s:.2f} s (correlation {fit.ncc:.3f}), torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    heads = ["first click (s)"] + [f"click {k + 2} (s)" for k in range(len(later))]
    print(f"| atlas_prior | {' | '.join(heads)} | voxels after the last click |")
    print("|---" * (len(heads) + 2) + "|")
    for atlas, r in rows.items():
        print(f"| {atlas} | {' | '.join(f'{v:.3f}' for v in r[:-1])} | {r[-1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
