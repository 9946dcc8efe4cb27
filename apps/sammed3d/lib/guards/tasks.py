"""POST /train/{model}, /scoring/{method} and /batch/infer/{model}: answer what can be known before the background task.

MONAI Label 0.8.5 submits these to a subprocess without looking: an unknown model or method is
"SUBMITTED" and fails later in the log, and a bad option (`max_epochs: "abc"`) fails in the
subprocess (a 500 with run_sync). The guard routes check, in the server, what needs no work:

* an unknown trainer, scoring method or batch-infer model -> 404 naming the available ones;
* train options the trainer would reject (lib/trainers/options.py) -> 400 naming the option;
* no final label in the datastore -> 400 (there is nothing to train on);
* a training already submitted or running -> 429, as MONAI Label answers once the training's
  subprocess exists. Its own check looks only at the subprocess, so a second POST in the second or
  so before that (a double click on Train) was queued behind the first instead of refused.

Valid requests go unchanged to MONAI Label's own `run_model` / `run_method` / `run`.
"""
from typing import Any, Dict, Optional

from fastapi import HTTPException

from .common import insert_first, unknown_task_404


def check_train_request(app, model: str, params: Optional[Dict[str, Any]]) -> None:
    """HTTPException(404/400) for a train request the trainer would refuse."""
    trainers = getattr(app, "_trainers", {}) or {}
    if model not in trainers:
        raise unknown_task_404("trainer", model, trainers)
    defaults = getattr(trainers[model], "defaults", None)
    if defaults is not None:  # our SAMMed3DTrainTask: the same parser the train subprocess uses
        from lib.trainers.options import options_from_request

        try:
            options_from_request(dict(params or {}), defaults, strict=False)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=f"train request: {e}")
    if not any(d.get("label") for d in app.datastore().datalist()):
        raise HTTPException(status_code=400,
                            detail="no final labels in the datastore: save some labels (tag final) before training")


def refuse_second_training(enqueue: bool) -> None:
    """HTTPException(429) while a train task is submitted or running (unless the client asks to enqueue)."""
    from monailabel.utils.async_tasks.utils import tasks

    if enqueue:
        return
    busy = [t for t in tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]
    if busy:
        raise HTTPException(status_code=429, detail=f"++++++++++ Train Task is Already Running (task {busy[0].get('id')}, "
                                                    f"{busy[0].get('status', '').lower()}); pass enqueue=true to queue another")


def check_scoring_request(app, method: str) -> None:
    methods = getattr(app, "_scoring_methods", {}) or {}
    if method not in methods:
        raise unknown_task_404("scoring method", method, methods)


def check_batch_infer_request(app, model: str) -> None:
    infers = getattr(app, "_infers", {}) or {}
    if model not in infers:
        raise unknown_task_404("model", model, infers)


def task_routes():
    from fastapi import Depends
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import batch_infer as ml_batch
    from monailabel.endpoints import scoring as ml_scoring
    from monailabel.endpoints import train as ml_train
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    async def sammed3d_train_guard(
        model: str,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        enqueue: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        check_train_request(app_instance(), model, params)
        refuse_second_training(bool(enqueue))
        return ml_train.run_model(model, params, run_sync, enqueue)

    async def sammed3d_scoring_guard(
        method: str,
        params: Optional[dict] = None,
        run_sync: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        check_scoring_request(app_instance(), method)
        return ml_scoring.run_method(method, params, run_sync)

    import inspect

    batch_defaults = inspect.signature(ml_batch.api_run).parameters["params"].default  # MONAI Label's own

    async def sammed3d_batch_infer_guard(
        model: str,
        images: Optional[ml_batch.BatchInferImageType] = ml_batch.BatchInferImageType.IMAGES_ALL,
        params: Optional[dict] = batch_defaults,
        run_sync: Optional[bool] = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        check_batch_infer_request(app_instance(), model)
        return ml_batch.run(model, images, params, run_sync)

    api = settings.MONAI_LABEL_API_STR
    return [
        APIRoute(f"{api}/train/{{model}}", sammed3d_train_guard, methods=["POST"], name="sammed3d_train_guard",
                 summary="Run training (SAM-Med3D app: unknown model 404, bad options 400)"),
        APIRoute(f"{api}/scoring/{{method}}", sammed3d_scoring_guard, methods=["POST"], name="sammed3d_scoring_guard",
                 summary="Run scoring (SAM-Med3D app: unknown method 404)"),
        APIRoute(f"{api}/batch/infer/{{model}}", sammed3d_batch_infer_guard, methods=["POST"],
                 name="sammed3d_batch_infer_guard", summary="Run batch inference (SAM-Med3D app: unknown model 404)"),
    ]


def install_task_guards(fastapi_app) -> bool:
    return all(insert_first(fastapi_app, route) for route in task_routes())
