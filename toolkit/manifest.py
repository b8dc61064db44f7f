"""Export manifests: what an artifact is, how to feed it, and how to check it is intact.

Every export writes ``manifest.json`` next to its artifact (one folder per format). The
runtimes check each file's sha256 against it before loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from toolkit.atomic import write_json
from toolkit.errors import CheckpointError, IntegrityError

MANIFEST_NAME = "manifest.json"
#: Parent of the default exports folders, relative to the working directory.
EXPORTS_DIR = "exports"
#: The run description ``toolkit train`` writes into every run folder.
RUN_INFO = "run.json"
#: Marks the dynamic axis in ``input_shape``.
BATCH_AXIS = "batch"


#: JSON types of each manifest field (``None`` marks an optional one). ``bool`` is refused
#: where a number is expected, though Python counts it as an ``int``.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "runtime": (str,),
    "input_name": (str,),
    "input_shape": (list, tuple),
    "input_dtype": (str,),
    "output_names": (list, tuple),
    "network": (str, type(None)),
    "network_kwargs": (dict,),
    "exporter": (str,),
    "opset": (int, type(None)),
    "ir_version": (int, type(None)),
    "source_checkpoint": (str, type(None)),
    "source_sha256": (str, type(None)),
    "weights_sha256": (str, type(None)),
    "export_seconds": (int, float),
    "versions": (dict,),
    "options": (dict,),
    "notes": (list, tuple),
    "schema_version": (int,),
}
_FILE_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "sha256": (str,), "size": (int,), "role": (str,),
}  # fmt: skip


def _check_fields(obj: Any, types: dict[str, tuple[type, ...]], what: str = "") -> None:
    """Raise ``TypeError`` naming the first field of ``obj`` whose value has the wrong type."""
    for name, allowed in types.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, allowed):
            names = {type(None): "null", list: "a list", dict: "an object", str: "a string",
                     int: "an integer", float: "a number"}  # fmt: skip
            expected = " or ".join(dict.fromkeys(names[t] for t in allowed if t is not tuple))
            raise TypeError(f"{what}{name!r} must be {expected}, got {_shown(value)}")
    if types is _FIELD_TYPES:
        shape = obj.input_shape
        if not shape or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d > 0) or d == BATCH_AXIS
            for d in shape
        ):
            raise TypeError(
                f"'input_shape' must list positive sizes or {BATCH_AXIS!r}, got {_shown(shape)}"
            )
        if not all(isinstance(n, str) for n in obj.output_names):
            raise TypeError(f"'output_names' must list strings, got {_shown(obj.output_names)}")


def _shown(value: Any) -> str:
    """``value`` as JSON, cut to 60 characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def default_exports_dir(checkpoint: str | Path) -> Path:
    """``exports/<name>``: where ``export`` writes and ``verify``/``bench`` read by default.

    For weights in a run folder (one holding ``run.json``, as ``toolkit train`` writes)
    ``<name>`` is the run folder's name, resolved, so ``model.ckpt`` given from inside the
    run folder names the same folder as ``runs/<run>/model.ckpt``, and the run's ``.ckpt``,
    ``.pt`` and ``.safetensors`` share it. A weights file anywhere else (the tutorial's
    ``lightning.pt``) gives ``<folder>-<file name without suffix>``, so two such files, in
    one folder or in two, do not share, or take each other's, exports. In Lightning's own
    layout, ``lightning_logs/version_3/checkpoints/epoch=9-step=8590.ckpt``, the folder named
    is the version's, ``version_3-epoch=9-step=8590``: two versions that ran as many steps
    would otherwise both get ``checkpoints-epoch=9-step=8590``.
    """
    path = Path(checkpoint).resolve()
    if (path.parent / RUN_INFO).is_file():
        return Path(EXPORTS_DIR) / path.parent.name
    parent = path.parent.name
    if parent == "checkpoints" and path.parent.parent.name:
        parent = path.parent.parent.name
    return Path(EXPORTS_DIR) / (f"{parent}-{path.stem}" if parent else path.stem)


def weights_sha256(module: Any) -> str:
    """Hex sha256 of a network's weights: every ``state_dict`` entry's name, dtype, shape
    and bytes, in name order.

    The same weights give the same value whichever file they came from (``.ckpt``, ``.pt``
    or ``.safetensors``), so ``verify`` and ``bench`` can tell whether an artifact was
    exported from the network they were given. Names are first put in the registered
    networks' own layout (``adapt_state_dict``): the Lightning course's ``PyTorchMLP``,
    exported as the user's own object, has the same weights as toolkit's ``mlp`` under
    other names.
    """
    import torch

    from toolkit.models import MODELS

    state = dict(module.state_dict())
    for name in MODELS:
        adapt = getattr(MODELS.get(name), "adapt_state_dict", None)
        if adapt is not None:
            state = adapt(state)
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def from_other_weights(manifest: Manifest, weights: str | None) -> str | None:
    """Why ``manifest``'s artifact cannot be compared with the network whose
    :func:`weights_sha256` is ``weights`` (as a phrase), or None when it can.

    Manifests written before the fingerprint existed are not judged: None.
    """
    if weights is None or manifest.weights_sha256 in (None, weights):
        return None
    source = manifest.source_checkpoint or "an unrecorded file"
    return f"exported from other weights ({source}); export this checkpoint again"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(folder: str | Path) -> str | None:
    """sha256 of ``folder/manifest.json``, which holds every file's sha256: one fingerprint
    of an exported artifact. None when there is no readable manifest there."""
    try:
        return sha256_file(Path(folder) / MANIFEST_NAME)
    except OSError:  # missing, a folder, unreadable, or vanished since it was read
        return None


@dataclasses.dataclass
class ArtifactFile:
    """One file of an artifact (the model, or an external-data file)."""

    name: str
    sha256: str
    size: int
    role: str = "model"  # "model" or "external-data"

    @classmethod
    def describe(cls, path: Path, role: str = "model") -> ArtifactFile:
        """Hash and size a file."""
        return cls(path.name, sha256_file(path), path.stat().st_size, role)


@dataclasses.dataclass
class Manifest:
    """Schema of ``manifest.json``; the README's Export section lists its fields."""

    format: str
    runtime: str
    files: list[ArtifactFile]
    input_name: str
    input_shape: list[int | str]
    input_dtype: str
    output_names: list[str]
    network: str | None = None
    network_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    exporter: str = ""
    opset: int | None = None
    ir_version: int | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    weights_sha256: str | None = None
    export_seconds: float = 0.0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    schema_version: int = 1

    @property
    def model_file(self) -> str:
        """Name of the main artifact file.

        Raises:
            IntegrityError: the manifest lists no files, or none with the role "model".
        """
        problem = self.files_problem()
        if problem:
            raise IntegrityError(f"the {self.format or 'artifact'} manifest {problem}")
        return next(f.name for f in self.files if f.role == "model")

    def files_problem(self) -> str | None:
        """What is wrong with ``files`` (as a phrase: "lists no files"), or None if usable.

        Usable means: at least one file, exactly one with the role "model", and every name a
        plain file name (no folder part), so that it names a file in the artifact folder.
        """
        if not self.files:
            return "lists no files"
        models = [f.name for f in self.files if f.role == "model"]
        if not models:
            return 'lists no model file (no file with role "model")'
        if len(models) > 1:
            return f"lists {len(models)} model files ({', '.join(models)}); expected one"
        for entry in self.files:
            name = entry.name
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                return f"lists a file name that is not a plain file name: {name!r}"
        return None

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of :meth:`to_json`.

        Raises:
            TypeError: not a mapping, a field missing, or a field of the wrong type (a
                hand-edited ``"input_shape": null`` or ``"format": ["onnx"]``), named.
            ValueError: a format that no exporter registered.
        """
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        files = data.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise TypeError("'files' must be a list of objects")
        data["files"] = [ArtifactFile(**f) for f in files]
        for entry in data["files"]:
            _check_fields(entry, _FILE_FIELD_TYPES, "a 'files' entry's ")
        known = {f.name for f in dataclasses.fields(cls)}
        manifest = cls(**{k: v for k, v in data.items() if k in known})
        _check_fields(manifest, _FIELD_TYPES)
        from toolkit.formats import FORMATS

        if manifest.format not in FORMATS.names():
            raise ValueError(
                f"unknown format {manifest.format!r}; available: {', '.join(FORMATS.names())}"
            )
        return manifest

    def save(self, folder: str | Path) -> Path:
        """Atomically write ``folder/manifest.json``."""
        return write_json(Path(folder) / MANIFEST_NAME, self.to_json())

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read ``folder/manifest.json`` (or the manifest path itself).

        Raises:
            CheckpointError: no manifest, not a valid one, or its ``files`` list no usable
                model file (see :meth:`files_problem`).
        """
        path = Path(folder)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            manifest = cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"no manifest at {path}; export the artifact again") from None
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a valid manifest ({exc})") from None
        except OSError as exc:  # a folder under that name, no permission, ...
            reason = exc.strerror or type(exc).__name__
            raise CheckpointError(f"cannot read manifest {path}: {reason}") from None
        problem = manifest.files_problem()
        if problem:
            raise CheckpointError(f"{path} {problem}; export the artifact again")
        return manifest

    def verify_files(self, folder: str | Path) -> None:
        """Check every file's presence, size and sha256; raise :class:`IntegrityError`.

        A manifest listing no files (or no model file) fails too: it vouches for nothing.
        """
        folder = Path(folder)
        problem = self.files_problem()
        if problem:
            raise IntegrityError(f"{folder / MANIFEST_NAME} {problem}; export the artifact again")
        for entry in self.files:
            path = folder / entry.name
            if not path.is_file():
                raise IntegrityError(f"{path} is missing (listed in {folder / MANIFEST_NAME})")
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                raise IntegrityError(
                    f"{path} does not match its manifest sha256 (tampered or corrupt); "
                    "export it again or restore the original file"
                )
