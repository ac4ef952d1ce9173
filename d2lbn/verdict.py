"""Which of two methods wins, decided by a rule over paired seeds, not by the author.

Every comparison in the book runs both methods on the same seeds. :func:`compare_seeds`
pairs the results seed by seed, takes the differences ``d_s = a_s - b_s`` (or
``b_s - a_s`` when lower is better), and returns one of five verdicts:

* ``"ahead"``: A is ahead of B on every seed (every ``d_s > tie``);
* ``"behind"``: A is behind B on every seed (every ``d_s < -tie``);
* ``"ahead-on-mean"`` / ``"behind-on-mean"``: the seeds disagree, but the mean paired
  difference is larger than the spread of the paired differences (their standard
  deviation, ``ddof=1``);
* ``"level"``: the seeds disagree and the mean paired difference is within that spread.

The rule is deliberately simple, so a reader can redo it by eye from the per-seed
table: with three seeds no test has power, and "ahead on every seed" is the strongest
thing three runs can say. The verdict's :attr:`Verdict.text` is the sentence the book
glues into its prose (the key ends in ``_verdict``; ``tests/prose_verdicts.py`` looks
for it).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["Verdict", "compare_seeds", "VERDICTS"]

#: The verdicts :func:`compare_seeds` returns, with the words the book uses for each.
VERDICTS = {
    "ahead": "ahead on every seed",
    "behind": "behind on every seed",
    "ahead-on-mean": "ahead on the mean, not on every seed",
    "behind-on-mean": "behind on the mean, not on every seed",
    "level": "level within the seed spread",
}


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`compare_seeds`.

    ``differences``: the paired differences, oriented so that positive means A is
    better; ``mean`` and ``spread``: their mean and standard deviation (ddof=1);
    ``kind``: a key of :data:`VERDICTS`.
    """

    name_a: str
    name_b: str
    differences: Tuple[float, ...]
    mean: float
    spread: float
    kind: str
    higher_is_better: bool

    @property
    def words(self) -> str:
        """The verdict alone, e.g. ``"ahead on every seed"``."""
        return VERDICTS[self.kind]

    @property
    def a_better(self) -> bool:
        """True when A is ahead on every seed or on the mean beyond the spread."""
        return self.kind in ("ahead", "ahead-on-mean")

    @property
    def b_better(self) -> bool:
        """True when B is ahead on every seed or on the mean beyond the spread."""
        return self.kind in ("behind", "behind-on-mean")

    @property
    def text(self) -> str:
        """One sentence for the prose, with the numbers that decided it."""
        sign = "" if self.higher_is_better else " (lower is better)"
        per_seed = ", ".join(f"{d:+.4g}" for d in self.differences)
        return (f"{self.name_a} is {self.words} against {self.name_b}{sign}: paired "
                f"difference {self.mean:+.4g} (per seed {per_seed}; spread "
                f"{self.spread:.2g})")

    def __str__(self) -> str:
        return self.text


def _as_floats(values: Sequence[float], name: str) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of numbers, one per seed; got "
                        f"{values!r}") from err
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} holds a non-finite result ({bad[0]}): a diverged run "
                         "cannot be compared; report it instead")
    return out


def compare_seeds(a: Sequence[float], b: Sequence[float], name_a: str = "A",
                  name_b: str = "B", *, higher_is_better: bool = True,
                  tie: float = 0.0, min_seeds: Optional[int] = None) -> Verdict:
    """Compare per-seed results ``a`` and ``b`` (same seeds, same order) and return the
    :class:`Verdict` (see the module docstring for the rule).

    a, b: (S,) sequences of finite numbers, S >= ``min_seeds`` (None: 3, the book's
    rule, or 1 when ``D2LBN_QUICK`` is set: nbval's quick run trains one seed, and its
    outputs are never stored);
    ``tie``: a paired difference of at most this size counts for neither side (use it
    for results quantised to a step, such as an accuracy over 1,000 images).
    """
    if min_seeds is None:
        min_seeds = 1 if os.environ.get("D2LBN_QUICK", "") not in ("", "0") else 3
    a_vals, b_vals = _as_floats(a, "a"), _as_floats(b, "b")
    if len(a_vals) != len(b_vals):
        raise ValueError(f"a and b must hold one result per seed each, paired; got "
                         f"{len(a_vals)} and {len(b_vals)}")
    if len(a_vals) < min_seeds:
        raise ValueError(f"a comparison needs at least {min_seeds} seeds; got "
                         f"{len(a_vals)}")
    if not (isinstance(tie, (int, float)) and math.isfinite(tie) and tie >= 0):
        raise ValueError(f"tie must be a finite number >= 0; got {tie!r}")
    sign = 1.0 if higher_is_better else -1.0
    diffs = tuple(sign * (x - y) for x, y in zip(a_vals, b_vals))
    n = len(diffs)
    mean = sum(diffs) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    if all(d > tie for d in diffs):
        kind = "ahead"
    elif all(d < -tie for d in diffs):
        kind = "behind"
    elif abs(mean) > spread and abs(mean) > tie:
        kind = "ahead-on-mean" if mean > 0 else "behind-on-mean"
    else:
        kind = "level"
    return Verdict(name_a, name_b, diffs, mean, spread, kind, higher_is_better)
