"""Chapter 9's studies: placement, dropout, weight decay, residual nets, fine-tuning, shift (ch09).

* :func:`lenet_variant` -- LeNet with Gluon's batch norm before or after each ReLU,
  optionally with one dropout layer in front of a batch-norm layer or behind the last
  one;
* :func:`fit` -- a small SGD training loop with weight decay that can spare gamma and
  beta and that records the norms of chosen weights as it goes; :func:`effective_lr`;
* :func:`layer_input_stats`, :func:`variance_shift`, :func:`recalibrate_bn` (AdaBN) --
  the statistics a batch-norm layer stores against those it meets at inference;
* :func:`invert`, :func:`brightness_contrast` -- shifted copies of images in [0, 1];
* :func:`copy_params`.

Shapes: images ``X: (N, 1, 28, 28)`` float32 in [0, 1], labels ``y: (N,)``; nets map X
to (N, 10).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn
from mxnet.lr_scheduler import CosineScheduler

from .checks import check_int, check_real, check_sgd_momentum
from .moving_stats import batch_norm_layers, imperative, statistic_params
from .repro import set_seed

__all__ = ["PLACEMENTS", "DROPOUT_SITES", "lenet_variant", "copy_params",
           "layer_input_stats", "variance_shift", "recalibrate_bn", "effective_lr",
           "spare_norm_params", "FitResult", "fit", "evaluate", "invert",
           "brightness_contrast", "plot_band"]

#: Where batch norm goes relative to the activation: ``'before'`` (conv -> BN -> ReLU,
#: the paper) or ``'after'`` (conv -> ReLU -> BN).
PLACEMENTS = ("before", "after")

#: Where :func:`lenet_variant` puts its dropout layer: nowhere; ``'before_bn'``, after
#: the first dense block, so the second dense layer's batch norm sees dropped-out
#: inputs; ``'after_bn'``, after the second dense block, in front of the output layer,
#: behind every batch-norm layer.
DROPOUT_SITES = ("none", "before_bn", "after_bn")


def _check_real(name: str, value) -> float:
    """A finite real number: a non-number is a ``TypeError``, NaN or infinity a
    ``ValueError``, each naming ``name`` (``d2lbn.checks.check_real``)."""
    return check_real(name, value, what="a finite real number")


# ---- the nets ------------------------------------------------------------------------

def lenet_variant(placement: str = "before", dropout: float = 0.0,
                  dropout_site: str = "none",
                  use_global_stats: bool = False) -> nn.HybridSequential:
    """LeNet (the layers of ``d2lbn.models``) with ``gluon.nn.BatchNorm`` after every
    conv/dense layer but the last, placed ``'before'`` or ``'after'`` its ReLU;
    X: (N, 1, 28, 28) -> (N, 10).

    ``dropout`` in [0, 1) is the rate of one ``nn.Dropout`` at ``dropout_site`` (see
    :data:`DROPOUT_SITES`); ``use_global_stats=True`` builds every batch-norm layer so
    that it always normalises with its moving statistics and never updates them (for
    fine-tuning with frozen statistics). Hybridizable.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    if dropout_site not in DROPOUT_SITES:
        raise ValueError(f"dropout_site must be one of {DROPOUT_SITES}; "
                         f"got {dropout_site!r}")
    dropout = _check_real("dropout", dropout)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a rate in [0, 1); got {dropout!r}")
    if (dropout > 0) != (dropout_site != "none"):
        raise ValueError(f"dropout={dropout} and dropout_site={dropout_site!r} "
                         "disagree: give a rate "
                         f"> 0 together with a site, or 0 with 'none'")
    net = nn.HybridSequential()

    def block(layer: gluon.Block) -> None:
        bn = nn.BatchNorm(use_global_stats=use_global_stats)
        relu = nn.Activation("relu")
        net.add(layer, *((bn, relu) if placement == "before" else (relu, bn)))

    for channels in (6, 16):
        block(nn.Conv2D(channels, kernel_size=5))
        net.add(nn.MaxPool2D(pool_size=2, strides=2))
    block(nn.Dense(120))
    if dropout_site == "before_bn":
        net.add(nn.Dropout(dropout))
    block(nn.Dense(84))
    if dropout_site == "after_bn":
        net.add(nn.Dropout(dropout))
    net.add(nn.Dense(10))
    return net


def copy_params(src: gluon.Block, dst: gluon.Block) -> None:
    """Copy every parameter (weights, gamma, beta and moving statistics) of ``src`` into
    ``dst``, a net of the same structure (for example :func:`lenet_variant` built with
    other options)."""
    a, b = src._collect_params_with_prefix(), dst._collect_params_with_prefix()
    if list(a) != list(b):
        raise ValueError("src and dst must have the same structure; "
                         "their parameters differ: "
                         f"{sorted(set(a) ^ set(b))[:4]}")
    for name, p in a.items():
        if b[name].shape != p.shape and all(b[name].shape):
            raise ValueError(f"parameter {name} has shape {p.shape} in src, "
                             f"{b[name].shape} in dst")
        if b[name]._data is None:
            b[name].shape = p.shape
            b[name].initialize(ctx=p.list_ctx())
        b[name].set_data(p.data())


# ---- statistics: what the layer stored, what it meets --------------------------------

def _batches(X: nd.NDArray, batch_size: int):
    for i in range(0, X.shape[0], batch_size):
        yield X[i:i + batch_size]


def _batch_span(b: int, batch_size: int, n: int) -> str:
    return f"batch {b} (examples {b * batch_size}-{min(n, (b + 1) * batch_size) - 1})"


def _check_finite_batches(X: nd.NDArray, batch_size: int) -> None:
    """Raise a ``ValueError`` naming the first batch of ``X`` (in batches of
    ``batch_size``) that holds a NaN or an infinity."""
    rows = X.reshape((X.shape[0], -1))
    bad = np.flatnonzero(~np.isfinite(rows.asnumpy()).all(axis=1))
    if bad.size:
        first = int(bad[0])
        count = int((~np.isfinite(rows[first].asnumpy())).sum())
        raise ValueError(
            f"{_batch_span(first // batch_size, batch_size, X.shape[0])}, counting from 0, "
            f"of X holds NaN or infinite values ({count} in example {first}, "
            f"{bad.size} example(s) in all): its statistics would be NaN and the net "
            f"would give every image the same scores; remove or repair those examples")


def layer_input_stats(net: gluon.Block, X: nd.NDArray, layers: Sequence[gluon.Block],
                      batch_size: int = 500) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Mean and biased variance, per channel/feature, of the input of each of ``layers``
    (blocks inside ``net``) when ``net`` runs in inference mode on all of ``X``:
    ``[(mean, var), ...]`` in float64, each of shape (C,). Statistics over axes (0, 2,
    3) for 4-D inputs, axis 0 for 2-D ones.

    Uses forward pre-hooks, so a hybridized net is run un-hybridized for the measurement
    (and hybridized again afterwards, with its flags). A NaN or infinity in ``X``, or in the input a
    layer receives, is a ``ValueError`` naming the batch (and the layer).
    """
    return _layer_input_stats(net, X, layers, batch_size, list(range(len(layers))))


def _layer_input_stats(net: gluon.Block, X: nd.NDArray, layers: Sequence[gluon.Block],
                       batch_size: int, numbers: Sequence[int]
                       ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """:func:`layer_input_stats`; ``numbers``: how errors number the layers."""
    batch_size = check_int("batch_size", batch_size)
    if X.shape[0] == 0:
        raise ValueError("X must hold at least one example")
    _check_finite_batches(X, batch_size)
    sums: Dict[int, List] = {i: [0.0, 0.0, 0] for i in range(len(layers))}
    current = [0]                                      # the batch being run

    def hook_for(i: int):
        def hook(block, inputs):
            Z = inputs[0]
            axes = (0,) if Z.ndim == 2 else (0, 2, 3)
            z = Z.asnumpy().astype(np.float64)
            if not np.isfinite(z).all():
                raise ValueError(
                    f"the input of batch-norm layer {numbers[i]} ({block.name}) holds NaN "
                    f"or infinite values in {_batch_span(current[0], batch_size, X.shape[0])}"
                    f", counting from 0, although X is finite (a weight or stored statistic "
                    f"before it is not finite, or the activations overflow): its statistics "
                    f"would be NaN")
            sums[i][0] = sums[i][0] + z.sum(axis=axes)
            sums[i][1] = sums[i][1] + (z * z).sum(axis=axes)
            sums[i][2] += z.size // z.shape[1]
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i))
               for i, layer in enumerate(layers)]
    try:
        ctx = _context(net)
        with imperative(net), autograd.predict_mode():
            for b, Xb in enumerate(_batches(X, batch_size)):
                current[0] = b
                net(Xb.as_in_context(ctx))
    finally:
        for h in handles:
            h.detach()
    out = []
    for i in range(len(layers)):
        s, ss, n = sums[i]
        if n == 0:
            raise ValueError(f"layers[{i}] was never called by net: is it part of it?")
        mean = s / n
        out.append((mean, np.maximum(ss / n - mean ** 2, 0.0)))
    return out


def _context(net: gluon.Block) -> mx.Context:
    return next(iter(net.collect_params().values())).list_ctx()[0]


def variance_shift(net: gluon.Block, X: nd.NDArray, layer: gluon.Block,
                   batch_size: int = 500) -> np.ndarray:
    """Per channel/feature, the moving variance ``layer`` stored during training divided
    by the variance of its input at inference on ``X`` (net in inference mode: dropout
    off, moving statistics). 1 means no shift; Li et al. (2019) call a ratio above 1 the
    *variance shift*."""
    (_, var), = layer_input_stats(net, X, [layer], batch_size)
    stored = statistic_params(layer)[1].data().asnumpy().astype(np.float64)
    return stored / var


def recalibrate_bn(net: gluon.Block, X: nd.NDArray, batch_size: int = 500) -> int:
    """AdaBN (Li et al., 2016): replace every batch-norm layer's moving mean and
    variance by the mean and biased variance of its input over the unlabelled images
    ``X`` (N, 1, 28, 28), the net in inference mode. Layer by layer, in order, so each
    layer's statistics are those it meets once the layers before it have been
    recalibrated: the whole net runs over all of ``X`` once per batch-norm layer (four
    inference-mode passes for LeNet). No weight changes. Returns the number of layers.

    A NaN or infinity in ``X`` (or in a layer's input) is a ``ValueError`` naming the
    batch, raised before any statistic changes (or after restoring them all).
    """
    batch_size = check_int("batch_size", batch_size)
    layers = batch_norm_layers(net)
    if not layers:
        raise ValueError("net has no batch-norm layers to recalibrate (AdaBN needs "
                         "gluon.nn.BatchNorm or d2lbn.norm.BatchNorm layers)")
    _check_finite_batches(X, batch_size)
    saved = [[p.data().copy() for p in statistic_params(layer)] for layer in layers]
    try:
        for i, layer in enumerate(layers):
            (mean, var), = _layer_input_stats(net, X, [layer], batch_size, [i])
            for param, value in zip(statistic_params(layer), (mean, var)):
                param.set_data(nd.array(value, dtype=param.dtype))
    except BaseException:          # no layer keeps statistics of an aborted pass
        for layer, values in zip(layers, saved):
            for param, value in zip(statistic_params(layer), values):
                param.set_data(value)
        raise
    return len(layers)


# ---- weight decay and the effective learning rate ------------------------------------

def effective_lr(lr: float, weight) -> float:
    """``lr / ||W||^2`` (squared Frobenius norm): the step size that a weight followed
    by batch norm really takes, since by scale invariance only its direction matters and
    a gradient step turns that direction by about ``lr * ||grad||/||W||`` with
    ``||grad||`` itself ``~ 1/||W||`` (van Laarhoven, 2017). ``weight``: an NDArray,
    NumPy array or Parameter of any shape."""
    lr = _check_real("lr", lr)
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr!r}")
    if isinstance(weight, gluon.Parameter):
        weight = weight.data()
    if isinstance(weight, nd.NDArray):
        weight = weight.asnumpy()
    w = np.asarray(weight, dtype=np.float64)
    norm2 = float((w * w).sum())
    if not norm2 > 0:
        raise ValueError("weight must not be all zeros: "
                         "the effective learning rate is infinite")
    return lr / norm2


def spare_norm_params(net: gluon.Block, decay: bool) -> None:
    """Set ``wd_mult`` of every batch-norm gamma and beta of ``net`` to 1
    (``decay=True``) or to 0 (no weight decay on them, the common practice); other
    parameters keep theirs."""
    for layer in batch_norm_layers(net):
        for p in (layer.gamma, layer.beta):
            p.wd_mult = 1.0 if decay else 0.0


@dataclass
class FitResult:
    """A run of :func:`fit`. Per epoch: ``loss`` (mean training loss) and ``test_acc``.
    ``steps``: the steps at which the traced weights were measured (0 = before
    training); ``norms``: ``{name: [||W|| at each of steps]}``; ``seconds``: wall
    time."""
    test_acc: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    steps: List[int] = field(default_factory=list)
    norms: Dict[str, List[float]] = field(default_factory=dict)
    batch_loss: List[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]


def evaluate(net: gluon.Block, X: nd.NDArray, y: nd.NDArray,
             batch_size: int = 1000) -> float:
    """Accuracy of ``net`` on ``(X, y)`` in inference mode."""
    batch_size = check_int("batch_size", batch_size)
    ctx = _context(net)
    correct = 0
    for i in range(0, X.shape[0], batch_size):
        scores = net(X[i:i + batch_size].as_in_context(ctx))
        correct += int((scores.argmax(axis=1) == y[i:i + batch_size].as_in_context(ctx)
                        .astype(scores.dtype)).sum().asscalar())
    return correct / X.shape[0]


def fit(net: gluon.Block, data, num_epochs: int, lr: float,
        ctx: mx.Context = mx.cpu(), *, seed: Optional[int] = 0, init: bool = True,
        batch_size: int = 128, momentum: float = 0.9, wd: float = 0.0,
        decay_norm_params: bool = False, cosine: bool = True,
        trace: Optional[Dict[str, gluon.Parameter]] = None,
        trace_every: int = 50) -> FitResult:
    """Train ``net`` with SGD (``momentum``, weight decay ``wd``) and softmax
    cross-entropy on ``data = (train_X, train_y, test_X, test_y)``; test accuracy after
    every epoch.

    ``seed``: seed every generator (``None``: don't); ``init``: (re)initialise the net
    with Xavier (parameters with their own initialiser keep it), or keep its weights
    (fine-tuning). ``decay_norm_params``: whether gamma and beta get weight decay too.
    ``cosine``: lower the learning rate to 0 along a half cosine over the run, else keep
    it constant. ``trace``: ``{name: parameter}`` whose norms are recorded every
    ``trace_every`` steps. Raises ``FloatingPointError`` on a NaN/inf loss.
    """
    from .data import ArrayLoader
    num_epochs = check_int("num_epochs", num_epochs)
    batch_size = check_int("batch_size", batch_size)
    trace_every = check_int("trace_every", trace_every)
    lr = check_real("lr", lr, positive=True)
    if not _check_real("wd", wd) >= 0:
        raise ValueError(f"wd must be >= 0; got {wd!r}")
    momentum = check_sgd_momentum(momentum)
    train_X, train_y, test_X, test_y = data
    if seed is not None:
        set_seed(seed)
    if init:
        net.initialize(mx.init.Xavier(), ctx=ctx, force_reinit=True)
    loader = ArrayLoader(train_X, train_y, batch_size, shuffle=True)
    spare_norm_params(net, decay_norm_params)
    params = {"learning_rate": lr, "momentum": momentum, "wd": wd}
    if cosine:
        params["lr_scheduler"] = CosineScheduler(max_update=num_epochs * len(loader),
                                                 base_lr=lr, final_lr=0.0)
    trainer = gluon.Trainer(net.collect_params(), "sgd", params)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    result = FitResult(norms={name: [] for name in (trace or {})})
    start, step = time.perf_counter(), 0

    def record() -> None:
        result.steps.append(step)
        for name, p in (trace or {}).items():
            result.norms[name].append(float(p.data().norm().asscalar()))

    if trace:
        record()
    for epoch in range(num_epochs):
        total = 0.0
        for X, y in loader:
            X, y = X.as_in_context(ctx), y.as_in_context(ctx)
            with autograd.record():
                loss = loss_fn(net(X), y)
            loss.backward()
            trainer.step(X.shape[0])
            step += 1
            batch_total = float(loss.sum().asscalar())
            result.batch_loss.append(batch_total / X.shape[0])
            total += batch_total
            if not math.isfinite(total):
                raise FloatingPointError(f"the training loss became {total} "
                                         f"at epoch {epoch + 1}, "
                                         f"step {step} (lr={lr:g})")
            if trace and step % trace_every == 0:
                record()
        result.loss.append(total / train_X.shape[0])
        result.test_acc.append(evaluate(net, test_X, test_y))
    result.seconds = time.perf_counter() - start
    return result


# ---- distribution shift --------------------------------------------------------------

def _check_images(X) -> None:
    if not isinstance(X, nd.NDArray):
        raise TypeError("X must be an mxnet NDArray of images in [0, 1]; "
                        f"got {type(X).__name__}")


def invert(X: nd.NDArray) -> nd.NDArray:
    """``1 - X``: dark garments on a white background. X: any shape, values in
    [0, 1]."""
    _check_images(X)
    return 1 - X


def brightness_contrast(X: nd.NDArray, brightness: float = 0.0,
                        contrast: float = 1.0) -> nd.NDArray:
    """``clip(contrast * X + brightness, 0, 1)``: ``contrast`` in (0, 10] scales the
    pixel values, ``brightness`` in [-1, 1] adds to them. X: any shape, values in [0,
    1]."""
    _check_images(X)
    brightness, contrast = (_check_real("brightness", brightness),
                            _check_real("contrast", contrast))
    if not -1 <= brightness <= 1:
        raise ValueError(f"brightness must be in [-1, 1]; got {brightness!r}")
    if not 0 < contrast <= 10:
        raise ValueError(f"contrast must be in (0, 10]; got {contrast!r}")
    return nd.clip(contrast * X + brightness, 0, 1)


# ---- reporting over seeds ------------------------------------------------------------

def plot_band(ax, x: Sequence[float], runs: Sequence[Sequence[float]], label: str,
              **kwargs):
    """Plot the mean over ``runs`` (one sequence per seed, each as long as ``x``)
    against ``x`` with a shaded band from the minimum to the maximum; return the mean
    line."""
    values = np.asarray(runs, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(x):
        raise ValueError(f"runs must be (seeds, len(x)) = (*, {len(x)}); "
                         f"got shape {values.shape}")
    line, = ax.plot(x, values.mean(axis=0), label=label, **kwargs)
    ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=line.get_color(),
                    alpha=0.2)
    return line
