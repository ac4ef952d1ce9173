"""Chapter 8's studies: the measurements of "Why Does Batch Normalization Help?" (ch08).

Two explanations are put to the test on Fashion-MNIST:

* *internal covariate shift* (Ioffe & Szegedy, 2015): batch norm helps because it keeps
  the distribution of each layer's input steady;
* *smoothness* (Santurkar et al., 2018): batch norm helps because it makes the loss and
  its gradient change more slowly along the directions training moves in.

What is here:

* :func:`centering_run` -- Ioffe & Szegedy's Section 2 thought experiment: ``x = u + b``
  centred with its mean treated as a constant (outside the gradient) or differentiated
  through (inside);
* :class:`ShiftScaleNoise`, :func:`add_noise` -- "noisy batch norm", shared: after every
  batch-norm layer a random per-channel scale and shift, drawn afresh at every step and
  shared by the whole batch;
* :class:`PerSampleNoise`, :func:`add_per_sample_noise` -- "noisy batch norm" per
  sample, as Santurkar et al. (2018, Section 2.1) describe it: every activation of every
  example perturbed by i.i.d. noise of non-zero mean and non-unit variance, whose
  distribution changes at every step;
* :func:`activation_inputs` -- what one activation of a net sees (for percentile plots);
* :func:`gradient_shift`, :func:`internal_covariate_shift` -- Santurkar et al.'s
  Definition 2.1: how much a layer's gradient changes when the layers below it take
  their step;
* :func:`probe_gradient_direction` -- loss, gradient change and effective
  beta-smoothness along the gradient direction (their Figure 4);
* :func:`why_run` -- one training run of LeNet (plain, batch norm or noisy batch norm)
  with all of the above measured at checkpoints.

Shapes: images ``X: (N, 1, 28, 28)``, labels ``y: (N,)``; the nets map ``X`` to scores
``(N, 10)``. Losses are gluon losses ``loss_fn(scores, y) -> (N,)``; every measurement
uses their batch mean.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .checks import check_int
from .repro import set_seed

__all__ = ["CenteringRun", "centering_run", "ShiftScaleNoise", "add_noise",
           "PerSampleNoise", "add_per_sample_noise", "KINDS",
           "make_net", "trainable_params", "loss_and_grads", "weight_layers",
           "activation_inputs", "gradient_shift", "internal_covariate_shift",
           "GradientProbe", "probe_gradient_direction", "WhyRun", "why_run",
           "percentile_drift", "percentile_jumps"]


def _check_positive(name: str, value, integer: bool = False) -> None:
    if integer:                       # int, np.int64, an array element: d2lbn.checks
        check_int(name, value)
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not (value > 0 and math.isfinite(value))):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")


# ---- 1. normalisation must be inside the gradient ------------------------------------

@dataclass
class CenteringRun:
    """:func:`centering_run`'s record, one entry per step (``num_steps + 1`` entries,
    the first before any update): the bias ``b``, the loss, and the gradient the step
    used."""
    stats_in_gradient: bool
    b: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    grad: List[float] = field(default_factory=list)


def centering_run(u: np.ndarray, target: np.ndarray, lr: float, num_steps: int,
                  stats_in_gradient: bool, b0: float = 0.0) -> CenteringRun:
    """Gradient descent on the bias of ``x = u + b``, normalised as
    ``x_hat = x - mean(x)``, with the loss ``mean((x_hat - target)**2) / 2`` (float64,
    MXNet autograd).

    u, target: (N,). ``stats_in_gradient=False`` treats ``mean(x)`` as a constant in the
    backward pass (normalising *outside* the gradient step); ``True`` differentiates
    through it, as ``d2lbn.norm.batch_norm`` does. Ioffe & Szegedy (2015), Section 2:
    outside, ``b`` moves by ``lr * mean(target)`` every step while the loss never
    changes; inside, its gradient is zero.
    """
    u = np.asarray(u, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if u.ndim != 1 or u.size < 2 or target.shape != u.shape:
        raise ValueError(f"u and target must be 1-D of one length >= 2; "
                         f"got {u.shape} and {target.shape}")
    _check_positive("lr", lr)
    num_steps = check_int("num_steps", num_steps, minimum=0)
    U, T = nd.array(u, dtype="float64"), nd.array(target, dtype="float64")
    b = nd.array([b0], dtype="float64")
    b.attach_grad()
    run = CenteringRun(bool(stats_in_gradient))
    for step in range(num_steps + 1):
        with autograd.record():
            x = U + b
            mean = x.mean()
            if not stats_in_gradient:
                mean = mean.detach()        # a constant: no gradient flows through it
            loss = ((x - mean - T) ** 2).mean() / 2
        loss.backward()
        run.b.append(float(b.asscalar()))
        run.loss.append(float(loss.asscalar()))
        run.grad.append(float(b.grad.asscalar()))
        if step < num_steps:
            b[:] = b - lr * b.grad
    return run


# ---- 2. noisy batch norm -------------------------------------------------------------

class ShiftScaleNoise(nn.Block):
    """Noise after a batch-norm layer: ``y = s * x + m`` with one scale
    ``s ~ U(1, max_scale)`` and one shift ``m ~ U(-max_shift, max_shift)`` per
    channel/feature, drawn afresh at every training-mode forward pass (every step), so
    the distribution of the next layer's input moves at every step. One ``(s, m)`` is
    shared by every example of the batch: a random affine map of each channel (a random
    change of batch norm's gamma and beta) that moves no example relative to the others;
    :class:`PerSampleNoise` is the per-example kind.

    X: (N, C) or (N, C, H, W) -> same shape. In inference mode the noise is replaced by
    its mean, ``s = (1 + max_scale) / 2`` and ``m = 0`` (as classic, non-inverted
    dropout scales by its keep probability at test time). A batch-norm layer further up
    still normalises with the moving statistics it gathered from noisy inputs, which
    need not match the inputs it receives at inference (for per-example noise, the
    "variance shift" of Li et al., 2019).
    """

    def __init__(self, max_shift: float = 1.0, max_scale: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        for name, value, low in (("max_shift", max_shift, 0),
                                 ("max_scale", max_scale, 1)):
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not value >= low):
                raise ValueError(f"{name} must be a number >= {low}; got {value!r}")
        self.max_shift, self.max_scale = float(max_shift), float(max_scale)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        if X.ndim not in (2, 4):
            raise ValueError(f"X must be (N, C) or (N, C, H, W); got shape {X.shape}")
        if not autograd.is_training():
            return X * ((1 + self.max_scale) / 2)
        shape = (1, X.shape[1]) + (1,) * (X.ndim - 2)
        kw = dict(shape=shape, ctx=X.context, dtype=X.dtype)
        scale = nd.random.uniform(1, self.max_scale, **kw)
        shift = (nd.random.uniform(-self.max_shift, self.max_shift, **kw)
                 if self.max_shift > 0 else None)
        # broadcast_like, then elementwise: the same numbers as X * scale + shift, but
        # the backward pass of MXNet's implicit broadcast is several times slower on CPU
        Y = X * scale.broadcast_like(X)
        return Y if shift is None else Y + shift.broadcast_like(X)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_shift={self.max_shift:g}, "
                f"max_scale={self.max_scale:g})")


def add_noise(net: gluon.Block, max_shift: float = 1.0,
              max_scale: float = 3.0) -> nn.Sequential:
    """A new ``nn.Sequential`` with the layers of ``net`` (shared, not copied) and a
    :class:`ShiftScaleNoise` after every batch-norm layer. ``ValueError`` if ``net`` has
    none."""
    from .models import batch_norm_layers
    if not isinstance(net, (nn.Sequential, nn.HybridSequential)):
        raise TypeError(f"net must be a Sequential or HybridSequential; "
                        f"got {type(net).__name__}")
    norms = batch_norm_layers(net)
    if not norms:
        raise ValueError("net has no batch-norm layer: noisy batch norm adds its noise "
                         "after each one (build the net with batch norm, e.g. "
                         "d2lbn.models.lenet_bn())")
    noisy = nn.Sequential()
    for layer in net._children.values():
        noisy.add(layer)
        if any(layer is bn for bn in norms):
            noisy.add(ShiftScaleNoise(max_shift, max_scale))
    return noisy


class PerSampleNoise(nn.Block):
    """Noise after a batch-norm layer, drawn for every activation of every example:
    ``y = s * x + m`` with ``s`` and ``m`` of the shape of ``x``, i.i.d. given the step.

    At every training-mode forward pass (every step) the noise distribution of each
    channel ``c`` is drawn anew: a mean scale ``a_c ~ U(1, max_scale)`` and a mean shift
    ``b_c ~ U(-max_shift, max_shift)``. Then every activation ``i`` (every example, and
    every position of a feature map) gets its own scale and shift,
    ``s_i ~ U(a_c - spread, a_c + spread)`` and ``m_i ~ U(b_c - spread, b_c + spread)``,
    independently. Given the step, ``E[y | x] = a_c x + b_c`` and
    ``Var[y | x] = spread**2 (x**2 + 1) / 3``: noise of non-zero mean and non-unit
    variance, which, unlike :class:`ShiftScaleNoise`, moves the examples relative to
    each other. ``spread`` in ``[0, 1]`` keeps ``s >= 0``; ``spread=0`` gives
    :class:`ShiftScaleNoise`'s noise.

    X: (N, C) or (N, C, H, W) -> same shape. In inference mode the noise is replaced by
    its mean, ``s = (1 + max_scale) / 2`` and ``m = 0``, while batch-norm layers
    further up keep the moving statistics they gathered from noisy inputs (see
    :class:`ShiftScaleNoise`).
    """

    def __init__(self, max_shift: float = 1.0, max_scale: float = 3.0,
                 spread: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        for name, value, low, high in (("max_shift", max_shift, 0, math.inf),
                                       ("max_scale", max_scale, 1, math.inf),
                                       ("spread", spread, 0, 1)):
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not (low <= value <= high and math.isfinite(value))):
                span = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
                raise ValueError(f"{name} must be a finite number {span}; "
                                 f"got {value!r}")
        self.max_shift, self.max_scale = float(max_shift), float(max_scale)
        self.spread = float(spread)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        if X.ndim not in (2, 4):
            raise ValueError(f"X must be (N, C) or (N, C, H, W); got shape {X.shape}")
        if not autograd.is_training():
            return X * ((1 + self.max_scale) / 2)
        shape = (1, X.shape[1]) + (1,) * (X.ndim - 2)
        kw = dict(ctx=X.context, dtype=X.dtype)
        # this step's distribution: one centre per channel
        a = nd.random.uniform(1, self.max_scale, shape=shape, **kw)
        b = nd.random.uniform(-self.max_shift, self.max_shift, shape=shape, **kw)
        # every activation's own scale and shift around those centres
        u = nd.random.uniform(-self.spread, self.spread, shape=(2,) + X.shape, **kw)
        scale = a.broadcast_like(X) + u[0]
        shift = b.broadcast_like(X) + u[1]
        return X * scale + shift

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_shift={self.max_shift:g}, "
                f"max_scale={self.max_scale:g}, spread={self.spread:g})")


def add_per_sample_noise(net: gluon.Block, max_shift: float = 1.0,
                         max_scale: float = 3.0, spread: float = 1.0) -> nn.Sequential:
    """:func:`add_noise` with a :class:`PerSampleNoise` after every batch-norm layer
    instead of a :class:`ShiftScaleNoise`."""
    shared = add_noise(net, max_shift, max_scale)
    noisy = nn.Sequential()
    for layer in shared._children.values():
        noisy.add(PerSampleNoise(max_shift, max_scale, spread)
                  if isinstance(layer, ShiftScaleNoise) else layer)
    return noisy


#: The four nets of the chapter, all LeNet with ReLU (``d2lbn.models``).
KINDS = ("plain", "bn", "noisy-bn", "noisy-bn-sample")


def make_net(kind: str, max_shift: float = 1.0, max_scale: float = 3.0) -> gluon.Block:
    """``'plain'``: ``models.lenet()``; ``'bn'``: ``models.lenet_bn()`` (the
    from-scratch layer); ``'noisy-bn'``: the latter with :class:`ShiftScaleNoise` after
    each batch norm; ``'noisy-bn-sample'``: with :class:`PerSampleNoise` (``spread=1``)
    instead."""
    from . import models
    if kind == "plain":
        return models.lenet()
    if kind == "bn":
        return models.lenet_bn()
    if kind == "noisy-bn":
        return add_noise(models.lenet_bn(), max_shift, max_scale)
    if kind == "noisy-bn-sample":
        return add_per_sample_noise(models.lenet_bn(), max_shift, max_scale)
    raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")


# ---- gradients -----------------------------------------------------------------------

def trainable_params(net: gluon.Block) -> List[gluon.Parameter]:
    """The parameters of ``net`` that training updates (``grad_req != 'null'``), in
    order."""
    return [p for p in net.collect_params().values() if p.grad_req != "null"]


def loss_and_grads(net: gluon.Block, loss_fn, X: nd.NDArray, y: nd.NDArray,
                   params: Optional[Sequence[gluon.Parameter]] = None
                   ) -> Tuple[float, List[nd.NDArray]]:
    """The mean loss of ``net`` on ``(X, y)`` in training mode and a copy of its
    gradient with respect to each of ``params`` (default: :func:`trainable_params`; zero
    for a parameter the loss does not depend on). Batch norm's moving statistics are
    left as they were."""
    from .moving_stats import frozen_moving_statistics
    params = trainable_params(net) if params is None else list(params)
    for p in params:        # a parameter the loss does not reach: no stale gradient
        p.zero_grad()
    with frozen_moving_statistics(net):
        with autograd.record():
            loss = loss_fn(net(X), y).mean()
        loss.backward()
    return float(loss.asscalar()), [p.grad(X.context).copy() for p in params]


def _norm(arrays: Sequence[nd.NDArray]) -> float:
    return math.sqrt(sum(float((a.astype("float64") ** 2).sum().asscalar())
                         for a in arrays))


def _dot(a: Sequence[nd.NDArray], b: Sequence[nd.NDArray]) -> float:
    return sum(float((x.astype("float64") * z.astype("float64")).sum().asscalar())
               for x, z in zip(a, b))


def weight_layers(net: gluon.Block) -> List[gluon.Block]:
    """The convolution and dense layers of a sequential ``net``, in order (batch norm
    excluded)."""
    return [c for c in net._children.values() if isinstance(c, (nn.Conv2D, nn.Dense))]


def activation_inputs(net: gluon.Block, X: nd.NDArray, index: int) -> nd.NDArray:
    """The input of the ``index``-th ``nn.Activation`` of a sequential ``net``
    (0-based), as during training (batch statistics, and fresh noise in a noisy net),
    without changing the moving statistics. X: (N, 1, 28, 28) -> (N, C, H, W) or
    (N, D)."""
    from .moving_stats import frozen_moving_statistics
    children = list(net._children.values())
    acts = [i for i, c in enumerate(children) if isinstance(c, nn.Activation)]
    what = f"an int in [0, {len(acts)}) (the net has {len(acts)} activations)"
    index = check_int("index", index, minimum=None, what=what)
    if not 0 <= index < len(acts):
        raise ValueError(f"index must be {what}; got {index!r}")
    with frozen_moving_statistics(net), autograd.train_mode():
        for layer in children[:acts[index]]:
            X = layer(X)
    return X


# ---- 3. internal covariate shift, as Santurkar et al. define it ----------------------

def gradient_shift(net: gluon.Block, loss_fn, X: nd.NDArray, y: nd.NDArray,
                   target: Sequence[gluon.Parameter], below: Sequence[gluon.Parameter],
                   lr: float) -> Tuple[float, float]:
    """How much the gradient with respect to ``target`` changes when the parameters
    ``below`` take one SGD step ``w <- w - lr * grad`` computed on the same batch
    (Santurkar et al., 2018, Definition 2.1). Returns ``(||G - G'||_2, cos(G, G'))``
    with ``G`` the gradient before and ``G'`` after; the cosine is 1 when ``G' == G``.
    The parameters are restored before returning.
    """
    _check_positive("lr", lr)
    target, below = list(target), list(below)
    if not target:
        raise ValueError("target must name at least one parameter")
    _, grads = loss_and_grads(net, loss_fn, X, y, target + below)
    G, below_grads = grads[:len(target)], grads[len(target):]
    saved = [p.data(X.context).copy() for p in below]
    try:
        for p, g in zip(below, below_grads):
            p.set_data(p.data(X.context) - lr * g)
        _, G2 = loss_and_grads(net, loss_fn, X, y, target)
    finally:
        for p, w in zip(below, saved):
            p.set_data(w)
    diff = _norm([a - b for a, b in zip(G, G2)])
    n1, n2 = _norm(G), _norm(G2)
    if diff == 0:
        cos = 1.0
    elif n1 == 0 or n2 == 0:
        cos = 0.0
    else:
        cos = _dot(G, G2) / (n1 * n2)
    return diff, cos


def internal_covariate_shift(net: gluon.Block, loss_fn, X: nd.NDArray, y: nd.NDArray,
                             layer: int, lr: float) -> Tuple[float, float]:
    """:func:`gradient_shift` for the weight of the ``layer``-th conv/dense layer of a
    sequential ``net`` (:func:`weight_layers`, 0-based, at least 1) when every trainable
    parameter of the layers before it (batch norm's gamma and beta included) takes its
    SGD step of rate ``lr``."""
    layers = weight_layers(net)
    what = (f"an int in [1, {len(layers)}): the index of a conv/dense layer with "
            f"layers below it")
    layer = check_int("layer", layer, minimum=None, what=what)
    if not 1 <= layer < len(layers):
        raise ValueError(f"layer must be {what}; got {layer!r}")
    children = list(net._children.values())
    position = next(i for i, c in enumerate(children) if c is layers[layer])
    below = [p for c in children[:position] for p in trainable_params(c)]
    return gradient_shift(net, loss_fn, X, y, [layers[layer].weight], below, lr)


# ---- 4. smoothness along the gradient ------------------------------------------------

@dataclass
class GradientProbe:
    """:func:`probe_gradient_direction`'s result at one point ``w`` of training.

    ``step_sizes``: (S,) the distances ``eta``; ``loss0``: the loss at ``w``;
    ``losses``: (S,) the loss at ``w - eta * g``; ``grad_norm``: ``||g||``;
    ``grad_changes``: (S,) ``||g(w - eta g) - g(w)||``.
    """
    step_sizes: np.ndarray
    loss0: float
    losses: np.ndarray
    grad_norm: float
    grad_changes: np.ndarray

    @property
    def loss_range(self) -> float:
        """Spread of the loss along the gradient: max - min over ``w`` and every
        ``w - eta g``. It measures how much the loss varies along the gradient
        direction (Santurkar et al.'s stability, or Lipschitzness, of the loss), not
        how well the first-order prediction ``loss0 - eta ||g||^2`` holds: for a
        linear loss the prediction is exact and the spread is ``max(eta) ||g||^2``."""
        values = np.append(self.losses, self.loss0)
        return float(values.max() - values.min())

    @property
    def max_grad_change(self) -> float:
        """Largest l2 change of the gradient over the step sizes ("gradient
        predictiveness")."""
        return float(self.grad_changes.max())

    @property
    def beta(self) -> float:
        """Effective beta-smoothness: the largest
        ``||g(w - eta g) - g(w)|| / ||eta g||``."""
        return float((self.grad_changes / (self.step_sizes * self.grad_norm)).max())


def probe_gradient_direction(net: gluon.Block, loss_fn, X: nd.NDArray, y: nd.NDArray,
                             step_sizes: Sequence[float]) -> GradientProbe:
    """Move every trainable parameter of ``net`` from ``w`` to ``w - eta * g`` (``g``:
    the gradient of the mean loss on ``(X, y)``, all parameters together) for each
    ``eta`` in ``step_sizes``, and record the loss and the gradient there (Santurkar et
    al., 2018, Figure 4). Training mode; parameters and moving statistics are
    restored."""
    etas = np.asarray(list(step_sizes), dtype=np.float64)
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"step_sizes must be a non-empty 1-D sequence of step sizes; "
                         f"got {step_sizes!r}")
    if not (np.all(np.isfinite(etas)) and np.all(etas > 0)):
        raise ValueError(f"step_sizes must all be positive and finite; "
                         f"got {list(etas)}")
    params = trainable_params(net)
    loss0, g = loss_and_grads(net, loss_fn, X, y, params)
    g_norm = _norm(g)
    if g_norm == 0:
        raise ValueError("the gradient is zero here: there is no direction to move in")
    saved = [p.data(X.context).copy() for p in params]
    losses, changes = [], []
    try:
        for eta in etas:
            for p, w, gp in zip(params, saved, g):
                p.set_data(w - float(eta) * gp)
            loss, g2 = loss_and_grads(net, loss_fn, X, y, params)
            losses.append(loss)
            changes.append(_norm([a - b for a, b in zip(g2, g)]))
    finally:
        for p, w in zip(params, saved):
            p.set_data(w)
    return GradientProbe(etas, loss0, np.array(losses), g_norm, np.array(changes))


# ---- 5. one training run with everything measured ------------------------------------

@dataclass
class WhyRun:
    """One run of :func:`why_run`.

    ``train_loss``: (num_steps,) the mini-batch loss of every step; ``steps``: the
    checkpoints (0 = before training); at each: ``test_acc``, ``percentiles``
    (T, 3, units) -- the 15th/50th/85th percentile of each unit's input to the probed
    activation over the probe images; and, when measured (``measure=True``),
    ``ics_l2``/``ics_cos`` (T, L-1) for conv/dense layers 1..L-1 and
    ``loss_range``/``grad_change``/``beta``/``grad_norm`` (T,) from
    :func:`probe_gradient_direction`.
    """
    kind: str
    seed: int
    lr: float
    train_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    steps: List[int] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    percentiles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 0)))
    ics_l2: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ics_cos: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    loss_range: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_change: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0


def percentile_drift(run: WhyRun, start_step: int = 0) -> float:
    """How far the probed activation's input percentiles move over training:
    ``d2lbn.experiments.percentile_drift`` (max - min over the checkpoints from
    ``start_step`` on, averaged over units and the three percentiles) applied to
    ``run``."""
    from .experiments import Figure1Result, percentile_drift as drift
    result = Figure1Result(run.kind != "plain", run.steps, run.test_acc,
                           run.percentiles)
    return drift(result, start_step)


def percentile_jumps(run: WhyRun, start_step: int = 0) -> float:
    """How much the probed activation's input distribution changes from one checkpoint
    to the next: the mean absolute change of each percentile between consecutive
    checkpoints (from ``start_step`` on), averaged over units and the three percentiles.
    A slow drift gives small jumps however far it goes in the end; a distribution that
    is new at every step gives large ones."""
    keep = np.asarray(run.steps) >= start_step
    p = run.percentiles[keep]                          # (T, 3, units)
    if p.shape[0] < 2:
        raise ValueError(f"need at least two checkpoints from start_step={start_step} "
                         f"on; the run has {p.shape[0]}")
    return float(np.abs(np.diff(p, axis=0)).mean())


def why_run(kind: str, data, num_steps: int, lr: float, batch_size: int = 128,
            measure_every: int = 50,
            step_sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.4), measure: bool = True,
            probe_activation: int = 2, probe_size: int = 500, test_limit: int = 2000,
            max_shift: float = 1.0, max_scale: float = 3.0, seed: int = 0,
            ctx: mx.Context = mx.cpu()) -> WhyRun:
    """Train :func:`make_net(kind) <make_net>` with plain SGD (rate ``lr``, mini-batches
    of ``batch_size`` drawn at random with replacement) for ``num_steps`` steps on
    ``data = (train_X, train_y, test_X, test_y)``
    (``d2lbn.data.fashion_arrays``).

    Every ``measure_every`` steps (and at 0, and at the end): test accuracy on the first
    ``test_limit`` test images; the percentiles of the input of activation
    ``probe_activation`` (2: the first dense layer's) over the last ``probe_size`` test
    images; and, if ``measure``, on the step's own mini-batch before its update:
    :func:`internal_covariate_shift` of every conv/dense layer but the first, and
    :func:`probe_gradient_direction` with ``step_sizes``.

    A diverging run (``lr`` too large) raises ``FloatingPointError`` naming the step and
    the learning rate, as ``d2lbn.training`` does: at the first non-finite training loss
    (before its update), or at the first checkpoint whose measurements are not finite.
    """
    from .data import ArrayLoader
    from .training import evaluate_accuracy as accuracy
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; "
                         f"got {kind!r}")
    num_steps, batch_size, measure_every, probe_size, test_limit = (
        check_int(name, value) for name, value in (
            ("num_steps", num_steps), ("batch_size", batch_size),
            ("measure_every", measure_every), ("probe_size", probe_size),
            ("test_limit", test_limit)))
    probe_activation = check_int("probe_activation", probe_activation, minimum=0)
    _check_positive("lr", lr)
    train_X, train_y, test_X, test_y = data
    test_loader = ArrayLoader(test_X[:test_limit], test_y[:test_limit], 1000)
    probe = test_X[test_X.shape[0] - probe_size:]
    set_seed(seed)
    net = make_net(kind, max_shift, max_scale)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    run = WhyRun(kind, seed, lr)
    percentiles, ics_l2, ics_cos, losses = [], [], [], []
    ranges, changes, betas, norms = [], [], [], []
    start = time.perf_counter()
    n = train_X.shape[0]
    num_layers = len(weight_layers(net))
    for step in range(num_steps + 1):
        idx = nd.array(np.random.randint(0, n, batch_size), ctx=ctx)
        X, y = train_X.take(idx), train_y.take(idx)
        if step % measure_every == 0 or step == num_steps:
            run.steps.append(step)
            run.test_acc.append(accuracy(net, test_loader, ctx))
            Z = activation_inputs(net, probe, probe_activation).asnumpy()
            if Z.ndim == 4:                            # (N, C, H, W) -> (N*H*W, C)
                Z = Z.transpose(1, 0, 2, 3).reshape(Z.shape[1], -1).T
            percentiles.append(np.percentile(Z, [15, 50, 85], axis=0))
            measured = [percentiles[-1]]
            if measure:
                shifts = [internal_covariate_shift(net, loss_fn, X, y, i, lr)
                          for i in range(1, num_layers)]
                ics_l2.append([s[0] for s in shifts])
                ics_cos.append([s[1] for s in shifts])
                probe_result = probe_gradient_direction(net, loss_fn, X, y, step_sizes)
                ranges.append(probe_result.loss_range)
                changes.append(probe_result.max_grad_change)
                betas.append(probe_result.beta)
                norms.append(probe_result.grad_norm)
                measured += [ics_l2[-1], ics_cos[-1], ranges[-1], changes[-1], betas[-1],
                             norms[-1]]
            if not all(np.isfinite(m).all() for m in measured):
                raise FloatingPointError(
                    f"the measurements at step {step} of {num_steps} are NaN or infinite "
                    f"(kind={kind!r}, lr={lr:g}, seed={seed}): the run has diverged; "
                    f"lower the learning rate")
        if step == num_steps:
            break
        with autograd.record():
            loss = loss_fn(net(X), y).mean()
        value = float(loss.asscalar())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the training loss became {value} at step {step + 1} of {num_steps} "
                f"(kind={kind!r}, lr={lr:g}, seed={seed}), before its update: the run "
                f"has diverged; lower the learning rate")
        loss.backward()
        for p in trainable_params(net):
            p.set_data(p.data(ctx) - lr * p.grad(ctx))
        losses.append(value)
    run.seconds = time.perf_counter() - start
    run.train_loss = np.array(losses)
    run.percentiles = np.stack(percentiles)
    if measure:
        run.ics_l2, run.ics_cos = np.array(ics_l2), np.array(ics_cos)
        run.loss_range, run.grad_change = np.array(ranges), np.array(changes)
        run.beta, run.grad_norm = np.array(betas), np.array(norms)
    return run
