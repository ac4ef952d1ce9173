"""Reproducibility: one call seeds every random number generator the book uses (every chapter)."""
from __future__ import annotations

import random

import mxnet as mx
import numpy as np

from .checks import check_int

__all__ = ["set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and MXNet (every context) with ``seed`` (an int >= 0, a NumPy
    integer too)."""
    seed = check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)
