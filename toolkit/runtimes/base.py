"""The runner protocol: one subclass per runtime, registered by name in ``RUNTIMES``.

The base class owns loading (timed, after an integrity check), device placement, input
checks, warm-up and synchronisation; a subclass writes ``_load``, ``_prepare`` and
``_infer`` only. ``parity`` and ``bench`` see nothing but this interface.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from toolkit.errors import UsageError
from toolkit.manifest import BATCH_AXIS, Manifest
from toolkit.registry import Registry


class Runner(abc.ABC):
    """Runs one model in one runtime on one device.

    Args:
        source: What to run: an artifact folder (with ``manifest.json``) or an ``nn.Module``.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        input_shape: Per-sample input shape; taken from the manifest when there is one.
        threads: Intra-op threads; None leaves the runtime's default (callers set it).
        options: Runtime-specific options.
    """

    name: ClassVar[str]
    #: Device types this runtime can run on.
    device_types: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(
        self,
        source: Any,
        device: str = "cpu",
        input_shape: tuple[int, ...] | None = None,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        self.source = source
        self.device = torch.device(device)
        if self.device.type not in self.device_types:
            raise UsageError(
                f"runtime '{self.name}' does not run on {device}; it supports "
                f"{', '.join(self.device_types)}"
            )
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.threads = threads
        self.options = options
        self.load_seconds: float | None = None
        self._loaded = False

    # -- protocol -----------------------------------------------------------------------
    def load(self) -> float:
        """Load the model (once); returns the load time in seconds."""
        if not self._loaded:
            start = time.perf_counter()
            self._load()
            self.load_seconds = time.perf_counter() - start
            self._loaded = True
        return float(self.load_seconds or 0.0)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear :class:`UsageError` for a wrong dtype or per-sample shape."""
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            dtype = getattr(x, "dtype", type(x).__name__)
            raise UsageError(f"{self.name}: inputs must be float32 tensors, got {dtype}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise UsageError(
                f"{self.name}: input shape {tuple(x.shape)} does not match the model's "
                f"(batch, {', '.join(map(str, self.input_shape))})"
            )

    def prepare(self, x: torch.Tensor) -> Any:
        """Check ``x`` and place it where :meth:`infer` wants it (on the device)."""
        self.load()
        self.check_input(x)
        return self._prepare(x)

    def infer(self, prepared: Any) -> Any:
        """Run on prepared input; returns the runtime's native output (not synchronised)."""
        return self._infer(prepared)

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def to_numpy(self, output: Any) -> np.ndarray:
        """Native output → float32 numpy array on the host."""
        if isinstance(output, torch.Tensor):
            return output.detach().float().cpu().numpy()
        return np.asarray(output, dtype=np.float32)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Check, place, run and return the logits as a float32 numpy array."""
        output = self.infer(self.prepare(x))
        self.synchronize()
        return self.to_numpy(output)

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the model (optional)."""

    def eval_module(self) -> nn.Module:
        """``source`` in eval mode on ``self.device``, leaving the caller's module as it was.

        The module itself is used when it is already there and in eval mode; otherwise a
        copy is moved and switched (a module that cannot be copied is used itself).

        Raises:
            UsageError: ``source`` is not an ``nn.Module``.
        """
        module = self.source
        if not isinstance(module, nn.Module):
            kind = type(module).__name__
            raise UsageError(f"runtime '{self.name}' needs an nn.Module, got {kind}")
        where = {t.device for t in (*module.parameters(), *module.buffers())}
        there = all(
            d.type == self.device.type and self.device.index in (None, d.index) for d in where
        )
        if there and not any(m.training for m in module.modules()):
            return module
        with contextlib.suppress(Exception):  # uncopyable: run the caller's module itself
            module = copy.deepcopy(module)
        return module.to(self.device).eval()

    # -- subclass hooks -----------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Load the artifact or module onto ``self.device``."""

    def _prepare(self, x: torch.Tensor) -> Any:
        return x.to(self.device)

    @abc.abstractmethod
    def _infer(self, prepared: Any) -> Any:
        """Run the model once."""


RUNTIMES: Registry[type[Runner]] = Registry("runtime", name_attribute="name")


def artifact_folder(source: Any) -> Path:
    """The artifact folder a runner was given (raises for anything else)."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        return Path(source)
    raise UsageError(f"expected an exported artifact folder, got {source!r}")


class ArtifactRunner(Runner):
    """A runner for an exported artifact folder (``manifest.json`` plus its files).

    The manifest is read on construction (so ``input_shape`` is known before loading);
    :meth:`load` checks every file's sha256 against it before ``_load_artifact`` runs.
    """

    #: Suffix of the model files this runtime loads (".onnx", ".pt", ".pt2").
    model_suffix: ClassVar[str]

    def __init__(
        self,
        source: Any,
        device: str = "cpu",
        input_shape: tuple[int, ...] | None = None,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(source, device, input_shape, threads, **options)
        self.folder = artifact_folder(source)
        self.manifest = Manifest.load(self.folder)
        if not self.manifest.model_file.endswith(self.model_suffix):
            raise UsageError(
                f"runtime '{self.name}' cannot run {self.folder}: it holds a "
                f"'{self.manifest.format}' artifact ({self.manifest.model_file})"
            )
        if self.input_shape is None:
            self.input_shape = tuple(int(s) for s in self.manifest.input_shape if s != BATCH_AXIS)

    @property
    def model_path(self) -> Path:
        """The artifact's main file."""
        return self.folder / self.manifest.model_file

    def _load(self) -> None:
        self.manifest.verify_files(self.folder)
        self._load_artifact(self.model_path)

    @abc.abstractmethod
    def _load_artifact(self, path: Path) -> None:
        """Load the (verified) model file onto ``self.device``."""
