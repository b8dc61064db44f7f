"""The exporter protocol: one subclass per format, registered by name in ``FORMATS``."""

from __future__ import annotations

import abc
import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from toolkit.manifest import BATCH_AXIS, MANIFEST_NAME, ArtifactFile, Manifest
from toolkit.registry import Registry


class Format(abc.ABC):
    """An export format.

    Subclasses set the class constants and implement :meth:`export`, which writes the
    artifact file(s) into ``out_dir`` (already created, empty, and renamed into place by
    the caller when the export succeeds) and returns the manifest.

    Default parity tolerances are constants here; ``toolkit verify`` can override them.
    ``min_agreement`` is the minimal top-1 label agreement with the PyTorch reference;
    ``max_accuracy_drop`` the largest allowed test-accuracy drop (absolute, 0.005 = 0.5
    points); a format ``judged_by_labels`` passes on agreement and accuracy, not on atol.
    """

    name: ClassVar[str]
    runtime: ClassVar[str]
    suffix: ClassVar[str]
    atol: ClassVar[float] = 1e-4
    rtol: ClassVar[float] = 1e-3
    min_agreement: ClassVar[float] = 1.0
    max_accuracy_drop: ClassVar[float] = 0.0
    judged_by_labels: ClassVar[bool] = False

    @abc.abstractmethod
    def export(
        self, model: nn.Module, example_input: torch.Tensor, out_dir: Path, **options: Any
    ) -> Manifest:
        """Export ``model`` (plain nn.Module, eval mode, CPU) into ``out_dir``."""

    def new_manifest(
        self,
        out_dir: Path,
        model_file: str,
        example_input: torch.Tensor,
        *,
        input_name: str = "input",
        output_names: Sequence[str] = ("logits",),
        **fields: Any,
    ) -> Manifest:
        """A manifest describing every file now in ``out_dir``, with its sha256 and size.

        ``model_file`` is the main file; any other (non-hidden) file is listed as external
        data. The input shape is the example's with the batch axis marked ``"batch"``.
        ``fields`` fill the remaining :class:`Manifest` fields (opset, exporter, notes...).
        """
        out_dir = Path(out_dir)
        others = sorted(
            p
            for p in out_dir.iterdir()
            if p.is_file() and p.name not in (model_file, MANIFEST_NAME) and p.name[0] != "."
        )
        files = [ArtifactFile.describe(out_dir / model_file, "model")]
        files += [ArtifactFile.describe(p, "external-data") for p in others]
        fields.setdefault("versions", installed_versions())
        return Manifest(
            format=self.name,
            runtime=self.runtime,
            files=files,
            input_name=input_name,
            input_shape=[BATCH_AXIS, *(int(s) for s in example_input.shape[1:])],
            input_dtype=str(example_input.dtype).removeprefix("torch."),
            output_names=list(output_names),
            **fields,
        )


def installed_versions(
    packages: Sequence[str] = ("torch", "onnx", "onnxruntime", "onnxscript"),
) -> dict[str, str]:
    """Versions of the export stack (python and the installed ``packages``)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


FORMATS: Registry[type[Format]] = Registry("format", name_attribute="name")
