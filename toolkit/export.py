"""Export a network to one or more formats, each in its own folder with a manifest.

``export_model`` is the library entry point (any ``nn.Module`` or LightningModule);
``export_command`` is the ``toolkit export`` verb. Before exporting, the module is put in
eval mode (the user is told; its training modes are put back afterwards), and checked for
modules left in training mode, batch-statistics BatchNorm, random ops, parameters split
across devices and a missing example input. All options (formats, exporter, opset, ...)
are checked before anything is exported. Each format is written into a hidden
``.<format>.<pid>.partial`` folder, and the folders are renamed to ``<out_dir>/<format>/``
only once every format succeeded: a failed export leaves ``out_dir`` as it was, a killed
one never leaves a partial folder under the final name, and an existing one is replaced
only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import numbers
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.atomic import (
    check_new,
    clean_stale_partials,
    leftover_name,
    output_error,
    publish_dirs,
    writable_dir,
)
from toolkit.errors import ExportError, ToolkitError, UnknownNameError, UsageError
from toolkit.formats import FORMATS
from toolkit.formats.onnx import EXPORTERS, OnnxFormat, import_onnx
from toolkit.manifest import Manifest, default_exports_dir, sha256_file, weights_sha256

#: The smallest example batch: exporters can specialise a batch of 1 to a constant.
MIN_EXAMPLE_BATCH = 2


def _say(message: str) -> None:
    print(f"export: {message}", file=sys.stderr)


def resolve_formats(formats: str | list[str] | tuple[str, ...]) -> list[str]:
    """Format names from a name, a comma-separated string, a list, or ``all``.

    Raises:
        UnknownNameError: a name is not registered (the message lists the valid ones).
    """
    items = [formats] if isinstance(formats, str) else list(formats)
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name != "all" and name not in FORMATS:
                raise UnknownNameError(f"unknown format '{name}'; available: {_format_choices()}")
            for resolved in FORMATS.names() if name == "all" else [name]:
                if resolved not in names:
                    names.append(resolved)
    if not names:
        raise UsageError(f"no format given; available: {_format_choices()}")
    return names


def _format_choices() -> str:
    return ", ".join(["all", *FORMATS.names()])


# -- option checks (all of them before anything is exported) -----------------------------
#: Fallbacks for the torch constants read by :func:`onnx_opset_range` (torch 2.11-2.14).
_LEGACY_MIN_OPSET, _LEGACY_MAX_OPSET, _DYNAMO_MIN_OPSET = 7, 20, 18
#: Formats that need a newer opset than the exporter's lowest. onnxruntime's quantizer
#: rewrites models below opset 10 to 11 (the file would not have the opset asked for), and
#: at opset 10 the int8 mlp was about 100x further from fp32 than at 11. Below opset 9 the
#: legacy exporter lists the weights as graph inputs (ONNX IR 3 needs that), which the fp16
#: converter keeps in float32: the "fp16" file held fp32 weights, as large as the fp32 one.
FORMAT_MIN_OPSET = {"onnx-int8": 11, "onnx-fp16": 9}


def _torch_constant(module: str, name: str, default: int) -> int:
    try:
        return int(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, TypeError, ValueError):
        return default


def onnx_opset_range(exporter: str, fmt: str = "onnx") -> tuple[int, int]:
    """The lowest and highest ONNX opset ``exporter`` writes correctly for ``fmt``, as installed.

    ``legacy`` (TorchScript-based): torch's ``ONNX_MIN_OPSET`` (7; below it onnxruntime has
    no kernels for the ops written) to ``ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`` (20; above
    it torch only warns). ``dynamo``: torchlib's opset (18; a lower one is silently written
    as 18) to the newest opset the installed ``onnx`` knows (a newer one is also silently
    written as 18). Both are capped by that newest opset; ``onnx-int8`` needs at least 11
    and ``onnx-fp16`` at least 9.

    Raises:
        UsageError: unknown exporter.
        MissingDependencyError: ``onnx`` is not installed.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}'; available: {', '.join(EXPORTERS)}")
    newest = int(import_onnx().defs.onnx_opset_version())
    if exporter == "legacy":
        low = _torch_constant("torch.onnx._constants", "ONNX_MIN_OPSET", _LEGACY_MIN_OPSET)
        high = _torch_constant(
            "torch.onnx._constants", "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _LEGACY_MAX_OPSET
        )
    else:
        low = _torch_constant(
            "torch.onnx._internal.exporter._constants", "TORCHLIB_OPSET", _DYNAMO_MIN_OPSET
        )
        high = newest
    return max(low, FORMAT_MIN_OPSET.get(fmt, low)), min(high, newest)


def _check_flag(options: dict[str, Any], key: str, allow_none: bool = False) -> None:
    value = options.get(key)
    if key not in options or isinstance(value, bool) or (allow_none and value is None):
        return
    raise UsageError(f"{key} must be true or false, got {value!r}")


#: Options every format accepts (each uses those that apply to it). A registered format
#: class may name more of its own in an ``extra_options`` tuple.
FORMAT_OPTIONS = ("exporter", "opset", "script", "per_channel", "external_data")


def check_format_options(names: list[str], options: dict[str, Any]) -> None:
    """Refuse bad format options up front, so that a bad one never leaves a half-done export.

    ``exporter`` and ``opset`` are checked when an ONNX format is among ``names``, and
    refused (as ``script`` is without torchscript) when none is: the exporter must exist
    and the opset be one it writes correctly for each of those formats
    (:func:`onnx_opset_range`). ``script``, ``per_channel`` and ``external_data`` must be
    booleans (``external_data`` may also be None).

    Raises:
        UsageError: an unknown exporter, an opset out of range, or a mistyped or unknown
            option (a misspelled ``opset_version=13`` was ignored without a word).
    """
    known = set(FORMAT_OPTIONS).union(
        *(getattr(FORMATS.get(name), "extra_options", ()) for name in names)
    )
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"unknown export option(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}"
        )
    _check_flag(options, "script")
    _check_flag(options, "per_channel")
    _check_flag(options, "external_data", allow_none=True)
    onnx_names = [name for name in names if issubclass(FORMATS.get(name), OnnxFormat)]
    if options.get("script") and "torchscript" not in names:
        raise UsageError("--script applies to the torchscript format, which is not exported")
    if not onnx_names:
        exporter = options.get("exporter", "dynamo")
        for given, what in ((options.get("opset") is not None, "--opset"),
                            (exporter != "dynamo", "--exporter")):  # fmt: skip
            if given:
                raise UsageError(f"{what} applies to the ONNX formats, and none is exported")
        return
    exporter = options.get("exporter", "dynamo")
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}'; available: {', '.join(EXPORTERS)}")
    opset = options.get("opset")
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise UsageError(f"opset must be a whole number, got {opset!r}")
    for name in onnx_names:
        low, high = onnx_opset_range(exporter, name)
        if low <= opset <= high:
            continue
        message = f"opset {opset} is out of range for {name} with the {exporter} exporter"
        message += f": use {low} to {high}"
        for other in EXPORTERS:
            other_low, other_high = onnx_opset_range(other, name)
            if other != exporter and other_low <= opset <= other_high:
                message += f" (or --exporter {other}, which writes {other_low} to {other_high})"
        raise UsageError(message)


# -- pre-export checks ------------------------------------------------------------------
def _is_lightning_module(model: nn.Module) -> bool:
    return any(cls.__name__ == "LightningModule" for cls in type(model).__mro__)


def _unwrap(
    model: nn.Module, example_input: torch.Tensor | None
) -> tuple[nn.Module, torch.Tensor | None]:
    """A LightningModule → its plain ``.model`` and its ``example_input_array``."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"can only export an nn.Module, got {type(model).__name__}")
    if not _is_lightning_module(model):
        return model, example_input
    if example_input is None:
        example_input = getattr(model, "example_input_array", None)
    inner = getattr(model, "model", None)
    return (inner if isinstance(inner, nn.Module) else model), example_input


def check_example_input(module: nn.Module, example_input: Any) -> torch.Tensor:
    """A float32 CPU batch of at least 2, built from ``input_shape`` when none is given.

    Raises:
        UsageError: no example input and no ``input_shape`` to build one, or a wrong type.
    """
    name = type(module).__name__
    if isinstance(example_input, tuple | list) and len(example_input) == 1:
        example_input = example_input[0]
    if example_input is None:
        shape = getattr(module, "input_shape", None)
        if shape is None:
            raise UsageError(
                f"no example input for {name}: pass example_input (a batch of the "
                "network's input, e.g. torch.rand(1, 1, 28, 28)) or set example_input_array "
                "on the LightningModule"
            )
        generator = torch.Generator().manual_seed(0)
        example_input = torch.rand(MIN_EXAMPLE_BATCH, *shape, generator=generator)
        _say(f"no example input given; using a random batch of shape {tuple(example_input.shape)}")
    if not isinstance(example_input, torch.Tensor):
        raise UsageError(
            f"the example input must be one tensor, got {type(example_input).__name__}"
        )
    if example_input.dtype != torch.float32 or example_input.dim() < 2:
        raise UsageError(
            "the example input must be a float32 batch (batch, ...), got "
            f"{example_input.dtype} of shape {tuple(example_input.shape)}"
        )
    declared = getattr(module, "input_shape", None)
    if declared is not None and tuple(example_input.shape[1:]) != tuple(declared):
        raise UsageError(
            f"the example input's shape {tuple(example_input.shape)} does not match "
            f"{name}'s input_shape (batch, {', '.join(map(str, declared))}); verify and "
            "bench feed the network that shape"
        )
    # a copy: a forward that changes its input in place must not change the caller's tensor
    example = example_input.detach().cpu().clone(memory_format=torch.contiguous_format)
    if example.shape[0] < MIN_EXAMPLE_BATCH:
        example = example.repeat(MIN_EXAMPLE_BATCH, *([1] * (example.dim() - 1)))
        _say(f"example batch of 1 repeated to {MIN_EXAMPLE_BATCH} so the batch axis stays dynamic")
    return example


def check_devices(module: nn.Module) -> nn.Module:
    """The module on CPU: a copy is moved if it lives on one other device.

    Raises:
        ExportError: parameters are split across devices, or have no data (meta).
    """
    devices = {t.device for t in (*module.parameters(), *module.buffers())}
    name = type(module).__name__
    if any(d.type == "meta" for d in devices):
        raise ExportError(f"{name} has parameters on the meta device (no data); load weights")
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise ExportError(
            f"{name} has parameters split across devices ({listed}); move it to one "
            "device (model.cpu()) before exporting"
        )
    if devices and next(iter(devices)).type != "cpu":
        _say(f"exporting a CPU copy of {name} (it is on {next(iter(devices))})")
        return copy.deepcopy(module).cpu()
    return module


@contextlib.contextmanager
def training_modes_kept(model: nn.Module) -> Iterator[None]:
    """Put every submodule of ``model`` back in the training mode it had, on exit.

    Exporting switches the network to eval mode; a model exported between training
    epochs must go on training with Dropout and BatchNorm as they were (as
    ``torch.onnx.export`` does).
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def put_in_eval_mode(module: nn.Module) -> None:
    """Call ``eval()``, say so, and check that no submodule stayed in training mode.

    Raises:
        ExportError: a submodule is still in training mode (an overridden ``train``/``eval``),
            or a BatchNorm uses batch statistics even in eval mode.
    """
    name = type(module).__name__
    module.eval()
    _say(f"put {name} in eval mode for export")
    training = [
        f"'{n or '<root>'}' ({type(m).__name__})" for n, m in module.named_modules() if m.training
    ]
    if training:
        shown = ", ".join(training[:5]) + (
            f", … ({len(training)} in all)" if len(training) > 5 else ""
        )
        raise ExportError(
            f"{name}: still in training mode after eval(): {shown}; Dropout/BatchNorm would "
            "be exported with their training behaviour (check overridden train()/eval())"
        )
    batch_stats = [
        f"'{n}'"
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
    ]
    if batch_stats:
        raise ExportError(
            f"{name}: BatchNorm {', '.join(batch_stats)} has track_running_stats=False, so "
            "even in eval mode its outputs depend on the rest of the batch"
        )


def check_forward(module: nn.Module, example: torch.Tensor) -> None:
    """Run the example twice: one tensor of class scores, the same both times.

    Raises:
        ExportError: the forward fails, returns no single tensor, no (batch, classes)
            scores with at least 2 classes, or is random.
    """
    from toolkit.parity import class_scores_problem

    name = type(module).__name__
    try:
        with torch.no_grad():  # each call on its own copy: a forward may change its input
            first, second = module(example.clone()), module(example.clone())
    except Exception as exc:
        raise ExportError(
            f"{name} fails on the example input of shape {tuple(example.shape)}: {exc}"
        ) from exc
    if not isinstance(first, torch.Tensor):
        raise ExportError(f"{name} must return one tensor (logits), got {type(first).__name__}")
    problem = class_scores_problem(first.shape, len(example))
    if problem is not None:
        raise ExportError(f"{name} {problem}")
    if not torch.equal(first, second):
        raise ExportError(
            f"{name} gives different outputs for the same input in eval mode (random ops "
            "such as F.dropout(training=True)?); the export would not match"
        )


def _note_lightning_forward(
    lightning_module: nn.Module, network: nn.Module, x: torch.Tensor
) -> None:
    """Say so when a LightningModule's own forward differs from its network's."""
    try:
        with torch.no_grad():
            outer = lightning_module.eval()(x.clone())
            inner = network(x.clone())
    except Exception:
        return
    if (
        isinstance(outer, torch.Tensor)
        and outer.shape == inner.shape
        and torch.allclose(outer.cpu(), inner, rtol=1e-5, atol=1e-6)
    ):
        return
    outer_name, inner_name = type(lightning_module).__name__, type(network).__name__
    _say(
        f"note: {outer_name}.forward gives other outputs than its network {inner_name}; "
        f"only {inner_name} is exported (move the extra steps into the network to keep them)"
    )


@contextlib.contextmanager
def _traceable(module: nn.Module) -> Iterator[None]:
    """Let a LightningModule be traced without a Trainer, as its own to_torchscript does.

    Tracing reads every attribute, and ``LightningModule.trainer`` raises when no Trainer
    is attached unless ``_jit_is_scripting`` is set.
    """
    if not _is_lightning_module(module) or "_jit_is_scripting" in vars(module):
        yield
        return
    module._jit_is_scripting = True
    try:
        yield
    finally:
        del module._jit_is_scripting


def prepare_for_export(
    model: nn.Module, example_input: torch.Tensor | None
) -> tuple[nn.Module, torch.Tensor, str]:
    """The plain module (eval mode, CPU), a checked example input, and the weights' sha256.

    The hash is taken before any forward call, since a forward may update buffers.
    """
    network, example = _unwrap(model, example_input)
    module = check_devices(network)
    example = check_example_input(module, example)
    put_in_eval_mode(module)
    weights = weights_sha256(module)
    check_forward(module, example)
    if network is not model:
        _note_lightning_forward(model, module, example)
    return module, example, weights


# -- atomic per-format folders -------------------------------------------------------------
def stage_one(
    name: str,
    module: nn.Module,
    example: torch.Tensor,
    out_dir: Path,
    provenance: dict[str, Any],
    options: dict[str, Any],
) -> tuple[Path, Manifest]:
    """Export one format into a hidden staging folder in ``out_dir``, with its manifest.

    Returns the staging folder (for :func:`~toolkit.atomic.publish_dirs`) and the manifest.
    On failure the staging folder is removed and the exporter's warnings are dropped, so
    the error stays one line; on success the warnings are shown.

    Raises:
        ExportError: the export failed, or wrote another opset than the one asked for.
        OutputError: the staging folder cannot be written.
    """
    fmt = FORMATS.get(name)()
    staging = leftover_name(out_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            manifest = fmt.export(module, example.clone(), staging, **options)
        manifest.export_seconds = round(time.perf_counter() - start, 4)
        opset = options.get("opset")
        if opset is not None and manifest.opset is not None and manifest.opset != opset:
            raise ExportError(
                f"the {name} export wrote ONNX opset {manifest.opset}, not the {opset} asked for"
            )
        for key, value in provenance.items():
            setattr(manifest, key, value)
        manifest.save(staging)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(out_dir / name, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return staging, manifest


def export_one(
    name: str,
    module: nn.Module,
    example: torch.Tensor,
    out_dir: Path,
    overwrite: bool,
    provenance: dict[str, Any],
    options: dict[str, Any],
) -> Manifest:
    """Export one format into ``out_dir/<name>/`` atomically; returns its manifest."""
    return _export_all([name], module, example, out_dir, overwrite, provenance, options)[name]


def _export_all(
    names: list[str],
    module: nn.Module,
    example: torch.Tensor,
    out_dir: Path,
    overwrite: bool,
    provenance: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Manifest]:
    """Stage every format, then publish them together: all of them, or none."""
    for name in names:
        check_new(out_dir / name, overwrite)
    staged: dict[str, tuple[Path, Manifest]] = {}
    try:
        for name in names:
            staged[name] = stage_one(name, module, example, out_dir, provenance, options)
        moves = [(staging, out_dir / name) for name, (staging, _) in staged.items()]
        publish_dirs(moves, overwrite)
    except OSError as exc:
        raise output_error(out_dir, exc) from None
    finally:
        for staging, _ in staged.values():
            if os.path.lexists(staging):  # not published: the export failed or was stopped
                shutil.rmtree(staging, ignore_errors=True)
    return {name: manifest for name, (_, manifest) in staged.items()}


def export_model(
    model: nn.Module,
    example_input: torch.Tensor | None,
    formats: list[str] | str,
    out_dir: str | Path,
    overwrite: bool = False,
    source_checkpoint: str | Path | None = None,
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
    **format_options: Any,
) -> dict[str, Manifest]:
    """Export a network to each format in ``out_dir/<format>/`` (artifact + manifest.json).

    The network is exported in eval mode; every submodule's training mode is put back
    afterwards, whether the export succeeded or not.

    All options are checked before anything is exported. Every format is built in a
    hidden staging folder, and the folders are renamed into place only once all of them
    succeeded: a failed export leaves ``out_dir`` as it was.

    Args:
        model: A plain ``nn.Module`` or a LightningModule (its ``.model`` is exported).
        example_input: A float32 batch; None takes the LightningModule's
            ``example_input_array`` or builds one from the network's ``input_shape``.
        formats: Format names, a comma-separated string, or ``all``.
        out_dir: Parent folder of the per-format folders.
        overwrite: Replace existing format folders (only once the new ones are complete).
        source_checkpoint: The weights file the network came from (hashed into the manifest;
            recorded as an absolute path).
        network: Registry name of the network, recorded in the manifest.
        network_kwargs: Its constructor kwargs, recorded in the manifest.
        format_options: Passed to every format (``exporter``, ``opset``, ``script``, ...).

    Returns:
        Format name → manifest, in the order exported.

    Raises:
        UsageError: unknown format or exporter, an opset out of range, missing example
            input, or an existing output.
        ExportError: the model cannot be exported correctly.
    """
    names = resolve_formats(formats)
    check_format_options(names, format_options)
    if source_checkpoint is not None:  # hashed into every manifest: read before any work
        from toolkit.reload import check_is_file

        check_is_file(source_checkpoint)
    for name in names:  # refuse before any work
        check_new(Path(out_dir) / name, overwrite)
    # A folder made here is removed again if the export fails.
    with writable_dir(out_dir) as out_dir, training_modes_kept(model):
        module, example, weights = prepare_for_export(model, example_input)
        clean_stale_partials(out_dir)
        provenance = {
            "network": network,
            "network_kwargs": dict(network_kwargs or {}),
            # absolute: messages that name it must not depend on where export ran
            "source_checkpoint": os.path.abspath(source_checkpoint) if source_checkpoint else None,
            "source_sha256": sha256_file(source_checkpoint) if source_checkpoint else None,
            "weights_sha256": weights,  # before any forward call or format touches it
        }
        with _traceable(module):
            return _export_all(
                names, module, example, out_dir, overwrite, provenance, format_options
            )


def _note_other_weights(out_dir: Path, manifests: dict[str, Manifest]) -> None:
    """Name the format folders in ``out_dir`` left from other weights by a partial export."""
    from toolkit.manifest import from_other_weights
    from toolkit.parity import artifact_folders

    weights = next(iter(manifests.values())).weights_sha256 if manifests else None
    for folder in artifact_folders(out_dir):
        if folder.name in manifests:
            continue
        try:
            other = from_other_weights(Manifest.load(folder), weights)
        except ToolkitError:
            continue
        if other is not None:
            _say(
                f"{folder} was {other.split(';')[0]}: verify fails it and bench skips "
                f"it until it is exported again (--format {folder.name} --overwrite)"
            )


def export_command(
    checkpoint: str,
    format: list[str] | str = "all",
    output_dir: str | None = None,
    exporter: str = "dynamo",
    opset: int | None = None,
    script: bool = False,
    overwrite: bool = False,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    trust_pickled_file: bool = False,
) -> dict[str, Manifest]:
    """Export a trained network to ONNX, TorchScript, ExportedProgram and derived formats.

    Args:
        checkpoint: Weights file: a Lightning ``.ckpt``, a state_dict ``.pt`` or ``.safetensors``.
        format: Formats: names, comma-separated (``onnx,torchscript``), or ``all``.
        output_dir: Parent folder of the per-format folders; default exports/<run-name>
            for weights in a run folder, else exports/<folder>-<file name without suffix>.
        exporter: ONNX exporter: ``dynamo`` (default) or ``legacy`` (faster; some models need it).
        opset: ONNX opset; default: the exporter's choice.
        script: TorchScript via ``torch.jit.script`` instead of tracing.
        overwrite: Replace existing exports.
        model: Network registry name, for weights files that do not record it.
        model_kwargs: Constructor kwargs of the network (override what the file records).
        trust_pickled_file: Allow arbitrary unpickling of the checkpoint (trusted files only).

    Returns:
        Format name → manifest.
    """
    from toolkit.models import input_shape_of
    from toolkit.reload import network_from_weights, read_weights

    path = Path(checkpoint)
    names = resolve_formats(format)
    options = {"exporter": exporter, "opset": opset, "script": script}
    check_format_options(names, options)  # before reading a possibly large checkpoint
    weights = read_weights(path, trust_pickled_file)  # read once: large checkpoints
    _, saved_name, saved_kwargs = weights
    network = network_from_weights(weights, str(path), model, model_kwargs)
    out_dir = Path(output_dir) if output_dir else default_exports_dir(path)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(MIN_EXAMPLE_BATCH, *input_shape_of(network), generator=generator)
    manifests = export_model(
        network,
        example,
        names,
        out_dir,
        overwrite=overwrite,
        source_checkpoint=path,
        network=model or saved_name,
        network_kwargs={
            **(saved_kwargs if (model or saved_name) == saved_name else {}),
            **(model_kwargs or {}),
        },
        **options,
    )
    _note_other_weights(out_dir, manifests)
    files = {name: str(out_dir / name / m.model_file) for name, m in manifests.items()}
    width = max(map(len, files.values()), default=0)
    for name, manifest in manifests.items():  # one aligned line per format
        size = sum(f.size for f in manifest.files)
        print(
            f"{name:<17} {files[name]:<{width}}  "
            f"{size / 2**20:8.2f} MiB  {manifest.export_seconds:6.2f} s"
        )
    return manifests
