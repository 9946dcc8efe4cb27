"""What every interactive task of the app shares: a class-agnostic 3D deepgrow task around an engine.

Both tasks (SAM-Med3D clicks, MedSAM boxes) are valid when their engine exists, and /info names the
model version that answers and the weights it came from.
"""
from typing import Any, Dict

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType


class EngineInferTask(InferTask):
    def __init__(self, engine, weights: Dict[str, Any], description: str, config: Dict[str, Any]):
        super().__init__(
            type=InferType.DEEPGROW,  # what the Slicer and OHIF plugins send clicks/ROIs to
            labels=None,  # class-agnostic: any segment name the client sends is a label
            dimension=3,
            description=description,
            config=config,
        )
        self.engine = engine
        self.weights = weights  # what /info shows about the live checkpoint

    def is_valid(self) -> bool:
        return self.engine is not None

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["model_version"] = self.engine.model_version
        info["weights"] = dict(self.weights)
        return info
