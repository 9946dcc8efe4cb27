"""Prototype measured in docs/default_model.md, "Thirteenth run" (the rule "plain" became default-v9's
lib.session.plain_region; "sticky" and "until_special" were not kept): where the default's answer is the plain
box competition (no flood, no growth past the base box, no fine region in any crop the request decoded), answer
with the classical geodesic region on the stored grid. Patches the engine and runs the evaluation command with
default-v8's file (no plain_region in its config):

    cd apps/sammed3d && HYB_RULE=plain|sticky|until_special OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/plain_region_rules_prototype.py --data ../../work_data/dev_table --model sammed3d \
        --checkpoint <default-v8 model.pt: git show e3cb566:apps/sammed3d/model/default/model.pt> --model-name hyb \
        --click-mode all --clicks 5 --report-at 1,3,5 --no-nsd --out /tmp/dev_table_hyb
"""
import os, sys
sys.path.insert(0, os.getcwd())
import lib.model.geodesic_maps as G
import lib.session.fine_region as FR
import lib.session.engine as E
from lib.evaluation.classical import ClassicalSegmenter  # noqa: E402

FLAGS = {"special": False}
RULE = os.environ.get("HYB_RULE", "plain")

orig_box = G.GeodesicPrior._box_region
def _box_region(self, solves, i, fg, ex, clicks, g):
    out = orig_box(self, solves, i, fg, ex, clicks, g)
    if self.grow is not None and self.grow.applies(len(ex)):
        d_fg = solves.distance(i, self.gamma, fg)
        level = self.grow.plateau_threshold(d_fg)
        if self.grow.margin(d_fg, clicks, self.margin, level) > self.margin:
            FLAGS["special"] = True
    return out
G.GeodesicPrior._box_region = _box_region

orig_fwd = G.GeodesicPrior.forward
def forward(self, *a, **k):
    out = orig_fwd(self, *a, **k)
    if any(self.last_flooded):
        FLAGS["special"] = True
    return out
G.GeodesicPrior.forward = forward

orig_fine = FR.FineRegion.__call__
def fine_call(self, image, points, labels, logits):
    out = orig_fine(self, image, points, labels, logits)
    if out is not logits:
        FLAGS["special"] = True
    return out
FR.FineRegion.__call__ = fine_call

geo = ClassicalSegmenter("geodesic")
ROUTE = {}
orig_segment = E.SegmentationEngine.segment
def segment(self, image_id, image_path, label, foreground, background, *a, **k):
    FLAGS["special"] = False
    res = orig_segment(self, image_id, image_path, label, foreground, background, *a, **k)
    key = (image_id, label)
    if RULE == "sticky":
        if len(foreground) + len(background) == 1:
            ROUTE[key] = not FLAGS["special"]
        use = ROUTE.get(key, False)
    elif RULE == "until_special":
        if len(foreground) + len(background) == 1:
            ROUTE[key] = True
        if FLAGS["special"]:
            ROUTE[key] = False
        use = ROUTE.get(key, False)
    else:
        use = RULE == "always" or not FLAGS["special"]
    if use:
        res.mask = geo.segment(image_path, [list(p) for p in foreground], [list(p) for p in background]).astype(res.mask.dtype)
    return res
E.SegmentationEngine.segment = segment
from lib.evaluation.command import main
sys.exit(main())
