"""Batch normalization from scratch.

Shapes used throughout:

* fully connected input ``X: (N, D)`` -- statistics per feature, over axis 0;
* convolutional input ``X: (N, C, H, W)`` -- statistics per channel, over axes (0, 2, 3).

``gamma``, ``beta``, ``moving_mean`` and ``moving_var`` are 1-D arrays of length ``D`` (or ``C``),
the same layout as MXNet's own ``gluon.nn.BatchNorm`` parameters, so weights can be exchanged.
"""
from __future__ import annotations

from typing import Tuple

import mxnet as mx
from mxnet import nd

__all__ = ["pure_batch_norm", "reduction_axes", "check_norm_inputs"]


def reduction_axes(X: nd.NDArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Return ``(axes, param_shape)`` for normalising ``X``.

    ``X: (N, D)`` gives ``axes=(0,)`` and ``param_shape=(1, D)``;
    ``X: (N, C, H, W)`` gives ``axes=(0, 2, 3)`` and ``param_shape=(1, C, 1, 1)``.
    Any other rank raises ``ValueError`` naming the shape that was given.
    """
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    if X.ndim == 2:
        return (0,), (1, X.shape[1])
    if X.ndim == 4:
        return (0, 2, 3), (1, X.shape[1], 1, 1)
    raise ValueError(
        f"X must have rank 2 (N, D) or rank 4 (N, C, H, W); got rank {X.ndim} with shape {X.shape}")


def _check_vector(name: str, value: nd.NDArray, num_features: int, X: nd.NDArray) -> None:
    """Raise a clear error unless ``value`` is a 1-D NDArray of length ``num_features`` on X's context."""
    if not isinstance(value, nd.NDArray):
        raise TypeError(f"{name} must be an mxnet NDArray of shape ({num_features},), "
                        f"got {type(value).__name__}")
    if value.shape != (num_features,):
        raise ValueError(f"{name} must have shape ({num_features},) to match X of shape {X.shape} "
                         f"({num_features} features/channels); got shape {value.shape}")
    if value.context != X.context:
        raise ValueError(f"{name} lives on {value.context} but X lives on {X.context}; "
                         f"move it with {name}.as_in_context(X.context)")


def check_norm_inputs(X: nd.NDArray, eps: float, **vectors: nd.NDArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Validate ``X``, ``eps`` and the per-feature vectors; return ``reduction_axes(X)``."""
    axes, param_shape = reduction_axes(X)
    if any(size == 0 for size in X.shape):
        raise ValueError(f"X must not be empty; got shape {X.shape}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps the division finite); got {eps!r}")
    for name, value in vectors.items():
        _check_vector(name, value, X.shape[1], X)
    return axes, param_shape


def pure_batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                    eps: float = 1e-5) -> nd.NDArray:
    """Normalise ``X`` with its own mini-batch statistics, then scale by ``gamma`` and shift by ``beta``.

    X: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,). Returns an array shaped like X.
    The variance is the biased one (divide by the number of values), as in Ioffe & Szegedy (2015).
    """
    axes, param_shape = check_norm_inputs(X, eps, gamma=gamma, beta=beta)
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / nd.sqrt(var + eps)
    return gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape)
