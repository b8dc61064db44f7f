"""``toolkit verify``: parity of every reload path and exported artifact with PyTorch eager.

The reference is the eager network rebuilt from the checkpoint. Each row runs one way of
loading the model and is compared with the reference on the same inputs:

* reload rows: the network from the ``.ckpt``, the state_dict ``.pt`` and the
  ``.safetensors`` next to it, and ``LightningModel.load_from_checkpoint``. They run the same
  eager code on the same weights, so they must be bitwise equal (tolerance 0);
* artifact rows: every folder of the exports folder with a ``manifest.json``, run in the
  runtime its manifest names (ONNX also through ``onnxruntime-iobinding``). Its sha256 is
  checked against the manifest first; a tampered artifact is a failed row.

Inputs: the test split (or the user's ``--inputs``) in batches of 256 with a partial last
batch; its first samples at batch sizes 1 and 7; edge cases (zeros, ones, large values,
random normal) at batch size 7; inputs with NaN/Inf pixels, whose outputs are reported and
not judged. Batch invariance compares a runtime's own outputs for the same samples at
batch sizes 1 and 7 with those at 256.

Rule (numpy ``allclose`` style): a value passes when ``|cand - ref| <= atol + rtol * |ref|``.
A row passes when no output is NaN/Inf for finite inputs, and

* formats judged on values (fp32): every value of every input set passes the rule, the
  outputs are batch-invariant under the same rule, and top-1 agreement on the main set is
  at least ``min_agreement``;
* formats ``judged_by_labels`` (fp16, int8): top-1 agreement on the main set is at least
  ``min_agreement`` and the accuracy drop is at most ``max_accuracy_drop``; value
  differences and batch invariance are reported, not judged (dynamic quantization computes
  activation ranges per batch).

Reported relative differences are ``|cand - ref| / (|ref| + EPS)`` with :data:`EPS` stated
in the report. The smallest passing tolerances are ``min_atol`` (at the row's rtol) and
``min_rtol`` (at the row's atol); ``max_abs`` and ``max_rel`` are Polygraphy's
"minimum required tolerance" with the other tolerance at 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.atomic import clean_stale_partials
from toolkit.errors import (
    CheckFailedError,
    DataError,
    RuntimeUnavailableError,
    ToolkitError,
    UnsafeFileError,
    UsageError,
)
from toolkit.manifest import (
    MANIFEST_NAME,
    default_exports_dir,
    manifest_sha256,
    sha256_file,
    weights_sha256,
)

#: Added to ``|ref|`` in reported relative differences, so zeros do not divide by zero.
EPS = 1e-6
MAIN_BATCH = 256
#: (batch size, samples) of the small-batch sets taken from the start of the main set.
SMALL_BATCHES: tuple[tuple[int, int], ...] = ((1, 16), (7, 14))
EDGE_BATCH = 7
#: Value of every pixel in the "large" edge case (images are in [0, 1]).
LARGE_VALUE = 1e3
SEED = 0
#: Extra runtimes run on artifacts of a format, besides the one the manifest names.
EXTRA_RUNTIMES: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime-iobinding",)}
REPORT_JSON, REPORT_MD = "parity.json", "parity.md"
#: 2: ``checkpoint_sha256`` on the report and ``manifest_sha256`` on artifact rows.
SCHEMA_VERSION = 2
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


# -- metrics on numpy arrays (reference first, candidate second) -------------------------
def _pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64, restricted to the elements that are finite in both."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
    finite = np.isfinite(ref) & np.isfinite(cand)
    return ref[finite], cand[finite]


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest ``|cand - ref|`` over elements finite in both (0.0 when none)."""
    ref, cand = _pair(reference, candidate)
    return float(np.max(np.abs(cand - ref))) if ref.size else 0.0


def max_rel_diff(reference: np.ndarray, candidate: np.ndarray, eps: float = EPS) -> float:
    """Largest ``|cand - ref| / (|ref| + eps)`` over elements finite in both."""
    ref, cand = _pair(reference, candidate)
    return float(np.max(np.abs(cand - ref) / (np.abs(ref) + eps))) if ref.size else 0.0


def mean_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean ``|cand - ref|`` over elements finite in both."""
    ref, cand = _pair(reference, candidate)
    return float(np.mean(np.abs(cand - ref))) if ref.size else 0.0


def nonfinite_counts(values: np.ndarray) -> tuple[int, int]:
    """Number of NaN and of ±Inf elements."""
    values = np.asarray(values)
    return int(np.isnan(values).sum()), int(np.isinf(values).sum())


def class_scores_problem(shape: Sequence[int], batch: int) -> str | None:
    """Why an output of ``shape`` for ``batch`` inputs is not (batch, classes), or None.

    Parity and the bench's quick check judge lossy formats by top-1 labels, which say
    nothing about a 1-D output or a single column (every argmax is 0).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or shape[0] != batch:
        return (
            f"returns an output of shape {shape} for a batch of {batch}; toolkit needs class "
            f"scores of shape ({batch}, classes)"
        )
    if shape[1] < 2:
        return (
            f"returns a single score per sample (shape {shape}); toolkit needs at least 2 "
            "classes, since its parity checks compare top-1 labels"
        )
    return None


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int]:
    """Fraction of rows whose argmax label is the same, and the number of flipped labels.

    A row with a NaN anywhere in the candidate counts as flipped.
    """
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if len(ref) == 0:
        return 1.0, 0
    same = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
    same &= ~np.isnan(cand).any(axis=1)
    flipped = int(len(same) - same.sum())
    return float(same.mean()), flipped


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    labels = np.asarray(labels)
    return float((np.argmax(np.asarray(logits), axis=1) == labels).mean()) if len(labels) else 0.0


def allclose_violations(
    reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
) -> int:
    """Elements where ``|cand - ref| > atol + rtol * |ref|`` (NaN/Inf are counted apart)."""
    ref, cand = _pair(reference, candidate)
    return int((np.abs(cand - ref) > atol + rtol * np.abs(ref)).sum())


def min_passing_atol(reference: np.ndarray, candidate: np.ndarray, rtol: float) -> float:
    """Smallest atol for which every element passes the rule at ``rtol``."""
    ref, cand = _pair(reference, candidate)
    if not ref.size:
        return 0.0
    return float(max(np.max(np.abs(cand - ref) - rtol * np.abs(ref)), 0.0))


def min_passing_rtol(reference: np.ndarray, candidate: np.ndarray, atol: float) -> float:
    """Smallest rtol for which every element passes the rule at ``atol`` (inf: none does)."""
    ref, cand = _pair(reference, candidate)
    excess = np.abs(cand - ref) - atol
    over = excess > 0
    if not over.any():
        return 0.0
    scale = np.abs(ref[over])
    if (scale == 0).any():
        return float("inf")
    return float(np.max(excess[over] / scale))


# -- results -------------------------------------------------------------------------------
@dataclasses.dataclass
class Tolerances:
    """What a row is judged against (see the module docstring for the rule)."""

    atol: float
    rtol: float
    min_agreement: float
    max_accuracy_drop: float
    judged_by_labels: bool = False

    @classmethod
    def exact(cls) -> Tolerances:
        """Bitwise equality: same code, same weights."""
        return cls(atol=0.0, rtol=0.0, min_agreement=1.0, max_accuracy_drop=0.0)

    @classmethod
    def of_format(cls, name: str, overrides: dict[str, float] | None = None) -> Tolerances:
        """The format's defaults, with the non-None ``overrides`` applied."""
        from toolkit.formats import FORMATS

        fmt = FORMATS.get(name)
        tol = cls(
            fmt.atol, fmt.rtol, fmt.min_agreement, fmt.max_accuracy_drop, fmt.judged_by_labels
        )
        return dataclasses.replace(tol, **(overrides or {}))


@dataclasses.dataclass
class SetStats:
    """One row's comparison on one input set."""

    name: str
    batch_size: int
    samples: int
    max_abs: float
    max_rel: float
    mean_abs: float
    nan_count: int
    inf_count: int
    agreement: float
    flipped: int
    violations: int
    min_atol: float
    min_rtol: float
    judged: bool

    @classmethod
    def compare(
        cls,
        name: str,
        batch_size: int,
        reference: np.ndarray,
        candidate: np.ndarray,
        tol: Tolerances,
        judged: bool = True,
    ) -> SetStats:
        """Every metric of ``candidate`` against ``reference``."""
        nan, inf = nonfinite_counts(candidate)
        agreement, flipped = top1_agreement(reference, candidate)
        return cls(
            name=name,
            batch_size=batch_size,
            samples=len(candidate),
            max_abs=max_abs_diff(reference, candidate),
            max_rel=max_rel_diff(reference, candidate),
            mean_abs=mean_abs_diff(reference, candidate),
            nan_count=nan,
            inf_count=inf,
            agreement=agreement,
            flipped=flipped,
            violations=allclose_violations(reference, candidate, tol.atol, tol.rtol),
            min_atol=min_passing_atol(reference, candidate, tol.rtol),
            min_rtol=min_passing_rtol(reference, candidate, tol.atol),
            judged=judged,
        )


@dataclasses.dataclass
class ParityRow:
    """One runtime (reload path or artifact) against the reference.

    Metrics are aggregated over the judged input sets, except ``agreement``, ``flipped``,
    ``accuracy`` and ``accuracy_delta`` (main set only). ``accuracy_delta`` is
    ``accuracy - reference accuracy`` (negative = worse). ``nonfinite_input_outputs``
    counts non-finite outputs for inputs holding NaN/Inf (reported, not judged).
    ``manifest_sha256`` is the sha256 of an artifact row's ``manifest.json`` as verified
    (None for other kinds, or when the manifest could not be read).
    """

    name: str
    format: str
    runtime: str
    kind: str  # "reference", "reload" or "artifact"
    source: str
    tolerances: Tolerances | None = None
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    samples: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    mean_abs: float | None = None
    nan_count: int = 0
    inf_count: int = 0
    agreement: float | None = None
    flipped: int | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None
    min_atol: float | None = None
    min_rtol: float | None = None
    batch_invariance_max_abs: float | None = None
    batch_invariance_violations: int | None = None
    nonfinite_input_outputs: int | None = None
    load_seconds: float | None = None
    sets: list[SetStats] = dataclasses.field(default_factory=list)
    status: str = PASS
    reasons: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    manifest_sha256: str | None = None

    @property
    def failed(self) -> bool:
        """True when the row failed (a skipped row did not)."""
        return self.status == FAIL

    def summary(self) -> str:
        """``name (reason; reason)`` for error messages."""
        return f"{self.name} ({'; '.join(self.reasons) or self.status})"

    def brief(self, width: int = 120) -> str:
        """``name (first reason)`` cut to about ``width`` characters, for one-line errors."""
        first = self.reasons[0] if self.reasons else self.status
        if len(first) > width:
            cut = first[:width].rsplit(" ", 1)[0]
            if cut.count("(") > cut.count(")"):  # no half of a parenthesis
                cut = cut[: cut.rindex("(")]
            first = cut.rstrip(" ,;") + " …"
        more = f"; +{len(self.reasons) - 1} more" if len(self.reasons) > 1 else ""
        return f"{self.name} ({first}{more})"

    def fail(self, reason: str) -> None:
        """Mark the row failed with ``reason``."""
        self.status = FAIL
        self.reasons.append(reason)

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ParityReport:
    """Schema of ``parity.json``; ``parity.md`` and the terminal table are rendered from it.

    ``checkpoint_sha256`` is the sha256 of the checkpoint file the reference was built from,
    so a reader (``toolkit bench``) can tell whether the report is about the same weights.
    ``data_dir`` is the folder the test split was read from when one was given (``None``:
    the data set's own files, found in the cache or the system folder): files of the data
    set's format anywhere else need not hold its published test set.
    """

    checkpoint: str
    exports: str | None
    reference: str
    dataset: str
    split: str | None
    samples: int
    nonfinite_input_samples: int
    reference_accuracy: float | None
    input_sets: dict[str, dict[str, Any]]
    device: str
    threads: int
    eps: float
    rule: str
    overrides: dict[str, float]
    rows: list[ParityRow]
    versions: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    checkpoint_sha256: str | None = None
    data_dir: str | None = None

    @property
    def passed(self) -> bool:
        """True when no row failed."""
        return not self.failing_rows()

    def failing_rows(self) -> list[ParityRow]:
        """The rows that failed, in report order."""
        return [row for row in self.rows if row.failed]

    def to_json(self) -> dict[str, Any]:
        """Plain-data form, with ``passed``."""
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        return data


RULE = (
    "allclose: |cand - ref| <= atol + rtol*|ref| for every value (value-judged formats); "
    "top-1 agreement >= min_agreement; accuracy drop <= max_accuracy_drop "
    "(judged_by_labels formats); no NaN/Inf outputs for finite inputs"
)


# -- inputs --------------------------------------------------------------------------------
@dataclasses.dataclass
class InputSet:
    """Inputs run through every row at one batch size."""

    name: str
    x: torch.Tensor
    batch_size: int
    judged: bool = True
    #: Positions of these samples in the main set (for batch invariance), if taken from it.
    main_index: np.ndarray | None = None


def edge_cases(input_shape: tuple[int, ...], n: int = EDGE_BATCH) -> dict[str, torch.Tensor]:
    """Zeros, ones, large values and random normal inputs, ``n`` samples each."""
    shape = (n, *input_shape)
    generator = torch.Generator().manual_seed(SEED)
    return {
        "zeros": torch.zeros(shape),
        "ones": torch.ones(shape),
        "large": torch.full(shape, LARGE_VALUE),
        "random-normal": torch.randn(shape, generator=generator),
    }


def nonfinite_inputs(input_shape: tuple[int, ...], n: int = EDGE_BATCH) -> torch.Tensor:
    """Inputs holding NaN or ±Inf pixels (one NaN, all NaN, +Inf, -Inf, cycling)."""
    x = torch.rand((n, *input_shape), generator=torch.Generator().manual_seed(SEED))
    flat = x.view(n, -1)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            flat[i, 0] = float("nan")
        elif kind == 1:
            flat[i] = float("nan")
        else:
            flat[i, flat.shape[1] // 2] = float("inf") if kind == 2 else float("-inf")
    return x


def fits_input_shape(shape: Sequence[int], input_shape: Sequence[int] | None) -> bool:
    """Whether a batch of ``shape`` is (N, *input_shape); ``input_shape`` None (a network
    that declares none): any batch of at least two dimensions (N, ...)."""
    if input_shape is None:
        return len(shape) >= 2
    return len(shape) == len(input_shape) + 1 and tuple(shape[1:]) == tuple(input_shape)


def read_inputs(source: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """User inputs (a ``.npy``/``.pt`` path, array or tensor) as float32 (N, *input_shape).

    ``input_shape`` None (a network that declares none) takes any shape (N, ...).

    Raises:
        UsageError: unreadable, not float32, or not of shape (N, *input_shape).
    """
    name = str(source) if isinstance(source, str | Path) else type(source).__name__
    if isinstance(source, str | Path):
        source = _load_input_file(Path(source))
    if isinstance(source, np.ndarray):
        if source.dtype != np.float32:
            raise UsageError(
                f"inputs {name}: expected float32 values, got {source.dtype}; convert with "
                "array.astype(numpy.float32)"
            )
        source = torch.from_numpy(np.ascontiguousarray(source))
    if not isinstance(source, torch.Tensor):
        raise UsageError(f"inputs {name}: expected a float32 array, got {type(source).__name__}")
    expected = f"(N, {', '.join(map(str, input_shape or ['...']))})"
    if source.dtype != torch.float32:
        raise UsageError(f"inputs {name}: expected float32 values, got {source.dtype}")
    if not fits_input_shape(source.shape, input_shape):
        raise UsageError(f"inputs {name}: expected shape {expected}, got {tuple(source.shape)}")
    if len(source) == 0:
        raise UsageError(f"inputs {name}: no samples (shape {tuple(source.shape)})")
    return source


def _load_input_file(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"inputs {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}"
        )
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"inputs {path}: not a readable .npy array ({exc})") from None
    if path.suffix == ".pt":
        from toolkit.reload import read_torch_file

        return read_torch_file(path)
    raise UsageError(f"inputs {path}: expected a .npy or .pt file, got '{path.suffix}'")


def build_input_sets(main: torch.Tensor, input_shape: tuple[int, ...]) -> list[InputSet]:
    """The main set, its small-batch subsets, the edge cases and the non-finite inputs."""
    finite = torch.isfinite(main.reshape(len(main), -1)).all(dim=1).numpy()
    finite_index = np.flatnonzero(finite)
    sets = [InputSet("main", main[torch.from_numpy(finite_index)], MAIN_BATCH)]
    for batch_size, count in SMALL_BATCHES:
        index = finite_index[: max(batch_size, min(count, len(finite_index)))]
        if len(index) >= batch_size:
            sub = torch.from_numpy(index)
            sets.append(
                InputSet(
                    f"batch-{batch_size}", main[sub], batch_size, main_index=np.arange(len(index))
                )
            )
    for name, x in edge_cases(input_shape).items():
        sets.append(InputSet(name, x, EDGE_BATCH))
    nonfinite = np.flatnonzero(~finite)
    sets.append(
        InputSet(
            "nonfinite",
            torch.cat([main[torch.from_numpy(nonfinite)], nonfinite_inputs(input_shape)]),
            EDGE_BATCH,
            judged=False,
        )
    )
    return sets


# -- running -------------------------------------------------------------------------------
def run_batches(
    runner: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, batch: int
) -> np.ndarray:
    """Run ``x`` through ``runner`` in batches of ``batch`` (last one partial)."""
    outputs = [runner(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def run_sets(
    runner: Callable[[torch.Tensor], np.ndarray], sets: list[InputSet]
) -> dict[str, np.ndarray]:
    """Outputs of ``runner`` on every input set."""
    return {s.name: run_batches(runner, s.x, s.batch_size) for s in sets}


def _invariance_tolerance(row: ParityRow, tol: Tolerances) -> tuple[float, float]:
    """(atol, rtol) between one row's outputs at different batch sizes.

    Different batch sizes run different kernels, so even the bitwise-judged rows (the
    reference and the reloads) get the fp32 defaults. An artifact row is held to its own
    tolerances, overrides included: ``--atol 0 --rtol 0`` asks for bitwise invariance (an
    explicit 0 once fell back to the defaults, so 0 was looser than 1e-9).
    """
    from toolkit.formats import Format

    if row.kind in ("reference", "reload"):
        return Format.atol, Format.rtol
    return tol.atol, tol.rtol


def evaluate_row(
    row: ParityRow,
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    sets: list[InputSet],
    labels: np.ndarray | None,
    reference_accuracy: float | None,
) -> ParityRow:
    """Fill ``row``'s metrics from its outputs and judge it against ``row.tolerances``."""
    tol = row.tolerances or Tolerances.exact()
    row.batch_sizes = sorted({s.batch_size for s in sets})
    row.samples = sum(len(s.x) for s in sets)
    for s in sets:
        out, ref = outputs[s.name], reference[s.name]
        if out.shape != ref.shape:
            row.fail(f"{s.name}: output shape {out.shape} != reference {ref.shape}")
            continue
        if not s.judged:
            row.nonfinite_input_outputs = int((~np.isfinite(out)).any(axis=1).sum())
            continue
        row.sets.append(SetStats.compare(s.name, s.batch_size, ref, out, tol))
    if not row.sets:
        return row
    _aggregate(row)
    main = next((st for st in row.sets if st.name == "main"), None)
    if main is not None:
        row.agreement, row.flipped = main.agreement, main.flipped
    if labels is not None and "main" in outputs and outputs["main"].shape[0] == len(labels):
        row.accuracy = accuracy(outputs["main"], labels)
        if reference_accuracy is not None:
            row.accuracy_delta = row.accuracy - reference_accuracy
    _batch_invariance(row, outputs, sets, tol)
    _judge(row, tol)
    return row


def _aggregate(row: ParityRow) -> None:
    stats = row.sets
    row.max_abs = max(st.max_abs for st in stats)
    row.max_rel = max(st.max_rel for st in stats)
    weights = [st.samples for st in stats]
    row.mean_abs = float(np.average([st.mean_abs for st in stats], weights=weights))
    row.nan_count = sum(st.nan_count for st in stats)
    row.inf_count = sum(st.inf_count for st in stats)
    row.min_atol = max(st.min_atol for st in stats)
    row.min_rtol = max(st.min_rtol for st in stats)


def _batch_invariance(
    row: ParityRow, outputs: dict[str, np.ndarray], sets: list[InputSet], tol: Tolerances
) -> None:
    atol, rtol = _invariance_tolerance(row, tol)
    worst, violations = None, 0
    for s in sets:
        if s.main_index is None or s.name not in outputs or "main" not in outputs:
            continue
        batched, alone = outputs["main"][s.main_index], outputs[s.name]
        if batched.shape != alone.shape:
            continue
        diff = max_abs_diff(batched, alone)
        worst = diff if worst is None else max(worst, diff)
        violations += allclose_violations(batched, alone, atol, rtol)
    row.batch_invariance_max_abs = worst
    row.batch_invariance_violations = violations if worst is not None else None


def _judge(row: ParityRow, tol: Tolerances) -> None:
    if row.nan_count or row.inf_count:
        row.fail(f"{row.nan_count} NaN and {row.inf_count} Inf outputs for finite inputs")
    if not tol.judged_by_labels:
        bad = [st for st in row.sets if st.violations]
        if bad:
            where = ", ".join(f"{st.name}: {st.violations}" for st in bad)
            row.fail(
                f"max abs diff {row.max_abs:.3g} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}"
                f"·|ref| at {sum(st.violations for st in bad)} values ({where}); "
                f"would pass at atol {row.min_atol:.3g}"
            )
        if row.batch_invariance_violations:
            row.fail(
                f"outputs depend on the batch: max abs diff {row.batch_invariance_max_abs:.3g} "
                "between batch sizes 1/7 and 256"
            )
    if row.agreement is not None and row.agreement < tol.min_agreement:
        row.fail(
            f"top-1 agreement {row.agreement * 100:.2f}% < {tol.min_agreement * 100:g}% "
            f"({row.flipped} labels flipped)"
        )
    if tol.judged_by_labels and row.accuracy_delta is not None:
        drop = -row.accuracy_delta
        if drop > tol.max_accuracy_drop + 1e-12:
            row.fail(f"accuracy drop {drop * 100:.2f} points > {tol.max_accuracy_drop * 100:g}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {text}"


def _run_row(
    row: ParityRow, make_runner: Callable[[], Any], sets: list[InputSet]
) -> dict[str, np.ndarray] | None:
    """Load and run one row; a failure fails the row instead of stopping the others."""
    runner = None
    try:
        runner = make_runner()
        row.load_seconds = runner.load()
        return run_sets(runner, sets)
    except RuntimeUnavailableError as exc:  # as a runtime that does not run on the device
        row.status = SKIP
        row.reasons.append(_one_line(exc))
        return None
    except Exception as exc:
        if not isinstance(exc, ToolkitError) and os.environ.get("TOOLKIT_DEBUG") == "1":
            raise
        row.error = _one_line(exc)
        row.fail(row.error)
        return None
    finally:
        if runner is not None:
            runner.close()


# -- rows ----------------------------------------------------------------------------------
RowPlan = tuple[ParityRow, Callable[[], Any] | None]


def _eager(module: Any, device: str, shape: tuple, threads: int) -> Any:
    from toolkit.runtimes import RUNTIMES

    return RUNTIMES.get("eager")(module, device, input_shape=shape, threads=threads)


def reload_sources(checkpoint: Path) -> dict[str, Path]:
    """The weight files of the run next to ``checkpoint``: {"checkpoint": path, ...}."""
    from toolkit.reload import RUN_INFO, read_json_object

    info = read_json_object(checkpoint.parent / RUN_INFO)
    names = {
        "checkpoint": "model.ckpt",
        "state_dict": "model.pt",
        "safetensors": "model.safetensors",
    }
    files = info.get("files")
    if isinstance(files, dict):  # plain names in the run folder only: nothing from elsewhere
        names.update({k: v for k, v in files.items() if k in names and _plain_file_name(v)})
    found = {key: checkpoint.parent / name for key, name in names.items()}
    found = {key: path for key, path in found.items() if path.is_file()}
    if checkpoint.suffix == ".ckpt":
        found["checkpoint"] = checkpoint
    return found


def _plain_file_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _reload_plans(
    checkpoint: Path,
    device: str,
    shape: tuple,
    threads: int,
    trust: bool,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> list[RowPlan]:
    from toolkit.reload import load_lightning_model, load_network

    def trusted(path: Path) -> bool:
        # --trust_pickled_file names one file: the run's other weight files are not trusted.
        return trust and path.resolve() == checkpoint.resolve()

    def network(path: Path) -> Any:
        return load_network(path, model, model_kwargs, trust_pickled_file=trusted(path))

    def lightning(path: Path) -> Any:
        # A network named on the command line is built the way the reference was (the
        # checkpoint may not record it); otherwise the tutorial's way, from its hparams.
        given = network(path) if model is not None or model_kwargs else None
        return load_lightning_model(path, model=given, trust_pickled_file=trusted(path))

    def untrusted_sibling(load: Callable[[Path], Any], path: Path) -> Any:
        try:
            return load(path)
        except UnsafeFileError:
            if not trust or trusted(path):
                raise
            raise UnsafeFileError(
                f"refusing to load {path}: it holds pickled Python objects that could run "
                f"code, and --trust_pickled_file covers only the --checkpoint file "
                f"({checkpoint.name}); check it with --checkpoint {path} if you trust it"
            ) from None

    def plan(name: str, fmt: str, load: Callable[[Path], Any], path: Path) -> RowPlan:
        row = ParityRow(name, fmt, "eager", "reload", str(path), Tolerances.exact())
        return row, lambda: _eager(untrusted_sibling(load, path), device, shape, threads)

    plans = []
    for key, path in reload_sources(checkpoint).items():
        plans.append(plan(f"reload:{path.name}", key, network, path))
        if key == "checkpoint":
            plans.append(plan(f"lightning:{path.name}", "lightning", lightning, path))
    return plans


def artifact_folders(exports: Path) -> list[Path]:
    """Artifact folders under ``exports`` (or ``exports`` itself if it holds a manifest).

    A folder counts when it holds ``manifest.json`` or is named like a registered format
    (an artifact that lost its manifest must fail, not vanish from the report). Hidden
    folders (an export in progress) are left out.
    """
    from toolkit.formats import FORMATS

    if not exports.is_dir():
        raise UsageError(f"no exports folder {exports}")
    if (exports / MANIFEST_NAME).is_file():
        return [exports]
    return sorted(
        p
        for p in exports.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and ((p / MANIFEST_NAME).is_file() or p.name in FORMATS)
    )


def _artifact_plans(
    folder: Path,
    device: str,
    threads: int,
    overrides: dict[str, float],
    weights: str | None = None,
) -> list[RowPlan]:
    from toolkit.manifest import Manifest, from_other_weights
    from toolkit.runtimes import RUNTIMES

    row = ParityRow(folder.name, "?", "?", "artifact", str(folder))
    try:
        manifest = Manifest.load(folder)
        row.manifest_sha256 = manifest_sha256(folder)
        row.format, row.runtime = manifest.format, manifest.runtime
        manifest.verify_files(folder)  # before any runtime parses the file
        row.tolerances = Tolerances.of_format(manifest.format, overrides)
    except ToolkitError as exc:
        row.error = _one_line(exc)
        row.fail(row.error)
        return [(row, None)]
    other = from_other_weights(manifest, weights)
    if other is not None:  # its differences would be those of two networks, not a runtime's
        row.error = other
        row.fail(other)
        return [(row, None)]
    extras = [rt for rt in EXTRA_RUNTIMES.get(manifest.format, ()) if rt in RUNTIMES]
    plans: list[RowPlan] = []
    for runtime in [manifest.runtime, *extras]:
        name = folder.name if runtime == manifest.runtime else f"{folder.name}[{runtime}]"
        this = dataclasses.replace(row, name=name, runtime=runtime, reasons=[], sets=[])
        try:
            cls = RUNTIMES.get(runtime)
        except ToolkitError as exc:
            this.error = _one_line(exc)
            this.fail(this.error)
            plans.append((this, None))
            continue
        if torch.device(device).type not in cls.device_types:
            this.status = SKIP
            this.reasons.append(f"runtime {runtime} does not run on {device}")
            plans.append((this, None))
            continue
        plans.append((this, lambda c=cls: c(folder, device=device, threads=threads)))
    return plans


def refuse_other_weights(
    folders: list[Path],
    weights: str,
    checkpoint: Path,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> None:
    """Raise :class:`UsageError` when every artifact in ``folders`` was exported from other
    weights than ``checkpoint``'s (fingerprint ``weights``): the wrong exports folder.

    Only some stale artifacts (a partial re-export) are not an error here: their rows fail.
    The suggested export command repeats ``model`` and ``model_kwargs`` and writes to a
    folder of its own: the folder in the way holds another file's exports.
    """
    from toolkit.manifest import Manifest, from_other_weights

    sources = []
    for folder in folders:
        try:
            manifest = Manifest.load(folder)
        except ToolkitError:
            return  # a damaged artifact gets its own failing row
        if from_other_weights(manifest, weights) is None:
            return
        sources.append(manifest.source_checkpoint or "an unrecorded file")
    if sources:
        import shlex

        where = folders[0].parent if len(folders) > 1 else folders[0]
        own = str(folders[0].parent.parent / f"{Path(checkpoint).stem}-{weights[:8]}")
        command = export_command_line(checkpoint, model, model_kwargs, "--output_dir", own)
        raise UsageError(
            f"the artifacts in {where} were exported from other weights "
            f"({', '.join(sorted(set(sources)))}) than {checkpoint}; pass that file as "
            f"--checkpoint, or export this one to a folder of its own and pass that: "
            f"{command}, then --exports {shlex.quote(own)}"
        )


def export_command_line(
    checkpoint: str | Path,
    model: str | None,
    model_kwargs: dict[str, Any] | None,
    *extra: str,
) -> str:
    """The ``toolkit export`` command to suggest for ``checkpoint``, shell-quoted.

    It repeats ``--model`` and ``--model_kwargs``: a file that does not record its network
    (a tutorial state_dict) cannot be exported without them.
    """
    import shlex

    command = ["toolkit", "export", "--checkpoint", str(checkpoint)]
    if model:
        command += ["--model", model]
    if model_kwargs:
        command += ["--model_kwargs", json.dumps(model_kwargs)]
    return shlex.join([*command, *extra])


# -- options -------------------------------------------------------------------------------
TOLERANCE_OPTIONS = ("atol", "rtol", "min_agreement", "max_accuracy_drop")


def check_overrides(overrides: dict[str, Any] | None) -> dict[str, float]:
    """The non-None tolerance overrides as floats, checked.

    ``atol`` and ``rtol`` must be finite and at least 0; ``min_agreement`` and
    ``max_accuracy_drop`` are fractions in [0, 1].

    Raises:
        UsageError: an unknown name or a value out of range.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - set(TOLERANCE_OPTIONS)
    if unknown:
        raise UsageError(f"unknown tolerance override(s): {', '.join(sorted(unknown))}")
    checked = {}
    for name, value in given.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--{name} must be a number, got {value!r}") from None
        if name in ("atol", "rtol"):
            if not (math.isfinite(number) and number >= 0):
                raise UsageError(f"--{name} must be a finite number >= 0, got {value}")
        elif not 0 <= number <= 1:  # also rejects NaN
            example = "0.99 = 99%" if name == "min_agreement" else "0.005 = 0.5 points"
            raise UsageError(
                f"--{name} must be a fraction between 0 and 1 ({example}), got {value}"
            )
        checked[name] = number
    return checked


def check_threads(threads: int | None) -> int | None:
    """``threads`` checked: None (torch's setting) or 1 to the machine's core count.

    More intra-op threads than cores only measures the scheduler, and a huge count makes
    the OpenMP runtime fail to start its threads or crash the process.

    Raises:
        UsageError: ``threads`` is below 1 or above ``os.cpu_count()``.
    """
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise UsageError(f"--threads must be 1 to {cores} (this machine's cores), got {threads}")
    return threads


# -- the library function ------------------------------------------------------------------
def verify(
    checkpoint: str | Path,
    exports: str | Path | None = None,
    device: str = "cpu",
    overrides: dict[str, float] | None = None,
    limit: int | None = None,
    inputs: Any = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    threads: int | None = None,
    trust_pickled_file: bool = False,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ParityReport:
    """Compare every reload path and every artifact under ``exports`` with eager PyTorch.

    Collects every failure in the report instead of raising; see :func:`verify_command`
    for the CLI verb, which raises once at the end.

    Args:
        checkpoint: The run's ``model.ckpt`` (the reference is rebuilt from it).
        exports: Folder of artifact folders (each with ``manifest.json``); None: none.
        device: ``cpu`` or ``cuda``.
        overrides: Tolerances replacing every format's defaults (``atol``, ``rtol``,
            ``min_agreement``, ``max_accuracy_drop``); reload rows stay bitwise.
        limit: Use only the first ``limit`` main-set samples.
        inputs: Own inputs instead of the test split: ``.npy``/``.pt`` path, array or tensor,
            float32 of shape (N, *input_shape); for a network that declares no
            ``input_shape``, of the shape it takes.
        dataset: Data set of the test split (default: the run's, from ``run.json``).
        data_dir: Folder with the IDX files (default: the run's ``--data_dir`` from
            ``run.json`` when neither this nor ``dataset`` is given).
        threads: Intra-op threads for every runtime, at least 1 (default: torch's current
            setting).
        trust_pickled_file: Allow arbitrary unpickling of the checkpoint.
        model: Network registry name, for a weights file that does not record it.
        model_kwargs: Constructor kwargs of the network (override what the file records).

    Returns:
        The :class:`ParityReport`.

    Raises:
        UsageError: a bad option (checked before anything is loaded or run), or every
            artifact in ``exports`` was exported from other weights (before anything runs).
    """
    from toolkit.data import NUM_CLASSES, recorded_dataset, recorded_in
    from toolkit.models import declared_input_shape
    from toolkit.reload import RUN_INFO, load_network, read_json_object, text_fields

    checkpoint = Path(checkpoint)
    _check_device(device)
    if exports is not None and not Path(exports).is_dir():
        raise UsageError(f"no exports folder {exports}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    overrides = check_overrides(overrides)
    threads = check_threads(threads)
    reference_net = load_network(checkpoint, model, model_kwargs, trust_pickled_file)
    checkpoint_sha256 = sha256_file(checkpoint)
    weights = weights_sha256(reference_net)
    folders = artifact_folders(Path(exports)) if exports is not None else []
    refuse_other_weights(folders, weights, checkpoint, model, model_kwargs)
    shape = declared_input_shape(reference_net)  # None: the inputs' own shape
    run_info = text_fields(read_json_object(checkpoint.parent / RUN_INFO))
    recorded_dir = None
    if dataset is None and data_dir is None:  # the data the run was trained on, as evaluate
        data_dir = run_info.get("data_dir")
        recorded_dir = checkpoint.parent / RUN_INFO if data_dir and inputs is None else None
    if dataset is None and inputs is None:  # own inputs use no data set
        dataset = recorded_dataset(run_info.get("dataset"), checkpoint.parent / RUN_INFO)
    with recorded_in(recorded_dir, data_dir):
        main, labels, described, split = _main_inputs(inputs, shape, dataset, data_dir, limit)
    shape = tuple(main.shape[1:])
    sets = build_input_sets(main, shape)
    nonfinite_samples = len(main) - len(sets[0].x)
    if labels is not None:
        labels = labels[: len(sets[0].x)]
    old_threads = torch.get_num_threads()
    threads = threads if threads is not None else old_threads
    torch.set_num_threads(threads)
    try:
        reference_row = ParityRow(
            "reference", "eager", "eager", "reference", str(checkpoint), Tolerances.exact()
        )
        reference = _run_row(
            reference_row, lambda: _eager(reference_net, device, shape, threads), sets
        )
        if reference is None:
            raise CheckFailedError(f"the eager reference did not run: {reference_row.error}")
        problem = class_scores_problem(reference["main"].shape, len(sets[0].x))
        if problem is not None:
            raise UsageError(f"{type(reference_net).__name__} {problem}")
        classes = reference["main"].shape[1]
        if labels is not None and classes != NUM_CLASSES:  # as evaluate refuses it
            raise UsageError(
                f"{type(reference_net).__name__} gives {classes} scores per sample, but "
                f"{described} has {NUM_CLASSES} classes; check --model_kwargs"
            )
        ref_acc = accuracy(reference["main"], labels) if labels is not None else None
        plans: list[RowPlan] = [(reference_row, None)]
        plans += _reload_plans(
            checkpoint, device, shape, threads, trust_pickled_file, model, model_kwargs
        )
        notes: list[str] = []
        if exports is not None:
            if not folders:
                notes.append(f"no artifact folders (with manifest.json) in {exports}")
            for folder in folders:
                plans += _artifact_plans(folder, device, threads, overrides, weights)
        rows = []
        for row, make_runner in plans:
            outputs = reference if row.kind == "reference" else None
            if make_runner is not None:
                outputs = _run_row(row, make_runner, sets)
            if outputs is not None:
                evaluate_row(row, outputs, reference, sets, labels, ref_acc)
            rows.append(row)
    finally:
        torch.set_num_threads(old_threads)
    return ParityReport(
        checkpoint=str(checkpoint),
        exports=str(exports) if exports is not None else None,
        reference=f"eager {type(reference_net).__name__} from {checkpoint.name}",
        dataset=described,
        split=split,
        samples=len(main),
        nonfinite_input_samples=nonfinite_samples,
        reference_accuracy=ref_acc,
        input_sets={
            s.name: {"batch_size": s.batch_size, "samples": len(s.x), "judged": s.judged}
            for s in sets
        },
        device=device,
        threads=threads,
        eps=EPS,
        rule=RULE,
        overrides=overrides,
        rows=rows,
        versions=environment(),
        notes=notes,
        checkpoint_sha256=checkpoint_sha256,
        data_dir=str(Path(data_dir).resolve()) if data_dir is not None and split else None,
    )


def _main_inputs(
    inputs: Any,
    shape: tuple[int, ...] | None,
    dataset: str | None,
    data_dir: str | Path | None,
    limit: int | None,
) -> tuple[torch.Tensor, np.ndarray | None, str, str | None]:
    """(inputs, labels or None, description, split or None); ``dataset`` None: the default."""
    if inputs is not None:
        x = read_inputs(inputs, shape)[:limit]
        name = str(inputs) if isinstance(inputs, str | Path) else "inputs given in memory"
        return x, None, name, None
    from toolkit.data import DEFAULT_DATASET, load_split, to_float

    dataset = dataset or DEFAULT_DATASET
    images, labels = load_split("test", dataset, data_dir)
    x = to_float(images[:limit])
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise UsageError(
            f"the {dataset} test images have shape {tuple(x.shape[1:])}, the network takes "
            f"{shape}; pass --inputs with inputs of shape (N, {', '.join(map(str, shape))})"
        )
    return x, labels[:limit].numpy(), dataset, "test"


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"unknown device '{device}'; use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device '{device}'; use cpu or cuda")


def environment() -> dict[str, str]:
    """Versions of Python, the platform and the packages that produced the numbers."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "numpy", "onnx", "onnxruntime", "lightning"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# -- rendering -----------------------------------------------------------------------------
def _columns() -> list[Any]:
    from toolkit.report import Column, number

    sci = number(".2e")
    return [
        Column("name", "name", justify="left"),
        Column("format", "format", justify="left"),
        Column("runtime", "runtime", justify="left"),
        Column("max_abs", "max abs", sci),
        Column("max_rel", "max rel", sci),
        Column("mean_abs", "mean abs", sci),
        Column("nonfinite", "NaN/Inf"),
        Column("agreement", "agree %", number(".2f", 100)),
        Column("flipped", "flipped", number("d")),
        Column("accuracy", "acc %", number(".2f", 100)),
        Column("accuracy_delta", "Δacc pts", number("+.2f", 100)),
        Column("min_atol", "min atol", sci),
        Column("batch_invariance_max_abs", "batch Δ", sci),
        Column("status", "status", justify="left"),
    ]


def _tolerance_columns() -> list[Any]:
    from toolkit.report import Column, format_number, number

    return [
        Column("name", "name", justify="left"),
        Column("atol", "atol", number("g")),
        Column("rtol", "rtol", number("g")),
        Column("min_agreement", "min agreement %", number("g", 100)),
        Column("max_accuracy_drop", "max acc drop pts", number("g", 100)),
        Column("judged_by", "judged by", format_number, justify="left"),
        Column("min_atol", "min passing atol", number(".2e")),
        Column("min_rtol", "min passing rtol", number(".2e")),
        Column("nonfinite_input_outputs", "non-finite outputs for NaN/Inf inputs", number("d")),
        Column("reasons", "reasons", format_number, justify="left"),
    ]


def table_rows(report: ParityReport) -> list[dict[str, Any]]:
    """One flat dict per row, the data both the terminal table and parity.md show."""
    out = []
    for row in report.rows:
        data = row.to_json()
        data.pop("sets")
        has_metrics = row.max_abs is not None
        data["nonfinite"] = f"{row.nan_count}/{row.inf_count}" if has_metrics else None
        tol = row.tolerances
        if tol is not None:
            data.update(dataclasses.asdict(tol))
            data["judged_by"] = "labels, accuracy" if tol.judged_by_labels else "values, labels"
        data["reasons"] = "; ".join(row.reasons) or None
        out.append(data)
    return out


def _row_style(row: dict[str, Any]) -> str | None:
    return {FAIL: "bold red", SKIP: "dim"}.get(row.get("status", ""))


def print_report(report: ParityReport, file: Any = None) -> None:
    """Print the parity table and a one-line verdict (stdout by default)."""
    from toolkit.report import print_table, rich_table, table_width

    file = file or sys.stdout
    width = table_width(file)
    title = (
        f"Parity vs {report.reference} — {_inputs_line(report)}; max abs/rel are the max "
        "over all input sets, mean abs the mean over all their samples (parity.md has each "
        "set's)"
    )
    table = rich_table(table_rows(report), _columns(), title=title, row_style=_row_style)
    print_table(table, file=file, width=width)
    for note in report.notes:
        print(f"note: {note}", file=file)
    verdict = "PASS" if report.passed else "FAIL"
    failing = report.failing_rows()
    detail = f"; failing: {', '.join(r.name for r in failing)}" if failing else ""
    print(
        "rule: a value-judged row passes when every |diff| <= atol + rtol*|ref| (so max abs "
        "and max rel may each exceed atol and rtol); min atol = the least atol that passes "
        "at the format's rtol",
        file=file,
    )
    print(f"parity: {verdict} ({len(report.rows)} rows, eps {report.eps:g}){detail}", file=file)


def _inputs_line(report: ParityReport) -> str:
    what = f"{report.dataset} {report.split}" if report.split else report.dataset
    if report.data_dir:
        what += f" from {report.data_dir}"
    acc = (
        f", reference accuracy {report.reference_accuracy * 100:.2f}%"
        if report.reference_accuracy is not None
        else ""
    )
    return f"{what}, {report.samples:,} samples{acc}"


def render_markdown(report: ParityReport) -> str:
    """``parity.md``: the same rows as the terminal table, plus tolerances and failures."""
    from toolkit.report import markdown_table

    rows = table_rows(report)
    lines = [
        f"# Parity report: {'PASS' if report.passed else 'FAIL'}",
        "",
        f"- Checkpoint: `{report.checkpoint}`",
        f"- Artifacts: `{report.exports}`",
        f"- Reference: {report.reference}",
        f"- Inputs: {_inputs_line(report)}"
        + (
            f" ({report.nonfinite_input_samples} samples with NaN/Inf, reported apart)"
            if report.nonfinite_input_samples
            else ""
        ),
        "- Input sets: "
        + ", ".join(
            f"{name} ({s['samples']} at batch {s['batch_size']}"
            + ("" if s["judged"] else ", not judged")
            + ")"
            for name, s in report.input_sets.items()
        ),
        f"- Rule: {report.rule}",
        f"- Relative difference: |cand - ref| / (|ref| + eps), eps = {report.eps:g}",
        f"- Tolerance overrides: {report.overrides or 'none'}",
        f"- Device: {report.device}, threads: {report.threads}",
        "",
        "## Results",
        "",
        markdown_table(rows, _columns()),
        "## Tolerances and the smallest that would have passed",
        "",
        markdown_table(rows, _tolerance_columns()),
    ]
    lines += ["## Max abs diff per input set", "", _per_set_table(report)]
    failing = report.failing_rows()
    if failing:
        lines += ["## Failures", ""] + [f"- **{r.name}**: {'; '.join(r.reasons)}" for r in failing]
        lines.append("")
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in report.versions.items()]
    lines += [f"- note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _per_set_table(report: ParityReport) -> str:
    from toolkit.report import Column, markdown_table, number

    names = [name for name, s in report.input_sets.items() if s["judged"]]
    rows = [{"name": row.name, **{st.name: st.max_abs for st in row.sets}} for row in report.rows]
    columns = [Column("name", "name", justify="left")]
    columns += [Column(name, name, number(".2e")) for name in names]
    return markdown_table(rows, columns)


def write_report(report: ParityReport, folder: str | Path) -> tuple[Path, Path]:
    """Atomically write ``parity.json`` and ``parity.md`` into ``folder``, as a pair."""
    from toolkit.atomic import atomic_paths, write_plain

    folder = Path(folder)
    json_path, md_path = folder / REPORT_JSON, folder / REPORT_MD
    markdown = render_markdown(report)
    with atomic_paths([json_path, md_path]) as (json_tmp, md_tmp):
        write_plain(json_tmp, json.dumps(report.to_json(), indent=2) + "\n")
        write_plain(md_tmp, markdown)
    return json_path, md_path


#: Failing rows whose first reason the one-line error gives; it names every failing row,
#: and parity.md has every reason of each.
MAX_REASONS_IN_ERROR = 3


# -- the CLI verb --------------------------------------------------------------------------
def verify_command(
    checkpoint: str,
    exports: str | None = None,
    device: str = "cpu",
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
    limit: int | None = None,
    inputs: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    trust_pickled_file: bool = False,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ParityReport:
    """Verify that every reload path and exported artifact matches eager PyTorch.

    Prints a table, writes ``parity.json`` and ``parity.md`` into the exports folder and
    fails (exit 1) naming every failing row. Tolerance options replace every format's
    defaults; reload rows must stay bitwise equal.

    Args:
        checkpoint: The run's ``model.ckpt`` (or its ``model.pt``/``model.safetensors``).
        exports: Folder of exported artifacts (default: as ``export`` writes them,
            ``exports/<run name>``, or ``exports/<folder>-<file stem>`` outside a run
            folder).
        device: ``cpu`` or ``cuda``.
        atol: Absolute tolerance for value-judged formats, finite, >= 0.
        rtol: Relative tolerance for value-judged formats, finite, >= 0.
        min_agreement: Minimal top-1 agreement with the reference, 0..1 (0.99 = 99%).
        max_accuracy_drop: Largest accuracy drop for label-judged formats, 0..1
            (0.005 = 0.5 points).
        limit: Use only the first N test samples (default: all).
        inputs: Own inputs instead of the test split: a float32 ``.npy`` or ``.pt`` of
            shape (N, *input_shape).
        dataset: Data set of the test split (default: the run's).
        data_dir: Folder with the IDX files (default: the run's, from ``run.json``, when
            neither this nor ``dataset`` is given).
        threads: Intra-op threads for every runtime, at least 1 (default: torch's setting).
        trust_pickled_file: Allow arbitrary unpickling of the checkpoint (trusted files only).
        model: Network registry name, for a weights file that does not record it (a
            tutorial state_dict ``.pt`` without ``run.json``).
        model_kwargs: Constructor kwargs of ``model`` (override what the file records).

    Returns:
        The :class:`ParityReport`.

    Raises:
        UsageError: a bad option, before anything is loaded, run or written.
        CheckFailedError: a row failed (after the reports are written).
    """
    overrides = check_overrides(
        {
            "atol": atol,
            "rtol": rtol,
            "min_agreement": min_agreement,
            "max_accuracy_drop": max_accuracy_drop,
        }
    )
    threads = check_threads(threads)
    from toolkit.reload import check_is_file

    check_is_file(checkpoint)  # before the exports folder, which is named after it
    folder = Path(exports) if exports is not None else default_exports_dir(checkpoint)
    if folder.is_file():
        raise UsageError(f"--exports {folder} is a file; give the folder of format folders")
    export_hint = export_command_line(checkpoint, model, model_kwargs, "--format", "all")
    if not folder.is_dir():
        raise UsageError(f"no exports folder {folder}; run `{export_hint}` first or pass --exports")
    clean_stale_partials(folder)  # finish or undo what a killed export left
    if not artifact_folders(folder):
        raise UsageError(
            f"no artifact folders (with manifest.json) in {folder}; run `{export_hint}` "
            "first or pass --exports"
        )
    report = verify(
        checkpoint,
        folder,
        device=device,
        overrides=overrides,
        limit=limit,
        inputs=inputs,
        dataset=dataset,
        data_dir=data_dir,
        threads=threads,
        trust_pickled_file=trust_pickled_file,
        model=model,
        model_kwargs=model_kwargs,
    )
    print_report(report)
    _, md_path = write_report(report, folder)
    if not report.passed:
        rows = report.failing_rows()
        failing = ", ".join(
            row.brief() if i < MAX_REASONS_IN_ERROR else row.name for i, row in enumerate(rows)
        )
        raise CheckFailedError(f"parity failed for: {failing}; see {md_path}")
    return report
