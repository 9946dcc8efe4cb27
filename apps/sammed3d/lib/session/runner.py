"""Run the model's two halves: the expensive encoder (once per crop) and the cheap decoder.

Model contract (lib.model's Sam3D, or the test stand-in):
    model.image_size -> int (crop edge, 128 for the released model)
    model.encode(image (B, 1, S, S, S) float32) -> embedding (B, C, S/16, S/16, S/16)
    model.decode(embedding, point_coords (B, N, 3) float crop voxel indices in tensor-axis order,
                 point_labels (B, N) int64 1/0, mask_input (B, 1, S/4, S/4, S/4) | None)
                 -> low-res logits (B, 1, S/4, S/4, S/4)
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch

_PRECISIONS = {
    None: None,
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class ModelRunner:
    """Holds the model on its device; autocast (bf16/fp16) for the encoder when asked.

    The decoder always runs in float32: it is cheap, and its logits are fed back as the next
    click's mask input, where reduced precision would accumulate.
    """

    def __init__(self, model: torch.nn.Module, device="cpu", precision: Optional[str] = None):
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(k for k in _PRECISIONS if k)} or None, got {precision!r}")
        self.device = torch.device(device)
        self.autocast_dtype = _PRECISIONS[precision]
        self.model = model.to(self.device).eval()
        self.crop = int(getattr(model, "image_size", 128))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 1, S, S, S) float32 (CPU ok) -> (1, C, s, s, s) float32 embedding on the device."""
        with self._autocast():
            emb = self.model.encode(image.to(self.device, non_blocking=True))
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
        return self.model.decode(embedding, coords, labs, mask_input).float()

    def sync(self) -> None:
        """Wait for queued GPU work so timings measure it (no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
