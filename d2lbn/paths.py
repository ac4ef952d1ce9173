"""Which code a batch-norm call ran: a counter the book's cells assert on (ch02-ch06, ch10, appendix).

``d2lbn``'s batch norm has several implementations behind one signature (chapter 2's
``batch_norm``, and the fast layer's compiled graph, closed-form ``Function`` and
inference scale-and-shift). Which one a call takes depends on the mode, ``impl`` and
the input's size, so a sentence like "this check runs the closed form" is a claim about
code. :func:`record_paths` makes it checkable::

    with record_paths() as taken:
        layer(X)
    assert taken == {"graph": 1}

Path names (:data:`PATHS`):

* ``"naive"``: ``d2lbn.norm.batch_norm`` in training mode (autograd differentiates the
  formula operator by operator);
* ``"naive-inference"``: ``d2lbn.norm.batch_norm`` in inference mode;
* ``"graph"``: the compiled graph of ``d2lbn.graph_norm`` (training mode, autograd
  differentiates the graph);
* ``"closed-form"``: ``d2lbn.fast_norm.BatchNormTrain``, whose backward pass is the
  hand-derived closed form of chapter 3 (training mode);
* ``"fast-inference"``: ``d2lbn.fast_norm.fast_batch_norm`` in inference mode (one
  scale-and-shift).

Outside a ``record_paths`` block nothing is counted (one list check per call).
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
import functools
from typing import Callable, Iterator, List

__all__ = ["PATHS", "record_paths", "note_path", "counted"]

#: Every path name :func:`note_path` accepts.
PATHS = ("naive", "naive-inference", "graph", "closed-form", "fast-inference")

_active: List[Counter] = []


def note_path(path: str) -> None:
    """Count one call of ``path`` (one of :data:`PATHS`) in every open
    :func:`record_paths` block. An unknown name is a ``ValueError``."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}; got {path!r}")
    for taken in _active:
        taken[path] += 1


@contextmanager
def record_paths() -> Iterator[Counter]:
    """Within the block, count the batch-norm paths taken; yields a ``Counter`` from
    path name to number of calls (blocks nest: each counts what ran inside it)."""
    taken: Counter = Counter()
    _active.append(taken)
    try:
        yield taken
    finally:
        # by identity: two nested blocks may hold equal counts
        del _active[next(i for i, c in enumerate(_active) if c is taken)]


def counted(path: str) -> Callable[[Callable], Callable]:
    """Decorate a function with ``batch_norm``'s signature so that each call counts as
    ``path`` (training mode) or ``path + "-inference"`` (``training=False``)."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            note_path(path if kwargs.get("training", True) else path + "-inference")
            return fn(*args, **kwargs)
        return wrapper
    return decorate
