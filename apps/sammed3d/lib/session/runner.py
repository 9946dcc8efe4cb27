"""Run the model's two halves: the expensive encoder (once per crop) and the cheap decoder.

Model contract (lib.model's Sam3D, or the test stand-in):
    model.image_size -> int (crop edge, 128 for the released model)
    model.encode(image (B, 1, S, S, S) float32) -> embedding (B, C, S/16, S/16, S/16)
    model.decode(embedding, point_coords (B, N, 3) float crop voxel indices in tensor-axis order,
                 point_labels (B, N) int64 1/0, mask_input (B, 1, S/4, S/4, S/4) | None)
                 -> low-res logits (B, 1, S/4, S/4, S/4)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..model.cuda_graphs import CudaGraphRunner
from ..model.precision import autocast, check_precision
from ..model.sam3d import Sam3D

_ALIASES = {None: "fp32", "": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class ModelRunner:
    """Holds the model on its device; reduced precision (bf16/fp16, CUDA only) for the encoder.

    The decoder always runs in float32: it is cheap, and its logits are fed back as the next
    click's mask input, where reduced precision would accumulate. On CUDA the real model runs
    through CUDA-graph replay (lib.model.cuda_graphs): the released model is launch-bound there.
    """

    def __init__(self, model: torch.nn.Module, device="cpu", precision: Optional[str] = None):
        self.device = torch.device(device)
        self.precision = check_precision(_ALIASES.get(precision, precision), self.device)
        self.model = model.to(self.device).eval()
        self.crop = int(getattr(model, "image_size", 128))
        self._graph_encoder = self._graph_decoder = None
        if self.device.type == "cuda" and isinstance(model, Sam3D):
            self._graph_encoder = CudaGraphRunner(self.model, self.precision)
            self._graph_decoder = CudaGraphRunner(self.model, "fp32")

    @property
    def precision_name(self) -> Optional[str]:
        return None if self.precision == "fp32" else self.precision

    @property
    @torch.inference_mode()
    def prior_only(self) -> bool:
        """The model decodes from its prior alone (ClickUNet3D.serves_prior_only: the embedded default), so
        a click needs no encoder features (encode(features=False))."""
        check = getattr(self.model, "serves_prior_only", None)
        return bool(check()) if check is not None else False

    @torch.inference_mode()
    def encode(self, image: torch.Tensor, features: bool = True) -> torch.Tensor:
        """(1, 1, S, S, S) float32 (CPU ok) -> (1, C, s, s, s) float32 embedding on the device; features
        False (only while prior_only): the encoder's features are zeros (ClickUNet3D.encode_cells)."""
        image = image.to(self.device, non_blocking=True)
        if not features:
            return self.model.encode_cells(image).float()
        if self._graph_encoder is not None:
            return self._graph_encoder.encode(image).float()
        with autocast(self.precision, self.device):
            emb = self.model.encode(image)
        return emb.float()

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        points: Sequence[Tuple[float, float, float]],
        labels: Sequence[int],
        mask_input: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Points in crop voxel coordinates -> (1, 1, L, L, L) float32 logits on the device."""
        coords = torch.tensor([list(p) for p in points], dtype=torch.float32, device=self.device)[None]
        labs = torch.tensor(list(labels), dtype=torch.int64, device=self.device)[None]
        if mask_input is not None:
            mask_input = mask_input.to(self.device, dtype=torch.float32)
        model = self._graph_decoder if self._graph_decoder is not None else self.model
        return model.decode(embedding, coords, labs, mask_input).float()

    @torch.inference_mode()
    def decode_batch(self, embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(T, C, s, s, s) embeddings, (T, N, 3) crop-voxel coords, (T, N) labels, no previous logits
        (zeros, as a first click) -> (T, 1, L, L, L) float32 logits on the device."""
        n = self.crop // 4
        zeros = torch.zeros((embeddings.shape[0], 1, n, n, n), dtype=torch.float32, device=embeddings.device)
        model = self._graph_decoder if self._graph_decoder is not None else self.model
        return model.decode(embeddings, coords.to(embeddings.device), labels.to(embeddings.device), zeros).float()

    def sync(self) -> None:
        """Wait for queued GPU work so timings measure it (no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
