"""d2lbn.seeds: compare_seeds against hand-worked cases and NumPy's statistics; the seed lists,
settings and tables against hand-worked values."""
from __future__ import annotations

import numpy as np
import pytest

import d2lbn.training
from d2lbn import seeds as S
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


def test_seed_summary_and_table():
    s = S.seed_summary([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["min"] == 0.5 and s["max"] == 0.7
    assert s["std"] == pytest.approx(np.sqrt(2 / 300))
    assert S.seed_summary([0.3])["std"] == 0
    table = S.seed_table({"a": [0.5, 0.7, 0.6], "b": [1, 2, 3]}, [0, 1, 2], fmt=".2f")
    lines = table.splitlines()
    assert lines[0].split() == ["seed", "a", "b"]
    assert lines[2].split() == ["1", "0.70", "2.00"]
    assert lines[4].split() == ["mean", "0.60", "2.00"]
    assert lines[-1].split() == ["max", "0.70", "3.00"]
    with pytest.raises(ValueError, match="finite"):
        S.seed_summary([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        S.seed_summary([])
    with pytest.raises(ValueError, match="2 values for 3 seeds"):
        S.seed_table({"a": [1, 2]}, [0, 1, 2])

def test_study_seeds_and_settings():
    assert len(S.study_seeds(quick=False)) >= 3 and len(set(S.study_seeds(quick=False))) >= 3
    assert len(S.study_seeds(quick=True)) >= 1
    quick, full = S.lenet_study_settings(True), S.lenet_study_settings(False)
    assert quick == d2lbn.training.lenet_settings(True)
    base = d2lbn.training.lenet_settings(False)
    assert (full.lr, full.batch_size, full.momentum, full.lr_schedule, full.train_limit) == \
        (base.lr, base.batch_size, base.momentum, base.lr_schedule, base.train_limit)
    assert quick.num_epochs <= full.num_epochs and 0.1 < quick.min_test_acc <= full.min_test_acc
