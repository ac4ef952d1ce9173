"""Shared test helpers: a float64 NumPy reference of batch normalization (the independent oracle)."""
import numpy as np
import pytest

import d2lbn  # noqa: F401  (first: under NumPy 1.24-1.26 it aliases numpy.bool before mxnet loads)


def numpy_batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """Float64 batch norm written directly from Ioffe & Szegedy (2015), Algorithm 1.

    x: (N, D) or (N, C, H, W). Returns (y, batch_mean, biased_batch_var) with the statistics shaped (D,)/(C,).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        xt = x                                            # (m, D)
    else:
        xt = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])  # (N*H*W, C)
    m = xt.shape[0]
    mean = xt.sum(axis=0) / m
    var = ((xt - mean) ** 2).sum(axis=0) / m
    yt = gamma * (xt - mean) / np.sqrt(var + eps) + beta
    y = yt if x.ndim == 2 else yt.reshape(x.shape[0], x.shape[2], x.shape[3], -1).transpose(0, 3, 1, 2)
    return y, mean, var


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
