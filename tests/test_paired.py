"""The paired comparison of ``rome-bench compare``: McNemar's exact p and the paired bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rome_bench.evaluation.paired import mcnemar_exact, paired_difference


def test_mcnemar_exact_known_values():
    # 10 discordant examples for a, 2 for b: p = 2·P(Bin(12, ½) <= 2) = 2·(1 + 12 + 66)/4096
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_identical_models_have_a_zero_width_paired_interval():
    """Pairing is what makes the interval narrow: the same vector on both sides differs on no example, so every
    resample's difference is 0 (independent resampling of the two sides would give a width of ~±9 pp here)."""
    rng = np.random.default_rng(1)
    vector = rng.random(500) < 0.3
    result = paired_difference([vector], [vector.copy()])
    assert (result.estimate, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.pairs[0].a_only == result.pairs[0].b_only == 0


def test_interval_covers_a_known_difference_and_has_the_binomial_width():
    """a is b plus 40 extra robust examples of 500: Δ = 8 pp exactly; the paired interval's half-width is about
    1.96·sqrt(p(1−p)/n) with p = 40/500 the discordant rate (all of one sign)."""
    b = np.zeros(500, dtype=bool)
    b[:150] = True
    a = b.copy()
    a[150:190] = True
    result = paired_difference([a], [b])
    assert result.estimate == pytest.approx(0.08)
    half_width = 1.96 * math.sqrt(0.08 * 0.92 / 500)
    assert result.low == pytest.approx(0.08 - half_width, abs=0.006)
    assert result.high == pytest.approx(0.08 + half_width, abs=0.006)
    assert result.pairs[0].a_only == 40 and result.pairs[0].b_only == 0 and result.pairs[0].p_value < 1e-10


def test_seeds_are_averaged_per_example_and_paired_in_order():
    a1, a2 = np.array([1, 1, 0, 0], dtype=bool), np.array([1, 0, 1, 0], dtype=bool)
    b1, b2 = np.array([1, 0, 0, 0], dtype=bool), np.array([0, 0, 0, 0], dtype=bool)
    result = paired_difference([a1, a2], [b1, b2], resamples=2000)
    assert result.estimate == pytest.approx((2 / 4 + 2 / 4) / 2 - (1 / 4 + 0) / 2)
    assert [(pair.a_only, pair.b_only) for pair in result.pairs] == [(1, 0), (2, 0)]


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="same examples"):
        paired_difference([np.ones(3, dtype=bool)], [np.ones(4, dtype=bool)])
