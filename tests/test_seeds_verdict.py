"""d2lbn.seeds.compare_seeds against hand-worked cases and NumPy's statistics."""
from __future__ import annotations

import numpy as np
import pytest

from d2lbn.seeds import VERDICTS, compare_seeds


def test_ahead_on_every_seed_and_the_numbers_match_numpy():
    a, b = [0.80, 0.82, 0.79], [0.78, 0.81, 0.70]
    v = compare_seeds(a, b, "BN", "plain")
    d = np.array(a) - np.array(b)
    assert v.kind == "ahead" and v.a_better and not v.b_better
    assert v.mean == pytest.approx(d.mean()) and v.spread == pytest.approx(d.std(ddof=1))
    assert v.differences == pytest.approx(tuple(d))
    assert "BN is ahead on every seed against plain" in v.text


def test_behind_on_every_seed():
    assert compare_seeds([1, 2, 3], [2, 3, 4]).kind == "behind"


def test_mixed_signs_small_mean_is_level():
    # ch09's dark images: AdaBN vs fine-tuning, paired +0.009, -0.0012, +0.0106
    adabn, tuned = [0.8241, 0.8060, 0.8193], [0.8151, 0.8072, 0.8087]
    v = compare_seeds(adabn, tuned, "AdaBN", "fine-tuning")
    d = np.array(adabn) - np.array(tuned)
    assert abs(d.mean()) < d.std(ddof=1)          # the rule, by NumPy
    assert v.kind == "level" and v.words == VERDICTS["level"]


def test_mixed_signs_large_mean_is_ahead_on_the_mean():
    d = np.array([1.0, 1.0, 1.0, 1.0, -0.1])
    assert d.mean() > d.std(ddof=1)
    v = compare_seeds(d, np.zeros(5))
    assert v.kind == "ahead-on-mean"
    assert compare_seeds(np.zeros(5), d).kind == "behind-on-mean"


def test_lower_is_better_flips_the_orientation():
    v = compare_seeds([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], "fast", "slow", higher_is_better=False)
    assert v.kind == "ahead" and "lower is better" in v.text


def test_tie_absorbs_quantised_differences():
    assert compare_seeds([0.5, 0.5, 0.501], [0.5, 0.5, 0.5]).kind == "level"
    assert compare_seeds([0.501, 0.501, 0.502], [0.5, 0.5, 0.5], tie=0.0015).kind == "level"
    assert compare_seeds([0.502, 0.503, 0.504], [0.5, 0.5, 0.5], tie=0.0015).kind == "ahead"


def test_numpy_scalars_and_arrays_are_accepted():
    v = compare_seeds(np.array([0.9, 0.8, 0.7], dtype=np.float32), [np.float64(0.1)] * 3)
    assert v.kind == "ahead"


@pytest.mark.parametrize("a, b, match", [
    ([1, 2], [1, 2], "at least 3 seeds"),
    ([1, 2, 3], [1, 2], "one result per seed"),
    ([1, float("nan"), 3], [1, 2, 3], "non-finite"),
    (["x", 2, 3], [1, 2, 3], "sequence of numbers"),
])
def test_bad_input_is_named(a, b, match, monkeypatch):
    monkeypatch.delenv("D2LBN_QUICK", raising=False)
    with pytest.raises((ValueError, TypeError), match=match):
        compare_seeds(a, b)


def test_bad_tie_is_named():
    with pytest.raises(ValueError, match="tie"):
        compare_seeds([1, 2, 3], [1, 2, 3], tie=-1)


def test_quick_mode_accepts_one_seed_and_the_full_run_does_not(monkeypatch):
    monkeypatch.setenv("D2LBN_QUICK", "1")
    assert compare_seeds([0.9], [0.8]).kind == "ahead"
    monkeypatch.setenv("D2LBN_QUICK", "")
    with pytest.raises(ValueError, match="at least 3 seeds"):
        compare_seeds([0.9], [0.8])
