"""``cuda-graph``: the eager network captured once per batch size and replayed.

:meth:`prepare` copies the input into a static device buffer of its shape, capturing a
``torch.cuda.CUDAGraph`` the first time it sees that shape (after a few warm-up calls on a
side stream, as the PyTorch docs prescribe). :meth:`infer` is one ``graph.replay()``: the
kernel launches of the whole forward pass become one, which is what makes small batches
fast on a launch-bound GPU.

The output is the graph's static output buffer: the next replay at the same batch size
overwrites it, so copy it (``to_numpy``) before running again.
"""

from __future__ import annotations

from typing import Any

import torch

from toolkit.runtimes.base import RUNTIMES, Runner

#: Eager calls on a side stream before capture (lazy init, cuDNN/cuBLAS autotuning).
_CAPTURE_WARMUP_CALLS = 3


@RUNTIMES.register("cuda-graph")
class CudaGraphRunner(Runner):
    """Replays one captured ``torch.cuda.CUDAGraph`` per input shape."""

    device_types = ("cuda",)

    def _load(self) -> None:
        self.module = self.eval_module()
        self.graphs: dict[tuple[int, ...], tuple[torch.Tensor, Any, torch.Tensor]] = {}

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
        static_input = x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(_CAPTURE_WARMUP_CALLS):
                self.module(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_output = self.module(static_input)
        return static_input, graph, static_output

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
        x = x.to(self.device)
        shape = tuple(x.shape)
        entry = self.graphs.get(shape)
        if entry is None:
            entry = self.graphs[shape] = self._capture(x)
        entry[0].copy_(x)
        return entry

    def _infer(self, prepared: tuple[torch.Tensor, Any, torch.Tensor]) -> torch.Tensor:
        prepared[1].replay()
        return prepared[2]

    def close(self) -> None:
        """Free the captured graphs and their static buffers."""
        self.graphs = {}
