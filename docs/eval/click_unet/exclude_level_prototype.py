"""Prototype measured in docs/default_model.md, "Eleventh run" (not adopted): an exclude click also caps the box
prior at LEVEL_K x its own geodesic distance from the include clicks (cells farther out than the excluded spot go
outside). Patches lib.model.geodesic_maps.GeodesicPrior._box_region and runs the evaluation command:

    cd apps/sammed3d && LEVEL_K=2.5 OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/exclude_level_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name lev25 --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_lev25
"""
import os, sys
sys.path.insert(0, os.getcwd())
import numpy as np
import lib.model.geodesic_maps as G
K = float(os.environ.get("LEVEL_K", "1.0"))
orig = G.GeodesicPrior._box_region
def _box_region(self, solves, i, fg, ex, clicks, g):
    region = orig(self, solves, i, fg, ex, clicks, g)
    if len(ex):
        d_fg = solves.distance(i, self.gamma, fg)
        level = K * float(d_fg[tuple(ex.T)].min())
        region = np.minimum(region, np.clip(level - d_fg, -self.clip, self.clip)).astype(np.float32)
    return region
G.GeodesicPrior._box_region = _box_region
from lib.evaluation.command import main
sys.exit(main())
