"""CUDA-graph replay of encode and decode: the released model is launch-bound on a fast GPU.

One graph is captured per input signature (the number of points grows by one per click, so a
session holds a handful); each replay reruns the same kernels on static buffers. Outputs are
cloned because the next replay overwrites them. Weights are read in place, so a model whose
parameters are updated in place stays valid; a new model object needs a new runner.
"""
from typing import Callable, Dict, Optional, Tuple

import torch

from .precision import autocast
from .sam3d import Sam3D


class _Captured:
    def __init__(self, fn: Callable, example: Tuple[Optional[torch.Tensor], ...], precision: str, pool) -> None:
        self.inputs = tuple(None if t is None else t.clone() for t in example)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode(), autocast(precision, "cuda"):
            for _ in range(2):  # warm-up outside the graph (allocator, cuBLAS handles, lazy init)
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.inference_mode(), autocast(precision, "cuda"):
            self.output = fn(*self.inputs)

    def __call__(self, *args: Optional[torch.Tensor]) -> torch.Tensor:
        for static, value in zip(self.inputs, args):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        return self.output.clone()


class CudaGraphRunner:
    """Drop-in for Sam3D's encode / decode (inference only) on CUDA, at a given precision."""

    def __init__(self, model: Sam3D, precision: str = "fp32", max_graphs: int = 64) -> None:
        if model.device.type != "cuda":
            raise ValueError("CudaGraphRunner needs a model on a CUDA device")
        self.model = model.eval()
        self.precision = precision
        self.max_graphs = max_graphs
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: Dict[tuple, _Captured] = {}

    def _get(self, key: tuple, fn: Callable, example) -> _Captured:
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.clear()
            graph = self._graphs[key] = _Captured(fn, example, self.precision, self._pool)
        return graph

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        key = ("encode", tuple(image.shape))
        return self._get(key, self.model.encode, (image,))(image)

    def decode(self, image_embedding, point_coords, point_labels, mask_input) -> torch.Tensor:
        key = ("decode", tuple(image_embedding.shape), image_embedding.dtype,
               None if point_coords is None else tuple(point_coords.shape), mask_input is None)
        args = (image_embedding, point_coords, point_labels, mask_input)
        return self._get(key, self.model.decode, args)(*args)

    def upsample_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        return self.model.upsample_logits(low_res_logits)

    def __getattr__(self, name):  # image_size, device, config, ... come from the model
        return getattr(self.model, name)
