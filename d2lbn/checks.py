"""Argument checks shared by every public function of d2lbn, the one place they live (every chapter).

``norm``, ``fast_norm``, ``parallel``, ``classic_bug``, ``train``, ``data`` and the command line
import from here; this module imports nothing of d2lbn, so the imports run one way.

The contract, for every batch-norm and layer-norm function and layer:

* **Arrays**: ``X`` is an ``mx.nd.NDArray`` of rank 2 ``(N, D)`` or 4 ``(N, C, H, W)``, not empty,
  of a floating dtype (``float16`` where MXNet supports it, ``float32``, ``float64``). Integer or
  bool input is a ``TypeError`` telling the caller to pass ``X.astype('float32')``: with integers
  MXNet 1.9.1 divides by zero in C++ (``SIGFPE`` ends the process) or wraps around silently.
* **One dtype**: every per-feature vector (gamma, beta, moving_mean, moving_var) has X's shape[1],
  context *and dtype*; a mismatch names the argument and the fix (``gamma.astype('float64')``, or
  ``net.cast('float64')`` for a layer), instead of MXNet's "Incompatible attr in node at 1-th input".
* **Numbers**: NumPy scalars are accepted wherever Python ones are (``numbers.Integral`` for counts,
  ``numbers.Real`` for eps, momentum, learning rates); a string or other object where a number
  belongs is an :class:`ArgumentTypeError`, a ``TypeError`` naming the argument (it is also a
  ``ValueError``, so code that caught the ``ValueError`` d2lbn raised before keeps working).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import numpy as np
from mxnet import nd

__all__ = ["ArgumentTypeError", "FLOAT_DTYPES", "check_int", "check_real", "check_sgd_momentum",
           "check_float_array",
           "check_rank", "check_eps", "check_training", "check_norm_inputs", "check_momentum", "check_batch_norm_args",
           "check_layer_args", "check_layer_input", "check_layer_dtype"]

#: The dtypes batch norm and layer norm accept.
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string for a number, a float for a count).

    A ``TypeError``; also a ``ValueError`` because d2lbn raised ``ValueError`` for these before, and
    callers that catch that must keep catching them."""


def _is_number_like(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value, minimum: Optional[int] = 1, what: Optional[str] = None) -> int:
    """Return ``value`` as a Python int if it is an integer (``int``, ``np.int64``, ...) >= ``minimum``.

    A non-integer (a float, a string, a bool) is an :class:`ArgumentTypeError`, a value below
    ``minimum`` a ``ValueError``; both name ``name``. ``what`` describes the expected value
    (default: "a positive int" for minimum 1, "an int >= m" otherwise).
    """
    if what is None:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}" if minimum is not None else "an int"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return value


def check_real(name: str, value, *, positive: bool = False, finite: bool = True,
               what: Optional[str] = None) -> float:
    """Return ``value`` as a Python float if it is a real number (``float``, ``int``, ``np.float32``...).

    A string, a bool or any other object is an :class:`ArgumentTypeError` naming ``name``; with
    ``finite`` NaN and infinities, with ``positive`` values <= 0, are a ``ValueError``.
    """
    if what is None:
        what = "a positive finite number" if positive else "a finite number" if finite else "a number"
    if not _is_number_like(value):
        raise ArgumentTypeError(f"{name} must be {what}; got {value!r} ({type(value).__name__})")
    value = float(value)
    if (finite and not math.isfinite(value)) or (positive and not value > 0):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return value


def check_sgd_momentum(momentum, name: str = "momentum") -> float:
    """Return SGD's ``momentum`` as a float if it is a real number in [0, 1): the fraction of the
    previous update kept in the next. Anything else (1.5, -0.5, NaN) is a ``ValueError``, a
    non-number an :class:`ArgumentTypeError`, each naming it."""
    what = ("in [0, 1) (SGD keeps that fraction of the previous update: at 1 or more the "
            "steps grow without bound, below 0 they flip sign)")
    if not _is_number_like(momentum):
        raise ArgumentTypeError(f"{name} must be a real number {what}; "
                                f"got {momentum!r} ({type(momentum).__name__})")
    if not 0 <= momentum < 1:
        raise ValueError(f"{name} must be {what}; got {momentum!r}")
    return float(momentum)


def check_float_array(name: str, value) -> None:
    """Raise unless ``value`` is an NDArray of a floating dtype (float16/32/64)."""
    if not isinstance(value, nd.NDArray):
        raise TypeError(f"{name} must be an mxnet NDArray, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        dtype = np.dtype(value.dtype).name
        raise TypeError(
            f"{name} has dtype {dtype}; batch norm and layer norm need floating-point input "
            f"(float16, float32 or float64): pass {name}.astype('float32')")


def check_rank(X: nd.NDArray) -> None:
    """Raise unless X is an NDArray of rank 2 (N, D) or rank 4 (N, C, H, W)."""
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    if X.ndim not in (2, 4):
        raise ValueError(
            f"X must have rank 2 (N, D) or rank 4 (N, C, H, W); got rank {X.ndim} with shape {X.shape}")


def _axes(X: nd.NDArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(axes, param_shape)`` of a checked X (``d2lbn.norm.reduction_axes`` explains them)."""
    if X.ndim == 2:
        return (0,), (1, X.shape[1])
    return (0, 2, 3), (1, X.shape[1], 1, 1)


def _check_vector(name: str, value: nd.NDArray, num_features: int, X: nd.NDArray) -> None:
    """Raise a clear error unless ``value`` is a 1-D NDArray of length ``num_features`` on X's
    context with X's dtype."""
    if not isinstance(value, nd.NDArray):
        raise TypeError(f"{name} must be an mxnet NDArray of shape ({num_features},), "
                        f"got {type(value).__name__}")
    if value.shape != (num_features,):
        raise ValueError(f"{name} must have shape ({num_features},) to match X of shape {X.shape} "
                         f"({num_features} features/channels); got shape {value.shape}")
    if value.context != X.context:
        raise ValueError(f"{name} lives on {value.context} but X lives on {X.context}; "
                         f"move it with {name}.as_in_context(X.context)")
    if value.dtype != X.dtype:
        mine, theirs = np.dtype(value.dtype).name, np.dtype(X.dtype).name
        raise TypeError(f"{name} has dtype {mine} but X has dtype {theirs}; use one dtype for all: "
                        f"{name}.astype('{theirs}') (or X.astype('{mine}'))")


def check_eps(eps) -> float:
    """eps: a positive finite real number (it keeps the division finite)."""
    return check_real("eps", eps, positive=True, what="> 0 (it keeps the division finite), a number")


def check_norm_inputs(X: nd.NDArray, eps: float, **vectors: nd.NDArray
                      ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Validate ``X``, ``eps`` and the per-feature vectors; return ``(axes, param_shape)``.

    X: an NDArray of rank 2 or 4, not empty, float16/32/64; each vector (X.shape[1],) on X's
    context with X's dtype; eps > 0. ``axes``/``param_shape`` as ``d2lbn.norm.reduction_axes``.
    """
    check_rank(X)
    if any(size == 0 for size in X.shape):
        raise ValueError(f"X must not be empty; got shape {X.shape}")
    check_float_array("X", X)
    check_eps(eps)
    for name, value in vectors.items():
        _check_vector(name, value, X.shape[1], X)
    return _axes(X)


def check_momentum(momentum: float) -> None:
    """Raise unless ``momentum`` is a real number in [0, 1) (MXNet's convention; see ``batch_norm``)."""
    if not _is_number_like(momentum):
        raise ArgumentTypeError(f"momentum must be a real number in [0, 1), got {type(momentum).__name__}")
    if not 0 <= momentum < 1:
        raise ValueError(
            f"momentum must be in [0, 1): it is the weight of the OLD moving statistics, "
            f"moving = momentum * moving + (1 - momentum) * batch (MXNet/Keras convention; PyTorch's "
            f"momentum=0.1 means momentum=0.9 here); got {momentum!r}")


def check_training(training) -> None:
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be True or False, got {training!r}")


def check_batch_norm_args(X: nd.NDArray, eps: float, momentum: float, training: bool,
                          **vectors: nd.NDArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Every check of ``batch_norm``'s arguments (shared by each implementation); returns
    ``(axes, param_shape)``. In training mode a batch with one value per feature/channel (N == 1 for
    (N, D), N*H*W == 1 for 4-D) is refused: its variance is 0 and the output would be exactly beta."""
    axes, param_shape = check_norm_inputs(X, eps, **vectors)
    check_momentum(momentum)
    check_training(training)
    if training and X.size // X.shape[1] == 1:      # values per feature/channel: N or N*H*W
        raise ValueError(
            f"training-mode batch norm needs more than one value per feature/channel to estimate a "
            f"variance; X of shape {X.shape} has one (its variance is 0, so the output would be exactly "
            f"beta whatever the input). Use a larger batch, or training=False to use the moving statistics")
    return axes, param_shape


def check_layer_args(num_features: int, num_dims: int, eps: float) -> Tuple[int, int, float]:
    """Validate a normalization layer's constructor arguments (shared by every layer in d2lbn);
    return them as Python ``(int, int, float)`` (NumPy scalars are accepted)."""
    num_features = check_int("num_features", num_features)
    if isinstance(num_dims, bool) or not isinstance(num_dims, numbers.Integral) or num_dims not in (2, 4):
        error = ValueError if isinstance(num_dims, numbers.Integral) else ArgumentTypeError
        raise error(f"num_dims must be 2 (X: (N, D)) or 4 (X: (N, C, H, W)); got {num_dims!r}")
    return num_features, int(num_dims), check_eps(eps)


def check_layer_input(layer, X: nd.NDArray) -> None:
    """Raise unless X is a floating NDArray of the layer's rank with ``layer.num_features`` on axis 1."""
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    if X.ndim != layer.num_dims or X.shape[1] != layer.num_features:
        expected = "(N, %d)" % layer.num_features if layer.num_dims == 2 else \
            "(N, %d, H, W)" % layer.num_features
        raise ValueError(f"{layer.name} expects X of shape {expected}; got shape {X.shape}")
    check_float_array("X", X)


def check_layer_dtype(layer, X: nd.NDArray, param: nd.NDArray) -> None:
    """Raise a ``TypeError`` naming the fix unless the layer's parameters have X's dtype."""
    if param.dtype != X.dtype:
        mine, theirs = np.dtype(param.dtype).name, np.dtype(X.dtype).name
        raise TypeError(f"{layer.name} holds {mine} parameters but X is {theirs}; cast the net "
                        f"(net.cast('{theirs}')) or the input (X.astype('{mine}'))")
