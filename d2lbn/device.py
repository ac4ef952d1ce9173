"""Device (context) selection: a GPU when there is one, the CPU otherwise (ch04-ch10)."""
from __future__ import annotations

from typing import List

import mxnet as mx

from .checks import check_int

__all__ = ["num_gpus", "try_gpu", "try_all_gpus"]


def num_gpus() -> int:
    """Number of GPUs MXNet can see (0 with the CPU wheel)."""
    return mx.context.num_gpus()


def try_gpu(i: int = 0) -> mx.Context:
    """Return ``mx.gpu(i)`` if GPU ``i`` exists, else ``mx.cpu()``."""
    i = check_int("i", i, minimum=0, what="a GPU index, an int >= 0")
    return mx.gpu(i) if num_gpus() >= i + 1 else mx.cpu()


def try_all_gpus() -> List[mx.Context]:
    """Return every available GPU, or ``[mx.cpu()]`` when there is none."""
    gpus = [mx.gpu(i) for i in range(num_gpus())]
    return gpus if gpus else [mx.cpu()]
