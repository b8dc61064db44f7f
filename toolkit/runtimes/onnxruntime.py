"""onnxruntime: plain ``InferenceSession.run`` and ``run_with_iobinding``.

Both set the thread pools explicitly: ``intra_op_num_threads`` from ``threads``, one
inter-op thread, and no spinning (``session.intra_op.allow_spinning = 0``), so idle ORT
threads do not steal cores from the next runtime measured in the same process. On ``cuda``
they use the CUDAExecutionProvider and refuse to fall back silently to the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.errors import (
    CheckpointError,
    IntegrityError,
    MissingDependencyError,
    RuntimeUnavailableError,
    first_line,
)
from toolkit.runtimes.base import RUNTIMES, ArtifactRunner

CUDA_PROVIDER = "CUDAExecutionProvider"
#: Above this many input bytes, ``onnxruntime-iobinding`` on CPU binds the caller's array
#: instead of copying it into its own buffer: on the 2-core machine a copy costs ~1.5 µs
#: plus ~40 µs per MB and a new binding ~3.5 µs whatever the size; they cross near 64 mlp
#: samples (200 KB).
HOST_COPY_MAX_BYTES = 256 * 1024
CPU_PROVIDER = "CPUExecutionProvider"


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or a clear error naming the package."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "the onnxruntime runtimes need onnxruntime: pip install onnxruntime "
            "(or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def _load_errors(ort: Any) -> tuple[type[BaseException], ...]:
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile")
    names += ("NotImplemented", "RuntimeException")
    return (RuntimeError, ValueError, OSError, *(getattr(state, n) for n in names))


@RUNTIMES.register("onnxruntime")
class OnnxRuntimeRunner(ArtifactRunner):
    """Runs an ONNX artifact with ``InferenceSession.run`` on host numpy arrays."""

    name = "onnxruntime"
    device_types = ("cpu", "cuda")
    model_suffix = ".onnx"

    def providers(self, ort: Any) -> list[Any]:
        """Execution providers for ``self.device`` (CUDA first on cuda, else CPU only)."""
        if self.device.type != "cuda":
            return [CPU_PROVIDER]
        available = ort.get_available_providers()
        if CUDA_PROVIDER not in available:
            raise RuntimeUnavailableError(
                f"runtime '{self.name}' cannot run on {self.device}: this onnxruntime has no "
                f"{CUDA_PROVIDER} (it has {', '.join(available)}); pip install onnxruntime-gpu"
            )
        return [(CUDA_PROVIDER, {"device_id": self.device.index or 0}), CPU_PROVIDER]

    def session_options(self, ort: Any) -> Any:
        """SessionOptions with explicit, non-spinning thread pools."""
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        return options

    def _check_precision(self, path: Path) -> None:
        """The graph must compute in the precision its manifest's format stands for.

        The format picks the parity tolerances: an fp32 graph whose manifest was edited to
        say ``onnx-int8`` would otherwise be judged by int8's loose ones.
        """
        from toolkit.formats import FORMATS
        from toolkit.formats.onnx import onnx_precision

        expected = getattr(FORMATS.get(self.manifest.format), "kind", None)
        if expected is None:
            return
        try:
            found = onnx_precision(path)
        except Exception:  # not a readable graph: onnxruntime's load names the problem
            return
        if found is not None and found != expected:
            raise IntegrityError(
                f"{path} holds an {found} graph, but its manifest says format "
                f"'{self.manifest.format}' ({expected}); export it again"
            )

    def _load_artifact(self, path: Path) -> None:
        self._check_precision(path)
        ort = import_onnxruntime()
        providers = self.providers(ort)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=self.session_options(ort), providers=providers
            )
        except _load_errors(ort) as exc:
            raise CheckpointError(
                f"onnxruntime cannot load {path} ({first_line(exc)}); export it again"
            ) from None
        if self.device.type == "cuda" and self.session.get_providers()[0] != CUDA_PROVIDER:
            raise RuntimeUnavailableError(
                f"onnxruntime fell back to {self.session.get_providers()[0]} for {path}; "
                "check the CUDA and cuDNN libraries onnxruntime-gpu needs"
            )
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [self.manifest.input_name] or outputs != list(self.manifest.output_names):
            # The manifest tells users how to feed the model: it must say what the graph does.
            raise CheckpointError(
                f"{path} takes {inputs} and gives {outputs}, but its manifest says "
                f"{[self.manifest.input_name]} and {list(self.manifest.output_names)}; "
                "export it again"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]

    def _prepare(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().contiguous().numpy()

    def _infer(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: prepared})[0]


@RUNTIMES.register("onnxruntime-iobinding")
class OnnxRuntimeIOBindingRunner(OnnxRuntimeRunner):
    """Runs an ONNX artifact with ``run_with_iobinding`` on an input bound ahead of time.

    A binding is made once per input shape and kept, and a new batch of that shape is fed
    the cheaper of two ways, as a deployment feeding new inputs would (so
    ``--include_copies`` times that and not the building of a new binding):

    * on CUDA, and on CPU for inputs up to :data:`HOST_COPY_MAX_BYTES`, it is copied into
      the binding's own buffer (on CPU ~1.5 µs for one mlp sample);
    * on CPU for larger inputs the binding is pointed at the caller's memory, which is not
      copied and not written to (~3.5 µs whatever the size, where copying 256 mlp samples
      takes ~12 µs). The plain ``onnxruntime`` runner does not copy its input either.

    The output stays in ORT's memory until :meth:`to_numpy`. A prepared input holds until
    the next :meth:`prepare` of its shape, and an output of :meth:`infer` until the next
    :meth:`infer`; ``runner(x)`` returns a copy of its own.
    """

    name = "onnxruntime-iobinding"

    def _load_artifact(self, path: Path) -> None:
        super()._load_artifact(path)
        self._bound: dict[tuple[int, ...], tuple[Any, Any]] = {}  # input shape -> binding
        # the same, bound to callers' memory: (binding, the array it reads)
        self._in_place: dict[tuple[int, ...], tuple[Any, np.ndarray]] = {}

    def _prepare(self, x: torch.Tensor) -> tuple[Any, Any]:
        bound, key = self._bound, tuple(x.shape)
        if self.device.type != "cuda" and x.nelement() * 4 > HOST_COPY_MAX_BYTES:
            return self._bind_in_place(key, x.detach().cpu().contiguous().numpy())
        if key in bound:
            binding, buffer = bound[key]
            if self.device.type == "cuda":
                buffer.copy_(x.detach())  # into the bound memory, on torch's stream,
                torch.cuda.current_stream(self.device).synchronize()  # done before ORT reads
            else:
                buffer.update_inplace(x.detach().cpu().contiguous().numpy())
            return binding, buffer
        bound[key] = self._bind(x)
        return bound[key]

    def _bind_in_place(self, key: tuple[int, ...], array: np.ndarray) -> tuple[Any, Any]:
        """Point the CPU binding for ``key`` at ``array``'s memory; ORT only reads it.

        The binding keeps ``array`` until it is bound to the next one: an earlier prepared
        input of this shape then runs on the newer batch, never on freed memory.
        """
        binding = self._in_place.get(key, (None,))[0]
        if binding is None:
            binding = self.session.io_binding()
            binding.bind_output(self.output_name, "cpu")
        self._in_place[key] = (binding, array)
        binding.bind_input(
            name=self.input_name,
            device_type="cpu",
            device_id=0,
            element_type=np.float32,
            shape=array.shape,
            buffer_ptr=array.ctypes.data,
        )
        return binding, array  # the array must outlive the binding's use

    def _bind(self, x: torch.Tensor) -> tuple[Any, Any]:
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        if self.device.type == "cuda":
            # A buffer of its own: later batches of this shape are copied into it, which
            # must never write into the caller's tensor (``.to`` may return that tensor).
            tensor = torch.empty(tuple(x.shape), dtype=torch.float32, device=self.device)
            tensor.copy_(x.detach())
            torch.cuda.current_stream(self.device).synchronize()
            device_id = self.device.index or 0
            binding.bind_input(
                name=self.input_name,
                device_type="cuda",
                device_id=device_id,
                element_type=np.float32,
                shape=tuple(tensor.shape),
                buffer_ptr=tensor.data_ptr(),
            )
            binding.bind_output(self.output_name, "cuda", device_id)
            return binding, tensor  # the tensor must outlive the binding
        # An array of its own: the OrtValue shares its memory, and later batches of this
        # shape are copied into it, which must never write into the caller's tensor.
        owned = np.array(x.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)
        value = ort.OrtValue.ortvalue_from_numpy(owned)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cpu")
        return binding, value

    def _infer(self, prepared: tuple[Any, Any]) -> Any:
        binding = prepared[0]
        self.session.run_with_iobinding(binding)
        return binding

    def to_numpy(self, output: Any) -> np.ndarray:
        """Copy the bound output to the host as float32."""
        if hasattr(output, "copy_outputs_to_cpu"):
            return np.asarray(output.copy_outputs_to_cpu()[0], dtype=np.float32)
        return super().to_numpy(output)
