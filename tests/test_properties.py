"""Property-based tests of the parity metrics (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from toolkit import parity

logits = st.integers(1, 40).flatmap(
    lambda n: arrays(np.float32, (n, 10), elements=st.floats(-1e3, 1e3, width=32))
)
pairs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        arrays(np.float32, (n, 10), elements=st.floats(-1e3, 1e3, width=32)),
        arrays(np.float32, (n, 10), elements=st.floats(-1e3, 1e3, width=32)),
    )
)


@settings(max_examples=60, deadline=None)
@given(logits)
def test_identical_outputs_give_zero_difference(a: np.ndarray) -> None:
    assert parity.max_abs_diff(a, a) == 0.0
    assert parity.max_rel_diff(a, a) == 0.0
    assert parity.mean_abs_diff(a, a) == 0.0
    assert parity.allclose_violations(a, a, atol=0.0, rtol=0.0) == 0
    assert parity.top1_agreement(a, a) == (1.0, 0)


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_absolute_metrics_and_agreement_are_symmetric(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert parity.max_abs_diff(a, b) == parity.max_abs_diff(b, a)
    assert parity.mean_abs_diff(a, b) == parity.mean_abs_diff(b, a)
    assert parity.top1_agreement(a, b) == parity.top1_agreement(b, a)
    # The relative difference is measured against the reference, so it is not symmetric,
    # but it is never negative and zero only when the outputs are equal.
    assert parity.max_rel_diff(a, b) >= 0.0
    assert (parity.max_rel_diff(a, b) == 0.0) == bool(np.array_equal(a, b))


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_difference_metrics_match_their_definitions(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """Element by element in Python floats: |c - r|, and |c - r| / (|r| + eps) against the
    reference (the first argument), so a swapped denominator or a mean for a max fails."""
    reference, candidate = pair
    r = [float(v) for v in reference.ravel()]
    c = [float(v) for v in candidate.ravel()]
    diffs = [abs(y - x) for x, y in zip(r, c, strict=True)]
    rels = [abs(y - x) / (abs(x) + parity.EPS) for x, y in zip(r, c, strict=True)]
    assert parity.max_abs_diff(reference, candidate) == pytest.approx(max(diffs), rel=1e-12)
    assert parity.max_rel_diff(reference, candidate) == pytest.approx(max(rels), rel=1e-12)
    assert parity.mean_abs_diff(reference, candidate) == pytest.approx(
        sum(diffs) / len(diffs), rel=1e-9, abs=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_label_agreement_matches_a_direct_count(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    same = sum(int(np.argmax(a[i]) == np.argmax(b[i])) for i in range(len(a)))
    agreement, flipped = parity.top1_agreement(a, b)
    assert flipped == len(a) - same
    assert agreement == same / len(a)


@settings(max_examples=60, deadline=None)
@given(pairs, st.sampled_from([0.0, 1e-3, 1e-1]))
def test_min_passing_atol_passes_and_is_tight(
    pair: tuple[np.ndarray, np.ndarray], rtol: float
) -> None:
    a, b = pair
    atol = parity.min_passing_atol(a, b, rtol)
    assert parity.allclose_violations(a, b, atol=atol * (1 + 1e-9) + 1e-12, rtol=rtol) == 0
    if atol > 1e-6:
        assert parity.allclose_violations(a, b, atol=atol * 0.99, rtol=rtol) > 0
