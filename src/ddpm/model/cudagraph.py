"""Sampling with the network captured in CUDA graphs: one graph per batch shape, replayed at every step.

A sampler calls the same network with the same shapes hundreds of times; on a GPU at small images most of an
eager call is the host launching kernels one by one.  :class:`GraphedNetwork` records the whole forward pass
once (per input shape) and replays it with a single launch.  Only the network is captured: the sampler's
arithmetic and its per-sample noise stay eager, so samples are the same as without graphs up to the
non-associativity of the GPU's reductions.

Opt-in (``ddpm sample --cuda-graph``, ``generate(..., cuda_graph=True)``); CUDA only.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

__all__ = ["GraphedNetwork"]


class GraphedNetwork:
    """``f(x, t, y=None) -> float32 output`` replaying a CUDA graph of ``net(x, t)`` (``net(x, t, y)`` when class
    labels y are given), captured at the first call of each input shape.

    net: a callable of (x, t) returning a tensor (a module in eval mode, no dropout: the graph replays the
    same kernels, so randomness inside the network would repeat).  autocast_dtype: run the network under
    autocast to this dtype (None: as is).  memory_format: layout of the static input buffer.  The inputs are
    copied into static buffers before each replay and the output is copied out after it, so a caller may
    keep an output across calls.
    """

    def __init__(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 autocast_dtype: torch.dtype | None = torch.bfloat16,
                 memory_format: torch.memory_format = torch.channels_last, warmup_calls: int = 3):
        self.net = net
        self.autocast_dtype = autocast_dtype
        self.memory_format = memory_format
        self.warmup_calls = warmup_calls
        self.graphs: dict[tuple, tuple] = {}

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # autocast's weight cache must be off during capture: its casts have to be recorded in the graph
        ctx = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with ctx:
            return self.net(x, t, y)

    def _capture(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
        if x.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, the input is on {x.device}")
        static_x = torch.empty_like(x, memory_format=self.memory_format).copy_(x)
        static_t = t.clone()
        static_y = None if y is None else y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the capture stream (cuDNN picks its algorithms here)
            for _ in range(self.warmup_calls):
                self._forward(static_x, static_t, static_y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_x, static_t, static_y)
        return static_x, static_t, static_y, graph, static_out

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, tuple(t.shape), None if y is None else tuple(y.shape))
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, y)
        static_x, static_t, static_y, graph, static_out = self.graphs[key]
        static_x.copy_(x)
        static_t.copy_(t)
        if static_y is not None:
            static_y.copy_(y)
        graph.replay()
        return static_out.to(torch.float32, copy=True)
