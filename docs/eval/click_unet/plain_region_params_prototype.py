"""Prototype measured in docs/default_model.md, "Fourteenth run": default-v9's plain region with other geodesic
parameters than the classical row's tuned ones (a JSON of ClassicalParams fields in PARAMS), on the development cases:

    cd apps/sammed3d && PARAMS='{"gamma": 100}' OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/plain_region_params_prototype.py --data ../../work_data/dev_brain --model sammed3d \
        --checkpoint model/default/model.pt --model-name g100 --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_brain_g100
"""
import json, os, sys
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import lib.session.classical_region as C
C.TUNED["geodesic"] = replace(C.TUNED["geodesic"], **json.loads(os.environ["PARAMS"]))
from lib.evaluation.command import main
sys.exit(main())
