"""``torch-compile``: the eager network through ``torch.compile`` (Inductor).

Compilation happens lazily, on the first call at each input shape. This runner makes it
happen in :meth:`prepare` (a few untimed calls at that shape), so the first-call latency
of a benchmark includes the compile time (cold start) and the timed calls do not. A
recompile after that, during measurement, is an error (:class:`RecompileError`): the
figures would otherwise mix compile time with inference time.
"""

from __future__ import annotations

from typing import Any

import torch

from toolkit.runtimes.base import RUNTIMES, Runner

#: Untimed calls at a new input shape, enough to trigger every (re)compile.
_SHAPE_WARMUP_CALLS = 3


class RecompileError(RuntimeError):
    """``torch.compile`` recompiled while the benchmark was measuring."""


@RUNTIMES.register("torch-compile")
class TorchCompileRunner(Runner):
    """Runs ``torch.compile(module, mode=...)`` under ``torch.inference_mode``.

    Options:
        mode: ``torch.compile`` mode (default ``"default"``; ``"reduce-overhead"`` uses
            CUDA graphs on CUDA, ``"max-autotune"``).
        dynamic: ``torch.compile``'s ``dynamic`` argument (default None: automatic).
    """

    device_types = ("cpu", "cuda")

    def _load(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.module = self.eval_module()
        mode = self.options.get("mode", "default")
        inductor = torch._TorchCompileInductorWrapper(mode, None, self.options.get("dynamic"))
        self.compiles = 0
        self._sealed_compiles = 0
        self._warm_shapes: set[tuple[int, ...]] = set()

        def counting_backend(graph: Any, example_inputs: Any) -> Any:
            # Counting backend calls is how a recompile during measurement is caught.
            self.compiles += 1
            return inductor(graph, example_inputs)

        _import_cpp_extension_quietly()
        self.compiled = torch.compile(
            self.module, backend=counting_backend, dynamic=self.options.get("dynamic")
        )

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        shape = tuple(x.shape)
        if shape not in self._warm_shapes:
            with torch.inference_mode():
                for _ in range(_SHAPE_WARMUP_CALLS):
                    self.compiled(x)
            self._warm_shapes.add(shape)
            self._sealed_compiles = self.compiles
        return x

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.compiled(prepared)
        if self.compiles != self._sealed_compiles:
            raise RecompileError(
                f"torch.compile recompiled for input shape {tuple(prepared.shape)} after "
                "warm-up; warm up at every timed shape (prepare() does this)"
            )
        return out


def _import_cpp_extension_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor does, at its first compile) without its
    import-time warning "No CUDA runtime is found, using CUDA_HOME=...": it is logged on
    every CPU-only machine that has a CUDA folder, and says nothing a CPU user can act on."""
    import logging
    import sys

    if "torch.utils.cpp_extension" in sys.modules:
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.setLevel(level)
