"""Reload a trained network from a Lightning ``.ckpt``, a state_dict ``.pt`` or ``.safetensors``.

Nothing is unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``)
unless the caller passes ``trust_pickled_file=True`` for a file it trusts.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.errors import CheckpointError, UnsafeFileError, UsageError, first_line
from toolkit.manifest import RUN_INFO
from toolkit.models import build_model

#: Prefix of the network's keys inside a LightningModel state_dict.
MODEL_PREFIX = "model."


def read_torch_file(path: str | Path, trust_pickled_file: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``, mapping failures to user errors.

    Raises:
        UnsafeFileError: the file holds pickled objects that could run code.
        CheckpointError: the file is missing, truncated or not a torch file.
    """
    path = Path(path)
    check_is_file(path)
    artifact = _artifact_kind(path)
    if artifact:
        raise CheckpointError(
            f"{path} is an exported {artifact} artifact, not weights; give the run's .ckpt, "
            "state_dict .pt or .safetensors (toolkit verify checks artifacts)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickled_file)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # A complete torch zip file whose pickle is refused carries objects beyond tensors;
        # random or truncated bytes are not a zip and name no global.
        if zipfile.is_zipfile(path) or "global" in text.lower():
            # torch's text goes on to advise add_safe_globals: Python, not for a CLI user.
            named = re.search(r"GLOBAL ([\w.]+)", text)
            detail = f" ({named.group(1)})" if named else ""
            raise UnsafeFileError(
                f"refusing to load {path}: it holds pickled Python objects that could run "
                f"code{detail}; save torch.save(model.state_dict(), PATH) instead, or pass "
                "--trust_pickled_file only if you trust its source"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable torch file (corrupt or truncated)"
        ) from None
    except (ModuleNotFoundError, AttributeError) as exc:
        if not trust_pickled_file:
            raise CheckpointError(f"{path} is not a readable torch file ({exc})") from None
        # A trusted pickle of an object whose class lives in the user's own code.
        raise CheckpointError(
            f"{path} holds a pickled object whose class cannot be imported here "
            f"({first_line(exc)}); run from the folder of the code that saved it (or set "
            "PYTHONPATH), or save torch.save(model.state_dict(), PATH) instead"
        ) from None
    except Exception as exc:
        # Damaged bytes reach torch's legacy unpickler, which fails with whatever its stack
        # machine trips on (IndexError, TypeError, struct.error, ...). With weights_only the
        # unpickler builds nothing but tensors and containers, so any failure here means an
        # unreadable file, never a half-run object.
        reason = first_line(exc)
        detail = "" if reason.isdigit() else f" ({reason})"  # the unpickler's bare opcodes
        raise CheckpointError(f"{path} is not a readable torch file{detail}") from None


def _artifact_kind(path: Path) -> str | None:
    """``ONNX``, ``TorchScript`` or ``ExportedProgram`` when ``path`` is such an export (which
    ``torch.load`` would call corrupt, or hand to ``torch.jit.load``), else None."""
    if path.suffix == ".onnx":
        return "ONNX"
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    parts = {part for name in names for part in name.split("/")[1:2]}
    if "code" in parts or "constants.pkl" in parts:
        return "TorchScript"
    if any(name.endswith("archive_format") or "/data/weights/" in name for name in names):
        return "ExportedProgram"
    return None


def check_is_file(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an existing file (not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the weights file in it")
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:  # some readers (safetensors) report an unreadable file as a missing one
        path.open("rb").close()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a ``.safetensors`` file: (tensors, metadata)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_is_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors, metadata


def _strip_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    if state_dict and all(key.startswith(MODEL_PREFIX) for key in state_dict):
        return {key[len(MODEL_PREFIX) :]: value for key, value in state_dict.items()}
    return {k[len(MODEL_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when the file is missing, unreadable, not UTF-8,
    not JSON or not an object (``run.json`` and sidecars only add to what a file says).

    A file that exists but is not used says so once, as a ``note:`` line on stderr: its
    recorded network, data set or seed would otherwise be left out without a word.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _note_ignored(path, exc.strerror or type(exc).__name__)
        return {}
    except UnicodeDecodeError:
        _note_ignored(path, "not UTF-8 text")
        return {}
    except ValueError:  # JSONDecodeError
        _note_ignored(path, "not JSON")
        return {}
    if not isinstance(data, dict):
        _note_ignored(path, "not a JSON object")
        return {}
    return data


_NOTED: set[str] = set()


def _note_ignored(path: Path, why: str) -> None:
    """One ``note:`` line per file and process: several steps of a command read run.json."""
    key = os.path.abspath(path)
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"note: ignoring {path}: {why}", file=sys.stderr)


def text_fields(info: dict[str, Any]) -> dict[str, str]:
    """The fields of a ``run.json`` that hold text (data set, data folder, precision, ...):
    a hand-edited file's other values are ignored rather than used as paths or names."""
    return {key: value for key, value in info.items() if isinstance(value, str)}


def _sidecar(path: Path) -> dict[str, Any]:
    for candidate in (path.with_suffix(".json"), path.parent / RUN_INFO):
        if candidate.is_file():
            return read_json_object(candidate)
    return {}


def _network_fields(name: Any, kwargs: Any, source: str) -> tuple[str | None, dict[str, Any]]:
    """The network name and kwargs a file records, checked: a string and a JSON object."""
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{source} records a network name that is not text: {name!r}")
    if isinstance(kwargs, str):  # safetensors metadata holds JSON text
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            raise CheckpointError(f"{source} records network_kwargs that are not JSON") from None
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{source} records network_kwargs that are not an object: {kwargs!r}")
    return name, dict(kwargs)


def _check_tensors(state_dict: dict[Any, Any], path: Path) -> None:
    if not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError(f"{path} is not a state_dict: its keys are not all names")
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a state_dict: its values are not all tensors")


def read_weights(
    path: str | Path, trust_pickled_file: bool = False
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """Read a network's weights and, where the file says, its registry name and kwargs.

    Returns:
        (state_dict of the bare network, network name or None, network kwargs).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        name, kwargs = _network_fields(
            metadata.get("network"), metadata.get("network_kwargs"), str(path)
        )
        return tensors, name, kwargs
    obj = read_torch_file(path, trust_pickled_file)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict or checkpoint"
        )
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        hparams = obj.get("hyper_parameters") or {}
        if not isinstance(hparams, dict):
            raise CheckpointError(f"{path} has hyper_parameters that are not a mapping")
        _check_tensors(obj["state_dict"], path)
        state_dict = _strip_prefix(obj["state_dict"])
        name, kwargs = _network_fields(
            hparams.get("network"), hparams.get("network_kwargs"), str(path)
        )
        return state_dict, name, kwargs
    if path.suffix == ".ckpt":
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
    _check_tensors(obj, path)
    info = _sidecar(path)
    name, kwargs = _network_fields(
        info.get("network"), info.get("network_kwargs"), f"{path}'s sidecar JSON"
    )
    return obj, name, kwargs


def is_lightning_checkpoint(path: str | Path, trust_pickled_file: bool = False) -> bool:
    """True when ``path`` is a Lightning checkpoint (a dict with a ``state_dict``), False for
    a bare state_dict ``.pt`` or a ``.safetensors`` file.

    Raises:
        CheckpointError, UnsafeFileError: as :func:`read_torch_file`.
    """
    if Path(path).suffix == ".safetensors":
        return False
    obj = read_torch_file(path, trust_pickled_file)
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise one clear error naming missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped (file vs network)", misshaped),
    ):
        if keys:
            shown = ", ".join(keys[:6]) + (f", … ({len(keys)} in all)" if len(keys) > 6 else "")
            problems.append(f"{label} keys: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit network {type(model).__name__}: {'; '.join(problems)}"
        )


def load_network(
    path: str | Path,
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
    trust_pickled_file: bool = False,
) -> nn.Module:
    """Load a network from ``.ckpt``, state_dict ``.pt`` or ``.safetensors``, in eval mode.

    Args:
        path: The weights file.
        network: Registry name; needed only when the file (or its sidecar ``run.json``)
            does not record it.
        network_kwargs: Constructor kwargs; override what the file records.
        trust_pickled_file: Allow arbitrary unpickling. Only for files you trust.

    Returns:
        The rebuilt ``nn.Module`` in eval mode, on CPU.
    """
    weights = read_weights(path, trust_pickled_file)
    return network_from_weights(weights, str(path), network, network_kwargs)


def network_from_weights(
    weights: tuple[dict[str, torch.Tensor], str | None, dict[str, Any]],
    source: str,
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the network for what :func:`read_weights` returned and load it, in eval mode.

    ``network`` and ``network_kwargs`` override the recorded name and kwargs; ``source``
    names the file in error messages.
    """
    state_dict, saved_name, saved_kwargs = weights
    name = network or saved_name
    if name is None:
        raise UsageError(
            f"{source} does not record its network; pass --model NAME (e.g. mlp), or in "
            "Python the name: model='mlp' (network='mlp' for load_network)"
        )
    kwargs = {**(saved_kwargs if saved_name in (None, name) else {}), **(network_kwargs or {})}
    model = build_model(name, **kwargs)
    state_dict = _network_keys(model, state_dict)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict)
    return model.eval()


def _network_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The network's part of a LightningModel's own ``state_dict()`` (keys ``model.*``), in
    the network's own key layout.

    ``torch.save(lightning_model.state_dict(), PATH)`` is an easy mistake next to the
    tutorial's ``torch.save(pytorch_model.state_dict(), PATH)``. The prefix is dropped only
    when the keys do not fit as they are and, without it, fit exactly.
    """
    expected = set(model.state_dict())
    if set(state_dict) == expected or not state_dict:
        return state_dict
    # a network may accept other key layouts of itself (see PyTorchMLP.adapt_state_dict)
    adapt = getattr(model, "adapt_state_dict", lambda keys: keys)
    stripped = _strip_prefix(state_dict)
    for candidate in (adapt(state_dict), stripped, adapt(stripped)):
        if set(candidate) == expected:
            return candidate
    return state_dict


def load_lightning_model(
    path: str | Path,
    model: nn.Module | str | None = None,
    trust_pickled_file: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> Any:
    """``LightningModel.load_from_checkpoint`` with the same safety checks, in eval mode.

    Args:
        path: A Lightning ``.ckpt``.
        model: The network, as an object (the tutorial's ``load_from_checkpoint(path,
            model=net)``) or a registered name; needed when the checkpoint does not record
            its network (the tutorial's own ``LightningModel``).
        trust_pickled_file: Unpickle arbitrary objects (only for files you trust).
        model_kwargs: Constructor arguments for a ``model`` given by name; by default the
            ones the checkpoint recorded for that name, if any.
    """
    from toolkit.module import LightningModel

    obj = read_torch_file(path, trust_pickled_file)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
    hparams = obj.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):  # as read_weights: a file's fault, not a traceback
        raise CheckpointError(f"{path} has hyper_parameters that are not a mapping")
    _check_tensors(obj["state_dict"], Path(path))
    name, kwargs = _network_fields(hparams.get("network"), hparams.get("network_kwargs"), str(path))
    if model is None and name is None:
        raise UsageError(
            f"{path} does not record its network; pass --model NAME (e.g. mlp), or in "
            "Python model='mlp' or the network object (as load_from_checkpoint(path, "
            "model=net) in the tutorial)"
        )
    if isinstance(model, str):
        recorded = kwargs if model == name else {}
        model = build_model(model, **(recorded if model_kwargs is None else model_kwargs))
    elif model is not None and not isinstance(model, nn.Module):
        raise UsageError(
            f"model must be a network (torch.nn.Module) or a registered name; got "
            f"{type(model).__name__}"
        )
    net = model if model is not None else build_model(name, **kwargs)  # type: ignore[arg-type]
    check_state_dict(net, _network_keys(net, _strip_prefix(obj["state_dict"])), str(path))
    extra = {"model": model} if model is not None else {}
    lightning_model = LightningModel.load_from_checkpoint(
        path, map_location="cpu", weights_only=not trust_pickled_file, **extra
    )
    return lightning_model.eval()
