"""Prototype measured in docs/default_model.md, "Thirteenth run" (not kept): default-v9's plain region with a
smaller max_voxels budget (a coarser grid for large boxes):

    cd apps/sammed3d && MAXVOX=300000 OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/plain_region_maxvox_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name mv300 --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_mv300
"""
import os, sys
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import lib.session.classical_region as C
C.TUNED["geodesic"] = replace(C.TUNED["geodesic"], max_voxels=int(os.environ["MAXVOX"]))
from lib.evaluation.command import main
sys.exit(main())
