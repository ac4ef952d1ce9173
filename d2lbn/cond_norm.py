"""ch13: conditional batch norm, and how much one example's output depends on the others.

* :class:`ConditionalBatchNorm` -- batch norm whose scale and shift are picked per example by
  its class label (de Vries et al., 2017; Miyato & Koyama, 2018): ``gamma[y_i]``, ``beta[y_i]``
  scale and shift example ``i``, while the mean and variance are the batch's (training) or the
  moving ones (inference), shared by every class;
* :func:`input_gradients` -- the matrix ``G[i, j] = ||d f_i / d X_j||`` of a per-example output
  ``f: (N, ...) -> (N,)``: off its diagonal, how much example ``i``'s output (its loss, its
  critic score) reaches example ``j``'s input. Zero off the diagonal for a net that maps each
  example alone (layer norm, no norm, batch norm in inference mode); not zero for batch norm in
  training mode (the coupling of chapter 3's backward pass);
* :func:`gradient_penalty` -- WGAN-GP's per-example penalty ``(||grad_{x_i} sum_j D(x_j)|| - 1)^2``
  (Gulrajani et al., 2017), which is example ``i``'s own only when ``D`` maps examples alone.

Shapes: ``X: (N, D)`` or ``(N, C, H, W)``; labels ``y: (N,)`` integers in ``[0, num_classes)``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from mxnet import autograd, init, nd
from mxnet.gluon import nn

from .checks import check_int, check_layer_args, check_layer_dtype, check_layer_input, \
    check_momentum
from .norm import batch_norm

__all__ = ["ConditionalBatchNorm", "check_labels", "input_gradients", "gradient_penalty",
           "cross_example_share"]


def check_labels(y, n: int, num_classes: int) -> nd.NDArray:
    """Return ``y`` as an int32 NDArray of shape (n,) if it holds integers in [0, num_classes);
    otherwise a ``ValueError`` (or ``TypeError``) that names the bad value."""
    if isinstance(y, nd.NDArray):
        values = y.asnumpy()
    else:
        values = np.asarray(y)
    if values.shape != (n,):
        raise ValueError(f"y must hold one class label per example, shape ({n},); "
                         f"got shape {values.shape}")
    if values.dtype.kind not in "iuf" or not np.all(np.isfinite(values)) \
            or not np.all(values == np.round(values)):
        raise TypeError(f"y must hold integer class labels; got {values[:5]!r} "
                        f"(dtype {values.dtype})")
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"class index out of range: y[{i}] = {values[i]:g}, but the layer "
                         f"has num_classes={num_classes} (labels 0..{num_classes - 1})")
    return nd.array(values, dtype="int32")


class ConditionalBatchNorm(nn.Block):
    """Class-conditional batch normalization: ``Y_i = gamma[y_i] * X_hat_i + beta[y_i]``.

    ``X_hat`` is batch norm's normalised input (d2lbn.norm.batch_norm with gamma 1 and beta 0:
    batch statistics and a moving-statistics update in training mode, the moving statistics in
    inference mode). Parameters: ``gamma`` (num_classes, num_features), init 1, and ``beta``
    (num_classes, num_features), init 0, trained; ``moving_mean``, ``moving_var``
    (num_features,), shared by all classes, not trained. ``forward(X, y)``: X (N, D) or
    (N, C, H, W) of rank ``num_dims``, y (N,) labels in [0, num_classes).
    """

    def __init__(self, num_features: int, num_classes: int, num_dims: int = 2,
                 eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        num_features, num_dims, eps = check_layer_args(num_features, num_dims, eps)
        self.num_classes = check_int("num_classes", num_classes)
        check_momentum(momentum)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = eps, float(momentum)
        shape = (self.num_classes, num_features)
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=shape, init=init.One())
            self.beta = self.params.get("beta", shape=shape, init=init.Zero())
            self.moving_mean = self.params.get("moving_mean", shape=(num_features,),
                                               init=init.Zero(), grad_req="null",
                                               differentiable=False)
            self.moving_var = self.params.get("moving_var", shape=(num_features,),
                                              init=init.One(), grad_req="null",
                                              differentiable=False)

    def forward(self, X: nd.NDArray, y) -> nd.NDArray:
        check_layer_input(self, X)
        ctx = X.context
        gamma, beta = self.gamma.data(ctx), self.beta.data(ctx)
        check_layer_dtype(self, X, gamma)
        labels = check_labels(y, X.shape[0], self.num_classes).as_in_context(ctx)
        moving_mean, moving_var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        ones = nd.ones((self.num_features,), ctx=ctx, dtype=X.dtype)
        training = autograd.is_training()
        X_hat, new_mean, new_var = batch_norm(X, ones, ones * 0, moving_mean,
                                              moving_var, training=training,
                                              eps=self.eps, momentum=self.momentum)
        if training:
            with autograd.pause():
                moving_mean[:] = new_mean
                moving_var[:] = new_var
        shape = (X.shape[0], self.num_features) + (1,) * (X.ndim - 2)
        g = nd.take(gamma, labels).reshape(shape)        # (N, C) -> one row per example
        b = nd.take(beta, labels).reshape(shape)
        return g * X_hat + b

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_features={self.num_features}, "
                f"num_classes={self.num_classes}, num_dims={self.num_dims})")


def input_gradients(f: Callable[[nd.NDArray], nd.NDArray], X: nd.NDArray,
                    train_mode: bool = True) -> np.ndarray:
    """``G: (N, N)`` with ``G[i, j] = ||d f(X)_i / d X_j||`` (Euclidean norm over X_j's values).

    f maps X (N, ...) to one number per example, (N,) (a per-example loss, a critic's score),
    recorded in training (``train_mode=True``) or inference mode. Row i is one backward pass of
    ``f(X)_i``, so this costs N backward passes: meant for small N. A row's off-diagonal entries
    are what a per-example gradient would miss (they are 0 when f maps examples alone).
    """
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"X must hold at least 2 examples to measure coupling; got {n}")
    G = np.zeros((n, n))
    for i in range(n):
        x = X.copy()
        x.attach_grad()
        with autograd.record(train_mode=train_mode):
            out = f(x)
            if out.shape != (n,):
                raise ValueError(f"f must return one number per example, shape ({n},); "
                                 f"got {out.shape}")
            target = out[i]
        target.backward(train_mode=train_mode)
        g = x.grad.asnumpy().astype(np.float64).reshape(n, -1)
        G[i] = np.sqrt((g * g).sum(axis=1))
    return G


def cross_example_share(G: np.ndarray) -> float:
    """The share of the input gradient that crosses examples, over all rows of
    :func:`input_gradients`' matrix: ``sum_{i != j} G[i, j]^2 / sum_{i, j} G[i, j]^2``
    (0: every example's output depends on its own input only)."""
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be a square (N, N) matrix; got shape {G.shape}")
    total = float((G ** 2).sum())
    if not total > 0:
        raise ValueError("G is all zeros: the output does not depend on the input")
    return float((total - (np.diag(G) ** 2).sum()) / total)


def gradient_penalty(critic: Callable[[nd.NDArray], nd.NDArray], X: nd.NDArray,
                     train_mode: bool = True) -> np.ndarray:
    """WGAN-GP's per-example penalty ``(||g_i|| - 1)^2`` with ``g = grad_X sum_j critic(X)_j``,
    as implementations compute it (one backward pass of the summed scores; Gulrajani et al.,
    2017, eq. 3). X: (N, ...); critic: X -> (N,) or (N, 1) scores. Returns (N,) float64.
    ``g_i`` is the gradient of example i's own score only if the critic maps examples alone.
    """
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    x = X.copy()
    x.attach_grad()
    with autograd.record(train_mode=train_mode):
        scores = critic(x)
        if scores.size != X.shape[0]:
            raise ValueError(f"critic must return one score per example ({X.shape[0]}); "
                             f"got shape {scores.shape}")
        total = scores.sum()
    total.backward(train_mode=train_mode)
    g = x.grad.asnumpy().astype(np.float64).reshape(X.shape[0], -1)
    return (np.sqrt((g * g).sum(axis=1)) - 1.0) ** 2
