"""ch11: when the batch is the problem -- group, instance and layer norm, batch
renormalization, ghost batch norm, masked batch norm for padded sequences, and adaptive
gradient clipping.

Shapes used throughout (``C`` channels or features on axis 1, as in ``d2lbn.norm``):

* ``X: (N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; ``gamma``, ``beta``,
  ``moving_mean``, ``moving_var``: ``(C,)``, the layout of ``gluon.nn.BatchNorm``;
* a padded batch of sequences ``X: (N, C, L)`` with ``mask: (N, L)``, 1 at valid
  positions, 0 at padding.

The batch-norm variants (:func:`batch_renorm`, :func:`ghost_batch_norm`,
:func:`masked_batch_norm`) follow ``d2lbn.norm.batch_norm``'s contract: they return
``(Y, new_moving_mean, new_moving_var)``, store the *biased* batch variance in MXNet's
convention ``new = momentum * old + (1 - momentum) * batch``, and the returned moving
statistics carry no autograd history. The layers update their moving statistics in the
forward pass (as ``d2lbn.norm.BatchNorm`` does), so no backward pass is needed for the
update.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .checks import check_eps, check_float_array, check_int, check_momentum, check_real
from .norm import add_norm_params

__all__ = ["group_norm", "instance_norm", "GroupNorm", "renorm_factors", "batch_renorm",
           "renorm_limits", "BatchRenorm", "ghost_batch_norm", "GhostBatchNorm",
           "check_mask", "masked_batch_norm", "MaskedBatchNorm", "unitwise_norm",
           "adaptive_grad_clip"]


# ---- shared checks -------------------------------------------------------------------

def _param_shape(X: nd.NDArray) -> Tuple[int, ...]:
    """(1, C, 1, ...): the shape a (C,) vector broadcasts to against X: (N, C, ...)."""
    return (1, X.shape[1]) + (1,) * (X.ndim - 2)


def _check_input(X: nd.NDArray, min_rank: int = 2) -> None:
    check_float_array("X", X)
    if X.ndim < min_rank or X.size == 0:
        raise ValueError(f"X must be a non-empty array of rank >= {min_rank} "
                         "(N, C, ...); "
                         f"got shape {X.shape}")


def _check_vectors(X: nd.NDArray, **vectors: nd.NDArray) -> None:
    C = X.shape[1]
    for name, v in vectors.items():
        check_float_array(name, v)
        if v.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) to match X of shape "
                             f"{X.shape} "
                             f"({C} channels on axis 1); got shape {v.shape}")
        if v.dtype != X.dtype:
            raise TypeError(f"{name} has dtype {v.dtype.__name__} but X has "
                            f"{X.dtype.__name__}: use one dtype for all")


def _batch_axes(X: nd.NDArray) -> Tuple[int, ...]:
    """Every axis but the channel axis 1: (0,), (0, 2) or (0, 2, 3)."""
    return (0,) + tuple(range(2, X.ndim))


def _inference(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
               moving_mean: nd.NDArray, moving_var: nd.NDArray, eps: float
               ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Inference mode of every batch-norm variant: batch norm with the moving
    statistics;
    returns ``(Y, moving_mean, moving_var)`` (the statistics detached, unchanged)."""
    shape = _param_shape(X)
    X_hat = ((X - moving_mean.reshape(shape))
             / nd.sqrt(moving_var.reshape(shape) + eps))
    return (gamma.reshape(shape) * X_hat + beta.reshape(shape),
            moving_mean.detach(), moving_var.detach())


def _moving_update(moving: nd.NDArray, batch: nd.NDArray,
                   momentum: float) -> nd.NDArray:
    return momentum * moving.detach() + (1.0 - momentum) * batch.detach()


# ---- group norm: G = 1 is layer norm, G = C is instance norm -------------------------

def group_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray, num_groups: int,
               eps: float = 1e-5) -> nd.NDArray:
    """Group normalization (Wu & He, 2018): each example's channels split into
    ``num_groups`` groups of C/G consecutive channels; each group normalised with its
    own mean and biased variance over its channels and positions; then a per-channel
    affine map.

    X: (N, C, ...) (rank >= 3; for (N, C) the groups hold C/G features each); gamma,
    beta: (C,). ``num_groups`` must divide C. G = 1 is layer norm with a per-channel
    affine map; G = C is instance norm. No statistic mixes examples: training and
    inference compute the same thing.
    """
    _check_input(X)
    _check_vectors(X, gamma=gamma, beta=beta)
    eps = check_eps(eps)
    G = check_int("num_groups", num_groups)
    N, C = X.shape[:2]
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels C={C} "
                         f"(X of shape {X.shape}); divisors of {C}: "
                         f"{[g for g in range(1, C + 1) if C % g == 0]}")
    if X.size // (N * G) < 2 and X.ndim == 2:
        raise ValueError(f"each group of X: {X.shape} holds one value (C/G = 1 and no "
                         "spatial axes): its variance is 0 and the output would be "
                         "beta whatever X is")
    Xg = X.reshape((N, G, -1))
    mean = Xg.mean(axis=2, keepdims=True)
    var = ((Xg - mean) ** 2).mean(axis=2, keepdims=True)
    X_hat = ((Xg - mean) / nd.sqrt(var + eps)).reshape(X.shape)
    shape = _param_shape(X)
    return gamma.reshape(shape) * X_hat + beta.reshape(shape)


def instance_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                  eps: float = 1e-5) -> nd.NDArray:
    """Instance normalization (Ulyanov et al., 2016): :func:`group_norm` with one group
    per channel. X: (N, C, L) or (N, C, H, W); gamma, beta: (C,)."""
    _check_input(X, min_rank=3)
    return group_norm(X, gamma, beta, X.shape[1], eps)


class GroupNorm(nn.Block):
    """Group norm layer (:func:`group_norm`): parameters gamma (init 1) and beta (init
    0), each (num_channels,); no moving statistics. ``num_groups=1``: layer norm with
    per-channel affine; ``num_groups=num_channels``: instance norm."""

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = check_int("num_channels", num_channels)
        self.num_groups = check_int("num_groups", num_groups)
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={self.num_groups} must divide "
                             f"num_channels={self.num_channels}")
        self.eps = check_eps(eps)
        add_norm_params(self, self.num_channels, moving=False)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        ctx = X.context
        return group_norm(X, self.gamma.data(ctx), self.beta.data(ctx), self.num_groups,
                          self.eps)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_channels={self.num_channels}, "
                f"num_groups={self.num_groups}, eps={self.eps:g})")


# ---- batch renormalization -----------------------------------------------------------

def _check_limits(r_max, d_max) -> Tuple[float, float]:
    r_max = check_real("r_max", r_max)
    d_max = check_real("d_max", d_max)
    if r_max < 1:
        raise ValueError(f"r_max must be >= 1 (r is clipped to [1/r_max, r_max]); "
                         f"got {r_max}")
    if d_max < 0:
        raise ValueError(f"d_max must be >= 0 (d is clipped to [-d_max, d_max]); "
                         f"got {d_max}")
    return r_max, d_max


def renorm_factors(batch_mean: nd.NDArray, batch_var: nd.NDArray,
                   moving_mean: nd.NDArray, moving_var: nd.NDArray, r_max: float,
                   d_max: float, eps: float
                   ) -> Tuple[nd.NDArray, nd.NDArray]:
    """Batch renorm's correction (Ioffe, 2017, Algorithm 1), each (C,), without autograd
    history:

    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max,
    d_max), with sigma_B = sqrt(var_B + eps) and sigma = sqrt(moving_var + eps).
    """
    r_max, d_max = _check_limits(r_max, d_max)
    with autograd.pause():
        sigma_b = nd.sqrt(batch_var.detach() + eps)
        sigma = nd.sqrt(moving_var.detach() + eps)
        # maximum/minimum, not nd.clip: its bounds are float32 even for float64 X
        r = nd.minimum(nd.maximum(sigma_b / sigma, 1.0 / r_max), r_max)
        d = nd.minimum(nd.maximum((batch_mean.detach() - moving_mean.detach()) / sigma,
                                  -d_max), d_max)
    return r, d


def batch_renorm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                 moving_mean: nd.NDArray, moving_var: nd.NDArray, *, training: bool,
                 r_max: float = 3.0,
                 d_max: float = 5.0, eps: float = 1e-5, momentum: float = 0.9
                 ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Batch renormalization (Ioffe, 2017); returns ``(Y, new_moving_mean,
    new_moving_var)``.

    X: (N, C, ...); gamma, beta, moving_mean, moving_var: (C,). Training: ``Y = gamma *
    ((X - mu_B) / sigma_B * r + d) + beta`` with r, d from :func:`renorm_factors`
    treated as constants (no gradient flows through them), and the moving statistics
    updated with the batch mean and biased variance. Inference: ``gamma * (X - mu) /
    sigma + beta``, as batch norm. ``r_max = 1, d_max = 0`` is batch norm exactly; when
    the moving statistics equal the batch's, r = 1, d = 0 and training equals inference.
    """
    _check_input(X)
    _check_vectors(X, gamma=gamma, beta=beta, moving_mean=moving_mean,
                   moving_var=moving_var)
    eps = check_eps(eps)
    check_momentum(momentum)
    r_max, d_max = _check_limits(r_max, d_max)
    shape = _param_shape(X)
    if not training:
        return _inference(X, gamma, beta, moving_mean, moving_var, eps)
    if X.size // X.shape[1] < 2:
        raise ValueError("batch renorm in training mode needs more than one value "
                         "per channel; "
                         f"X has shape {X.shape}")
    axes = _batch_axes(X)
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    C = X.shape[1]
    r, d = renorm_factors(mean.reshape((C,)), var.reshape((C,)), moving_mean,
                          moving_var, r_max, d_max, eps)
    X_hat = (X - mean) / nd.sqrt(var + eps) * r.reshape(shape) + d.reshape(shape)
    Y = gamma.reshape(shape) * X_hat + beta.reshape(shape)
    return (Y, _moving_update(moving_mean, mean.reshape((C,)), momentum),
            _moving_update(moving_var, var.reshape((C,)), momentum))


def renorm_limits(step: int, hold: int, r_steps: int, d_steps: int,
                  r_final: float = 3.0, d_final: float = 5.0) -> Tuple[float, float]:
    """The schedule of ``(r_max, d_max)`` at training step ``step`` (0-based): batch
    norm (1, 0) for the first ``hold`` steps, then relaxed linearly, reaching
    ``r_final`` after ``hold + r_steps`` steps and ``d_final`` after ``hold + d_steps``
    (Ioffe, 2017, section 4.1: r_max 1 -> 3 and d_max 0 -> 5 over tens of thousands of
    steps)."""
    step = check_int("step", step, minimum=0)
    hold = check_int("hold", hold, minimum=0)
    r_steps, d_steps = check_int("r_steps", r_steps), check_int("d_steps", d_steps)
    r_final, d_final = _check_limits(r_final, d_final)
    t = step - hold
    r = 1.0 + (r_final - 1.0) * min(max(t / r_steps, 0.0), 1.0)
    d = d_final * min(max(t / d_steps, 0.0), 1.0)
    return r, d


class BatchRenorm(nn.Block):
    """Batch renorm layer (:func:`batch_renorm`) with the parameter layout of
    ``gluon.nn.BatchNorm``. The limits follow :func:`renorm_limits` with this layer's
    ``hold``, ``r_steps``, ``d_steps``, ``r_max``, ``d_max``, counted in training-mode
    forward passes (``self.step``); ``hold=0, r_steps=d_steps=1`` gives the final limits
    from the second step on. The moving statistics are updated in the forward pass."""

    def __init__(self, num_features: int, r_max: float = 3.0, d_max: float = 5.0,
                 hold: int = 0, r_steps: int = 1, d_steps: int = 1, eps: float = 1e-5,
                 momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.num_features = check_int("num_features", num_features)
        self.r_max, self.d_max = _check_limits(r_max, d_max)
        self.hold = check_int("hold", hold, minimum=0)
        self.r_steps = check_int("r_steps", r_steps)
        self.d_steps = check_int("d_steps", d_steps)
        self.eps = check_eps(eps)
        check_momentum(momentum)
        self.momentum = float(momentum)
        self.step = 0
        add_norm_params(self, self.num_features)

    def limits(self) -> Tuple[float, float]:
        """(r_max, d_max) for the next training step."""
        return renorm_limits(self.step, self.hold, self.r_steps, self.d_steps,
                             self.r_max, self.d_max)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        ctx = X.context
        mean, var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        training = autograd.is_training()
        r_max, d_max = self.limits()
        Y, new_mean, new_var = batch_renorm(
            X, self.gamma.data(ctx), self.beta.data(ctx), mean, var, training=training,
            r_max=r_max, d_max=d_max, eps=self.eps, momentum=self.momentum)
        if training:
            mean[:] = new_mean
            var[:] = new_var
            self.step += 1
        return Y


# ---- ghost batch norm ----------------------------------------------------------------

def ghost_batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                     moving_mean: nd.NDArray, moving_var: nd.NDArray, *, training: bool,
                     virtual_batch_size: int, eps: float = 1e-5, momentum: float = 0.9
                     ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Ghost batch norm (Hoffer et al., 2017): the batch X: (N, C, ...) cut into k = N /
    V consecutive virtual batches of ``virtual_batch_size`` V examples, each normalised
    with its own mean and biased variance; returns ``(Y, new_moving_mean,
    new_moving_var)``.

    V must divide N. The moving statistics are updated once per call with the mean over
    the ghosts of their means and of their variances (as Keras' ``virtual_batch_size``
    does). One ghost (V = N) is batch norm; k ghosts equal batch norm on each slice,
    what data parallelism with per-device statistics computes on k devices. Inference
    uses the moving statistics.
    """
    _check_input(X)
    _check_vectors(X, gamma=gamma, beta=beta, moving_mean=moving_mean,
                   moving_var=moving_var)
    eps = check_eps(eps)
    check_momentum(momentum)
    V = check_int("virtual_batch_size", virtual_batch_size)
    N, C = X.shape[:2]
    shape = _param_shape(X)
    if not training:
        return _inference(X, gamma, beta, moving_mean, moving_var, eps)
    if N % V:
        raise ValueError(f"virtual_batch_size={V} must divide the batch size N={N}; "
                         f"use a batch of {N - N % V} or {N + V - N % V}")
    if V * (X.size // (N * C)) < 2:
        raise ValueError(f"each virtual batch of {V} example(s) holds one value per "
                         "channel "
                         f"(X of shape {X.shape}): its variance is 0")
    k = N // V
    Xg = X.reshape((k, V) + X.shape[1:])                  # (k, V, C, ...)
    axes = (1,) + tuple(range(3, Xg.ndim))
    mean = Xg.mean(axis=axes, keepdims=True)              # (k, 1, C, 1, ...)
    var = ((Xg - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = ((Xg - mean) / nd.sqrt(var + eps)).reshape(X.shape)
    Y = gamma.reshape(shape) * X_hat + beta.reshape(shape)
    ghost_mean = mean.reshape((k, C)).mean(axis=0)
    ghost_var = var.reshape((k, C)).mean(axis=0)
    return (Y, _moving_update(moving_mean, ghost_mean, momentum),
            _moving_update(moving_var, ghost_var, momentum))


class GhostBatchNorm(nn.Block):
    """Ghost batch norm layer (:func:`ghost_batch_norm`), parameters as
    ``gluon.nn.BatchNorm``; ``virtual_batch_size=None`` normalises the whole batch (one
    ghost). A training batch whose size the virtual batch size does not divide is
    refused (with a message saying which sizes work)."""

    def __init__(self, num_features: int, virtual_batch_size: Optional[int] = None,
                 eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.num_features = check_int("num_features", num_features)
        self.virtual_batch_size = (None if virtual_batch_size is None else
                                   check_int("virtual_batch_size", virtual_batch_size))
        self.eps = check_eps(eps)
        check_momentum(momentum)
        self.momentum = float(momentum)
        add_norm_params(self, self.num_features)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        ctx = X.context
        mean, var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        training = autograd.is_training()
        V = self.virtual_batch_size or X.shape[0]
        Y, new_mean, new_var = ghost_batch_norm(
            X, self.gamma.data(ctx), self.beta.data(ctx), mean, var, training=training,
            virtual_batch_size=V, eps=self.eps, momentum=self.momentum)
        if training:
            mean[:] = new_mean
            var[:] = new_var
        return Y


# ---- masked batch norm for padded sequences ------------------------------------------

def check_mask(X: nd.NDArray, mask: nd.NDArray) -> None:
    """Raise unless ``mask`` is a (N, L) array of 0s and 1s for X: (N, C, L), with at
    least one valid position in every sequence (an all-padding sequence has no
    statistics and nothing to normalise: drop it from the batch)."""
    if not isinstance(mask, nd.NDArray):
        raise TypeError(f"mask must be an mxnet NDArray of shape (N, L); got "
                        f"{type(mask).__name__}")
    if X.ndim != 3:
        raise ValueError("masked batch norm takes padded sequences X: (N, C, L); "
                         "got shape "
                         f"{X.shape}")
    N, _, L = X.shape
    if mask.shape != (N, L):
        raise ValueError(f"mask must have shape (N, L) = ({N}, {L}) to match X of "
                         "shape "
                         f"{X.shape}; got {mask.shape}")
    m = mask.asnumpy()
    if not ((m == 0) | (m == 1)).all():
        raise ValueError("mask must hold only 0 (padding) and 1 (valid position)")
    empty = [i for i, n in enumerate(m.sum(axis=1)) if n == 0]
    if empty:
        raise ValueError(f"sequence(s) {empty[:5]} of the batch are all padding "
                         "(no valid "
                         f"position): drop them from the batch")


def masked_batch_norm(X: nd.NDArray, mask: nd.NDArray, gamma: nd.NDArray,
                      beta: nd.NDArray, moving_mean: nd.NDArray,
                      moving_var: nd.NDArray, *, training: bool,
                      eps: float = 1e-5, momentum: float = 0.9
                      ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Batch norm of padded sequences X: (N, C, L) over the valid positions only
    (``mask: (N, L)``, 1 valid, 0 padding); returns ``(Y, new_moving_mean,
    new_moving_var)``.

    Training: per channel, the mean and biased variance over the M = mask.sum() valid
    positions of all sequences; inference: the moving statistics. Y is zero at padding,
    so padding stays padding for the next layer. With a full mask it is batch norm of X
    over axes (0, 2); adding padding to a batch changes nothing at the valid positions.
    """
    _check_input(X)
    check_mask(X, mask)
    _check_vectors(X, gamma=gamma, beta=beta, moving_mean=moving_mean,
                   moving_var=moving_var)
    eps = check_eps(eps)
    check_momentum(momentum)
    shape = _param_shape(X)
    m = mask.astype(X.dtype).expand_dims(1)               # (N, 1, L)
    if not training:
        Y, mean, var = _inference(X, gamma, beta, moving_mean, moving_var, eps)
        return Y * m, mean, var
    count = float(mask.sum().asscalar())
    if count < 2:
        raise ValueError("masked batch norm in training mode needs at least two "
                         "valid positions "
                         "per channel; the batch has one")
    mean = (X * m).sum(axis=(0, 2), keepdims=True) / count
    var = (((X - mean) ** 2) * m).sum(axis=(0, 2), keepdims=True) / count
    X_hat = (X - mean) / nd.sqrt(var + eps)
    Y = (gamma.reshape(shape) * X_hat + beta.reshape(shape)) * m
    C = X.shape[1]
    return (Y, _moving_update(moving_mean, mean.reshape((C,)), momentum),
            _moving_update(moving_var, var.reshape((C,)), momentum))


class MaskedBatchNorm(nn.Block):
    """Masked batch norm layer (:func:`masked_batch_norm`): ``forward(X, mask)`` with
    X: (N, C, L), mask: (N, L); parameters as ``gluon.nn.BatchNorm``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)
        check_momentum(momentum)
        self.momentum = float(momentum)
        add_norm_params(self, self.num_features)

    def forward(self, X: nd.NDArray, mask: nd.NDArray) -> nd.NDArray:
        ctx = X.context
        mean, var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        training = autograd.is_training()
        Y, new_mean, new_var = masked_batch_norm(
            X, mask, self.gamma.data(ctx), self.beta.data(ctx), mean, var,
            training=training,
            eps=self.eps, momentum=self.momentum)
        if training:
            mean[:] = new_mean
            var[:] = new_var
        return Y


# ---- adaptive gradient clipping (normaliser-free nets) -------------------------------

def unitwise_norm(W: nd.NDArray) -> nd.NDArray:
    """The Frobenius norm of each output unit of W, broadcastable to W's shape: for a
    weight (out, in) or (out, in, k...) the norm over every axis but 0; for a vector
    (bias, gamma) or a scalar, the absolute value of each entry (Brock et al., 2021,
    section 4.1)."""
    if W.ndim <= 1:
        return nd.abs(W)
    axes = tuple(range(1, W.ndim))
    return nd.sqrt((W * W).sum(axis=axes, keepdims=True))


def adaptive_grad_clip(params: Iterable[gluon.Parameter], clipping: float = 0.01,
                       eps: float = 1e-3) -> int:
    """Adaptive gradient clipping (Brock et al., 2021, Section 4, eq. 3), in place on
    each trainable parameter's gradient: for every unit i (:func:`unitwise_norm`), if
    ||G_i|| / max(||W_i||, eps) > clipping, scale G_i to
    clipping * max(||W_i||, eps) / ||G_i|| * G_i. Call it between ``backward()`` and
    ``trainer.step()``. Returns the number of units clipped (biases included: each bias
    entry is a unit)."""
    clipping = check_real("clipping", clipping, positive=True)
    eps = check_real("eps", eps, positive=True)
    clipped = 0
    for p in params:
        if p.grad_req == "null":
            continue
        for W, G in zip(p.list_data(), p.list_grad()):
            w_norm = nd.maximum(unitwise_norm(W), eps)
            g_norm = unitwise_norm(G)
            limit = clipping * w_norm
            too_big = g_norm > limit
            scale = nd.where(too_big, limit / nd.maximum(g_norm, 1e-6),
                             nd.ones_like(g_norm))
            G[:] = G * scale
            clipped += int(too_big.sum().asscalar())
    return clipped
