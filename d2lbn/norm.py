"""Batch normalization (and layer norm) from scratch: the functions and the Gluon layers (every chapter).

Shapes used throughout:

* fully connected input ``X: (N, D)`` -- statistics per feature, over axis 0;
* convolutional input ``X: (N, C, H, W)`` -- statistics per channel, over axes
  (0, 2, 3).

``gamma``, ``beta``, ``moving_mean`` and ``moving_var`` are 1-D arrays of length ``D``
(or ``C``), the same layout as MXNet's own ``gluon.nn.BatchNorm`` parameters, so weights
can be exchanged.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple, Union

from mxnet import autograd, init, nd
from mxnet.gluon import nn

# The checks live in d2lbn.checks (imported by fast_norm too, so the imports run one
# way); they are re-exported here, where code written against earlier versions of d2lbn
# imports them from.
from .checks import (check_batch_norm_args, check_layer_args,  # noqa: F401
                     check_layer_dtype, check_layer_input, check_momentum,
                     check_norm_inputs, check_rank)
from .fast_norm import fast_batch_norm, fast_layer_train
from .paths import counted

__all__ = ["pure_batch_norm", "reduction_axes", "check_norm_inputs",
           "batch_norm", "check_momentum", "check_batch_norm_args", "BatchNorm",
           "IMPLEMENTATIONS", "DEFAULT_IMPL", "get_impl"]


def reduction_axes(X: nd.NDArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Return ``(axes, param_shape)`` for normalising ``X``.

    ``X: (N, D)`` gives ``axes=(0,)`` and ``param_shape=(1, D)``;
    ``X: (N, C, H, W)`` gives ``axes=(0, 2, 3)`` and ``param_shape=(1, C, 1, 1)``.
    Any other rank raises ``ValueError`` naming the shape that was given.
    """
    check_rank(X)                       # an NDArray of rank 2 or 4 (d2lbn.checks)
    if X.ndim == 2:
        return (0,), (1, X.shape[1])
    return (0, 2, 3), (1, X.shape[1], 1, 1)


def pure_batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                    eps: float = 1e-5) -> nd.NDArray:
    """Normalise ``X`` with its own mini-batch statistics, then scale by ``gamma`` and
    shift by ``beta``.

    X: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,). Returns an array shaped like
    X. The variance is the biased one (divide by the number of values), as in Ioffe &
    Szegedy (2015).
    """
    axes, param_shape = check_norm_inputs(X, eps, gamma=gamma, beta=beta)
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / nd.sqrt(var + eps)
    return gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape)


@counted("naive")          # which code ran: d2lbn.paths.record_paths counts it
def batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
               moving_mean: nd.NDArray, moving_var: nd.NDArray, *, training: bool,
               eps: float = 1e-5, momentum: float = 0.9
               ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Batch normalization for training *and* inference; returns
    ``(Y, new_moving_mean, new_moving_var)``.

    X: (N, D) or (N, C, H, W); gamma, beta, moving_mean, moving_var: (D,) or (C,), on
    X's context. Y is shaped like X.

    * ``training=True``: normalise with the batch mean and the *biased* batch variance
      (as ``pure_batch_norm``), and return updated moving statistics in MXNet's
      convention, ``new = momentum * moving + (1 - momentum) * batch_statistic``, with
      the biased variance. A batch with a single value per feature/channel (N == 1 for
      (N, D), N*H*W == 1 for 4-D) is refused: its variance is 0 and Y would be exactly
      ``beta`` whatever X holds.
    * ``training=False``: normalise with ``moving_mean`` and ``moving_var``; every
      example is treated alone, and the moving statistics come back unchanged.

    The returned moving statistics carry no autograd history (they are never
    differentiated), and the inputs are not modified: the caller stores the new values
    (``moving_mean[:] = new``).
    """
    axes, param_shape = check_batch_norm_args(X, eps, momentum, training,
                                              gamma=gamma, beta=beta,
                                              moving_mean=moving_mean,
                                              moving_var=moving_var)
    if not training:
        X_hat = ((X - moving_mean.reshape(param_shape))
                 / nd.sqrt(moving_var.reshape(param_shape) + eps))
        return (gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape),
                moving_mean.detach(), moving_var.detach())
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / nd.sqrt(var + eps)
    Y = gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape)
    num_features = X.shape[1]
    batch_mean = mean.detach().reshape((num_features,))
    batch_var = var.detach().reshape((num_features,))
    new_moving_mean = momentum * moving_mean.detach() + (1.0 - momentum) * batch_mean
    new_moving_var = momentum * moving_var.detach() + (1.0 - momentum) * batch_var
    return Y, new_moving_mean, new_moving_var


BatchNormFunction = Callable[..., Tuple[nd.NDArray, nd.NDArray, nd.NDArray]]

#: Registered implementations of ``batch_norm``'s signature, by name;
#: ``BatchNorm(impl=...)`` picks one.
IMPLEMENTATIONS: Dict[str, BatchNormFunction] = {"naive": batch_norm}

# The fast path (chapter 3): same signature and results, closed-form backward, fast
# reductions.
IMPLEMENTATIONS["fast"] = fast_batch_norm

#: The implementation ``BatchNorm`` uses when ``impl`` is None (looked up when the layer
#: is built).
DEFAULT_IMPL = "fast"


def get_impl(impl: Union[None, str, BatchNormFunction] = None) -> BatchNormFunction:
    """Resolve ``impl``: None -> ``IMPLEMENTATIONS[DEFAULT_IMPL]``, a name -> its
    registered function, a callable (with ``batch_norm``'s signature) -> itself. An
    unknown name is a ``ValueError``."""
    if impl is None:
        impl = DEFAULT_IMPL
    if callable(impl):
        return impl
    if not isinstance(impl, str) or impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {sorted(IMPLEMENTATIONS)} (or a "
                         f"function with batch_norm's signature); got {impl!r}")
    return IMPLEMENTATIONS[impl]


def add_norm_params(layer: nn.Block, num_features: int, moving: bool = True) -> None:
    """Give ``layer`` gamma (init 1) and beta (init 0), trained, and, if ``moving``,
    moving_mean (init 0) and moving_var (init 1), not trained; each (num_features,), as
    in gluon.nn.BatchNorm."""
    shape = (num_features,)
    with layer.name_scope():
        layer.gamma = layer.params.get("gamma", shape=shape, init=init.One())
        layer.beta = layer.params.get("beta", shape=shape, init=init.Zero())
        if moving:
            layer.moving_mean = layer.params.get("moving_mean", shape=shape,
                                                 init=init.Zero(), grad_req="null",
                                                 differentiable=False)
            layer.moving_var = layer.params.get("moving_var", shape=shape,
                                                init=init.One(), grad_req="null",
                                                differentiable=False)


class BatchNorm(nn.Block):
    """Batch normalization layer built on ``batch_norm``, with the parameter layout of
    ``gluon.nn.BatchNorm``.

    num_features: D for X: (N, D), or C for X: (N, C, H, W); num_dims: 2 or 4, the rank
    of X. Parameters, each shaped (num_features,): ``gamma`` (init 1) and ``beta``
    (init 0), trained; ``moving_mean`` (init 0) and ``moving_var`` (init 1), not trained
    (``grad_req='null'``). X and the parameters share one floating dtype
    (``net.cast('float64')`` changes the layer's).

    The mode follows ``autograd.is_training()`` (True inside ``autograd.record()`` and
    ``autograd.train_mode()``). In training mode the forward pass updates the moving
    statistics in place (a feature whose batch statistics are not finite keeps its old
    ones); unlike ``gluon.nn.BatchNorm`` (which updates them during ``backward``) no
    backward pass is needed. The layer computes on X's context, with the parameter
    copies initialised there.

    ``impl`` picks the function: None (``DEFAULT_IMPL``), a name in ``IMPLEMENTATIONS``,
    or a function with ``batch_norm``'s signature (the book uses this to run a
    deliberately wrong one).
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9,
                 impl: Union[None, str, BatchNormFunction] = None, **kwargs):
        super().__init__(**kwargs)
        num_features, num_dims, eps = check_layer_args(num_features, num_dims, eps)
        check_momentum(momentum)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = eps, float(momentum)
        self.impl = DEFAULT_IMPL if impl is None else impl
        self._fn = get_impl(self.impl)
        add_norm_params(self, self.num_features)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        check_layer_input(self, X)
        ctx = X.context
        gamma = self.gamma.data(ctx)
        # float64 X, float32 layer: say net.cast('float64')
        check_layer_dtype(self, X, gamma)
        moving_mean, moving_var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        training = autograd.is_training()
        if training and self._fn is fast_batch_norm:
            # The fast path (appendix "Making it fast in MXNet"): same checks and
            # results, with the update and the guard below done inside it.
            return fast_layer_train(X, gamma, self.beta.data(ctx), moving_mean,
                                    moving_var, self.eps, self.momentum)
        Y, new_mean, new_var = self._fn(X, gamma, self.beta.data(ctx), moving_mean,
                                        moving_var, training=training, eps=self.eps,
                                        momentum=self.momentum)
        if training:
            with autograd.pause():
                # A feature whose batch statistics are NaN or infinite keeps its old
                # moving statistics: one bad batch must not poison inference (train()
                # then stops).
                finite = nd.contrib.isfinite(new_mean + new_var)
                nd.where(finite, new_mean, moving_mean, out=moving_mean)
                nd.where(finite, new_var, moving_var, out=moving_var)
        return Y

    def __repr__(self) -> str:
        impl = (self.impl if isinstance(self.impl, str)
                else getattr(self.impl, "__name__", repr(self.impl)))
        return (f"{type(self).__name__}(num_features={self.num_features}, "
                f"num_dims={self.num_dims}, eps={self.eps:g}, "
                f"momentum={self.momentum:g}, impl={impl!r})")



# ---- layer normalization (for contrast: statistics per example, not per batch) -------

def layer_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
               eps: float = 1e-5) -> nd.NDArray:
    """Layer normalization (Ba et al., 2016): normalise each *example* with its own
    statistics.

    X: (N, D) -- mean and biased variance of each row over its D features (axis 1);
    X: (N, C, H, W) -- of each example over all its C*H*W values (axes 1, 2, 3).
    gamma, beta: (D,) or (C,), one scale and shift per feature/channel as in
    ``batch_norm`` (for 4-D input this is group normalization with one group). Returns
    an array shaped like X.

    No statistic mixes examples, so the result for one example does not depend on the
    rest of the batch (or on its size), and training and inference compute the same
    thing: there are no moving statistics. A single example is fine.
    """
    check_norm_inputs(X, eps, gamma=gamma, beta=beta)
    _, param_shape = reduction_axes(X)
    axes = tuple(range(1, X.ndim))
    mean = X.mean(axis=axes, keepdims=True)                    # (N, 1) or (N, 1, 1, 1)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / nd.sqrt(var + eps)
    return gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape)


class LayerNorm(nn.Block):
    """Layer normalization layer built on ``layer_norm``, with the interface of
    ``BatchNorm``.

    num_features: D for X: (N, D), or C for X: (N, C, H, W); num_dims: 2 or 4, the rank
    of X. Parameters ``gamma`` (init 1) and ``beta`` (init 0), each (num_features,).
    Nothing else: the layer behaves the same in training and inference mode.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_features, self.num_dims, self.eps = check_layer_args(num_features,
                                                                      num_dims, eps)
        add_norm_params(self, self.num_features, moving=False)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        check_layer_input(self, X)
        ctx = X.context
        gamma = self.gamma.data(ctx)
        check_layer_dtype(self, X, gamma)
        return layer_norm(X, gamma, self.beta.data(ctx), self.eps)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_features={self.num_features}, "
                f"num_dims={self.num_dims}, eps={self.eps:g})")



__all__ += ["layer_norm", "LayerNorm"]
