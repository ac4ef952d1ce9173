"""Reproducibility: one call seeds every random number generator the book uses."""
from __future__ import annotations

import random

import mxnet as mx
import numpy as np

__all__ = ["set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and MXNet (every context) with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)
