"""Chapter 10's studies: diagnosing batch norm that misbehaves ("When Batch Norm Misbehaves", ch10).

* :func:`compare_statistics` -- the inference-statistics diagnostic: each batch-norm layer's stored
  moving statistics against the statistics of the inputs that layer receives, in inference mode, on a
  sample of inference data; names the layers that disagree.
* :func:`check_moving_statistics` -- a per-layer health check of the stored statistics (NaN, inf,
  a variance that is not positive or absurdly large).
* :func:`recompute_statistics` -- replace the moving statistics by averages over a pass of clean
  batches (Ioffe & Szegedy's Algorithm 2 with MXNet's biased variance), e.g. after weight averaging,
  pruning, or a poisoned batch.
* :func:`freeze_table` -- what "freezing" a Gluon batch-norm layer stops, measured: ``grad_req='null'``
  on gamma and beta, ``use_global_stats=True``, both, or the whole net in inference mode.
* :func:`lenet_gluon_bn` (LeNet with a chosen momentum), :class:`InterleavedLoader` (batches that
  each come from one source), :func:`with_input_batch_norm`, :func:`accumulated_gradient` / :func:`train_accumulated` (gradient accumulation over
  micro-batches), :func:`prune_by_magnitude`, :func:`snapshot` / :func:`average_snapshots` /
  :func:`load_snapshot` -- the small pieces the chapter's reproductions are built from.

Batch-norm layers are MXNet's ``gluon.nn.BatchNorm`` (and its subclasses) and ``d2lbn.norm.BatchNorm``,
found however deeply they are nested (the basic blocks of ``d2lbn.resnet`` included). The functions
that look at the inputs of each layer run the whole net and read each layer's input with a forward
pre-hook (a hybridized net runs imperatively for that, and is hybridized as before afterwards). Shapes: ``X: (N, C, H, W)`` or ``(N, D)``; the
statistics of a layer are per channel (axis 1), arrays of shape ``(C,)`` or ``(D,)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .checks import check_int, check_real, check_sgd_momentum
from .moving_stats import (batch_norm_layers, blocks, imperative, is_batch_norm,
                           layer_statistics, set_layer_statistics)
from .repro import set_seed

__all__ = ["leaf_layers", "channel_moments", "input_statistics", "LayerCheck",
           "compare_statistics", "disagreeing_layers", "format_checks", "check_moving_statistics",
           "recompute_statistics", "set_use_global_stats", "FREEZE_SETTINGS", "FreezeRow",
           "freeze_table", "lenet_gluon_bn", "InterleavedLoader",
           "with_input_batch_norm", "accumulated_gradient", "synchronised_gradient",
           "relative_difference", "train_accumulated", "prune_by_magnitude", "snapshot",
           "average_snapshots", "load_snapshot"]

Batches = Iterable[Tuple[nd.NDArray, nd.NDArray]]


# ---- finding the layers and their statistics --------------------------------------------------------

def _check_net(net: gluon.Block) -> None:
    if not isinstance(net, gluon.Block):
        raise TypeError(f"net must be a gluon Block, got {type(net).__name__}")


def leaf_layers(net: gluon.Block) -> List[gluon.Block]:
    """The layers of a ``Sequential``/``HybridSequential`` net in the order they run, nested
    sequential containers flattened. Any other block is a leaf (a net that is not sequential is
    returned as ``[net]``)."""
    _check_net(net)
    if isinstance(net, (nn.Sequential, nn.HybridSequential)):
        return [leaf for child in net._children.values() for leaf in leaf_layers(child)]
    return [net]


def _eps(layer: gluon.Block) -> float:
    return float(layer._kwargs["eps"]) if isinstance(layer, nn.BatchNorm) else float(layer.eps)


def channel_moments(X: nd.NDArray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of ``X: (N, C)`` or ``(N, C, H, W)`` per channel (axis 1), computed
    in float64: two arrays of shape (C,)."""
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"X must be an mxnet NDArray, got {type(X).__name__}")
    if X.ndim not in (2, 4):
        raise ValueError(f"X must be (N, C) or (N, C, H, W); got shape {X.shape}")
    values = X.asnumpy().astype(np.float64)
    axes = (0,) if X.ndim == 2 else (0, 2, 3)
    with np.errstate(invalid="ignore", over="ignore"):     # NaN in, NaN out: callers check
        return values.mean(axis=axes), values.var(axis=axes)


def _save_moving(layers: Sequence[gluon.Block]):
    return [layer_statistics(layer) for layer in layers]


def input_statistics(net: gluon.Block, batches: Batches, ctx: mx.Context, training: bool = False,
                     num_batches: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The statistics of the inputs each batch-norm layer of ``net`` receives, one ``(mean, var)``
    pair of (C,) float64 arrays per layer, in order.

    The net runs on each batch ``(X, y)`` of ``batches`` (at most ``num_batches``); a forward
    pre-hook on every batch-norm layer (:func:`batch_norm_layers`) reads what the layer receives.
    ``training=False``: in inference mode, as a deployed net sees its data; the result is the mean and
    biased variance of all the values a layer received (the sample pooled). ``training=True``: in
    training mode (every layer normalising with its batch's statistics), as during training; the
    result is the average of the per-batch means and biased variances, what Algorithm 2 averages.
    The moving statistics are left as they were. A NaN or infinity in a batch is a ``ValueError``
    naming the batch (0-based index); so is one in the input of a layer in training mode (in
    inference mode it can come from an earlier layer's non-finite stored statistics, which
    :func:`compare_statistics` reports).
    """
    return _input_statistics(net, batches, ctx, training, num_batches)[0]


def _check_finite_input(X: nd.NDArray, b: int) -> None:
    if not isinstance(X, nd.NDArray):
        raise TypeError(f"batch {b} of batches: X must be an mxnet NDArray, "
                        f"got {type(X).__name__}")
    bad = int((~np.isfinite(X.asnumpy())).sum())
    if bad:
        raise ValueError(f"batch {b} of batches (counting from 0) holds NaN or infinite "
                         f"values in X ({bad} of them): its statistics would make every "
                         f"moving statistic NaN; remove or repair that batch (no moving "
                         f"statistic was changed)")


def _check_finite_moments(mean: np.ndarray, var: np.ndarray, k: int, layer: gluon.Block,
                          b: int) -> None:
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise ValueError(f"the input of batch-norm layer {k} ({layer.name}) is NaN or "
                         f"infinite in batch {b} of batches (counting from 0), although X "
                         f"is finite: a parameter before it is not finite or the activations "
                         f"overflow (no moving statistic was changed)")


def _input_statistics(net, batches, ctx, training, num_batches):
    """:func:`input_statistics` and the number of batches used."""
    _check_net(net)
    if num_batches is not None:
        num_batches = check_int("num_batches", num_batches, what="a positive int or None")
    bn_layers = batch_norm_layers(net)
    if not bn_layers:
        raise ValueError("net has no batch-norm layer")
    saved = _save_moving(bn_layers)
    # per layer, one (mean, var, values per channel) for every call
    records: List[List[Tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in bn_layers]
    current = [0]                                          # the batch being run

    def hook_for(k: int):
        def hook(layer, inputs):
            h = inputs[0]
            m, v = channel_moments(h)
            if training:              # in inference mode a bad stored statistic is a finding
                _check_finite_moments(m, v, k, layer, current[0])
            records[k].append((m, v, h.size // h.shape[1]))
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(k)) for k, layer in enumerate(bn_layers)]
    used = 0
    try:
        with imperative(net), (autograd.train_mode() if training else autograd.predict_mode()):
            for b, (X, _) in enumerate(batches):
                if num_batches is not None and b >= num_batches:
                    break
                current[0] = b
                _check_finite_input(X, b)
                net(X.as_in_context(ctx))
                used += 1
    finally:
        for handle in handles:
            handle.detach()
        for layer, (m, v) in zip(bn_layers, saved):
            set_layer_statistics(layer, m, v)
    if not used:
        raise ValueError("batches yielded no batch")
    result = []
    for layer, calls in zip(bn_layers, records):
        if not calls:
            raise ValueError(f"{layer.name} never ran: net's forward pass does not call it")
        ms, vs = np.stack([c[0] for c in calls]), np.stack([c[1] for c in calls])
        if training:
            result.append((ms.mean(axis=0), vs.mean(axis=0)))
        else:
            w = np.asarray([c[2] for c in calls], dtype=np.float64)[:, None]
            w /= w.sum()
            pooled = (w * ms).sum(axis=0)
            result.append((pooled, (w * (vs + (ms - pooled) ** 2)).sum(axis=0)))
    return result, used


# ---- 1. the inference-statistics diagnostic -------------------------------------------------------------

@dataclass
class LayerCheck:
    """One batch-norm layer: its stored statistics against those of the inputs it receives.

    ``mean_shift``: max over channels of ``|mean - moving_mean| / sqrt(moving_var + eps)`` (how many
    stored standard deviations the data's mean sits away); ``var_ratio``: max over channels of
    ``max(r, 1/r)`` with ``r = (var + eps) / (moving_var + eps)`` (1 when they agree); ``finite``:
    whether both stored statistics are finite; ``disagrees``: a tolerance was exceeded or a value is
    not finite.
    """
    index: int
    name: str
    channels: int
    mean_shift: float
    var_ratio: float
    finite: bool
    disagrees: bool


def compare_statistics(net: gluon.Block, X: nd.NDArray,
                       ctx: Optional[mx.Context] = None, batch_size: int = 256,
                       mean_tol: float = 1.0, var_tol: float = 2.0) -> List[LayerCheck]:
    """Compare each batch-norm layer's moving statistics with the statistics of the
    inputs it receives when ``net`` runs in inference mode on ``X: (N, ...)``, a sample
    of inference data fed in batches of ``batch_size``.

    A layer disagrees when its ``mean_shift`` exceeds ``mean_tol`` (stored standard
    deviations) or its ``var_ratio`` exceeds ``var_tol`` (see :class:`LayerCheck`).
    Layers after a disagreeing one often disagree too, because their inputs are already
    off: look at the first one named. Returns one :class:`LayerCheck` per layer."""
    if not isinstance(X, nd.NDArray) or X.ndim < 2:
        raise TypeError(f"X must be an mxnet NDArray of shape (N, ...); "
                        f"got {type(X).__name__}")
    batch_size = check_int("batch_size", batch_size)
    if not mean_tol > 0 or not var_tol > 1:
        raise ValueError(f"mean_tol must be > 0 and var_tol > 1; "
                         f"got {mean_tol!r} and {var_tol!r}")
    ctx = ctx or X.context
    batches = [(X[i:i + batch_size], None) for i in range(0, X.shape[0], batch_size)]
    observed = input_statistics(net, batches, ctx, training=False)
    checks = []
    for i, (layer, (mean, var)) in enumerate(zip(batch_norm_layers(net), observed)):
        m_mean, m_var = layer_statistics(layer)
        eps = _eps(layer)
        finite = bool(np.isfinite(m_mean).all() and np.isfinite(m_var).all())
        with np.errstate(all="ignore"):
            shift = np.abs(mean - m_mean) / np.sqrt(np.maximum(m_var, 0) + eps)
            ratio = (var + eps) / (np.maximum(m_var, 0) + eps)
            ratio = np.maximum(ratio, 1 / ratio)
        mean_shift = float(np.max(shift)) if finite else math.nan
        var_ratio = float(np.max(ratio)) if finite else math.nan
        disagrees = not finite or mean_shift > mean_tol or var_ratio > var_tol
        checks.append(LayerCheck(i, layer.name, len(m_mean), mean_shift, var_ratio,
                                 finite, disagrees))
    return checks


def disagreeing_layers(checks: Sequence[LayerCheck]) -> List[str]:
    """The names of the layers :func:`compare_statistics` found disagreeing, in order."""
    return [c.name for c in checks if c.disagrees]


def format_checks(checks: Sequence[LayerCheck]) -> str:
    """The checks as a plain-text table, one row per layer."""
    rows = [f"{'layer':>16} {'channels':>8} {'mean shift':>10} {'var ratio':>10}  verdict"]
    for c in checks:
        verdict = "NOT FINITE" if not c.finite else ("DISAGREES" if c.disagrees else "ok")
        rows.append(f"{c.name:>16} {c.channels:>8} {c.mean_shift:>10.3g} {c.var_ratio:>10.3g}  {verdict}")
    return "\n".join(rows)


def check_moving_statistics(net: gluon.Block, max_var: float = 1e6) -> List[str]:
    """A health check of the stored statistics, no data needed: one line per problem found (an empty
    list means healthy). A problem is a NaN or infinite moving mean or variance, a variance <= 0, or
    one above ``max_var`` (the input of a batch-norm layer rarely varies that much; a poisoned one
    does)."""
    if not max_var > 0:
        raise ValueError(f"max_var must be > 0; got {max_var!r}")
    problems = []
    for layer in batch_norm_layers(net):
        mean, var = layer_statistics(layer)
        bad_mean = int((~np.isfinite(mean)).sum())
        bad_var = int((~np.isfinite(var)).sum())
        if bad_mean or bad_var:
            problems.append(f"{layer.name}: {bad_mean} moving means and {bad_var} moving variances "
                            f"of {len(mean)} are NaN or infinite")
            continue
        if (var <= 0).any():
            problems.append(f"{layer.name}: {int((var <= 0).sum())} moving variances are <= 0")
        if (var > max_var).any():
            problems.append(f"{layer.name}: moving variance up to {var.max():.3g} (> {max_var:g})")
    return problems


def recompute_statistics(net: gluon.Block, batches: Batches, ctx: mx.Context,
                         num_batches: Optional[int] = None) -> int:
    """Replace each batch-norm layer's moving statistics by the average, over the
    batches of ``batches`` (at most ``num_batches``), of the mean and biased variance of
    the layer's input, the net running in training mode (:func:`input_statistics` with
    ``training=True``). Algorithm 2 of Ioffe & Szegedy (2015) with MXNet's biased
    variance; what SWA's "update the batch-norm statistics" pass does. No weight
    changes. Returns the number of batches used."""
    stats, used = _input_statistics(net, batches, ctx, True, num_batches)
    for layer, (mean, var) in zip(batch_norm_layers(net), stats):
        set_layer_statistics(layer, mean, var)
    return used


# ---- 3. freezing ------------------------------------------------------------------------------------------

def set_use_global_stats(net: gluon.Block, flag: bool) -> int:
    """Set ``use_global_stats`` on every ``gluon.nn.BatchNorm`` of ``net`` (True: always normalise
    with the moving statistics and never update them) and drop any compiled graph, so the change
    takes effect in a hybridized net too. Returns the number of layers changed."""
    if not isinstance(flag, bool):
        raise TypeError(f"flag must be True or False; got {flag!r}")
    layers = [layer for layer in batch_norm_layers(net) if isinstance(layer, nn.BatchNorm)]
    for layer in layers:
        layer._kwargs["use_global_stats"] = flag
    for block in blocks(net):
        if isinstance(block, gluon.HybridBlock):
            block._clear_cached_op()
    return len(layers)


#: The settings :func:`freeze_table` compares.
FREEZE_SETTINGS = ("nothing frozen", "grad_req='null' on gamma, beta", "use_global_stats=True",
                   "grad_req='null' and use_global_stats=True", "whole net in inference mode")


@dataclass
class FreezeRow:
    """What one training step changed in a ``gluon.nn.BatchNorm`` layer under one setting."""
    setting: str
    gamma_beta_change: bool
    moving_stats_change: bool
    normalised_with: str            # 'batch' or 'moving' statistics


def freeze_table(seed: int = 0) -> List[FreezeRow]:
    """Measure, for each of :data:`FREEZE_SETTINGS`, what one SGD step (forward, backward,
    ``trainer.step``) on a batch ``X: (32, 4)`` drawn from N(3, 2^2) changes in a ``gluon.nn.BatchNorm``
    whose moving statistics start at mean 0, variance 1: gamma/beta, the moving statistics, and which
    statistics the forward pass normalised with. The gradient also flows to X, as it would to the
    layers before a frozen one."""
    set_seed(seed)
    X = nd.random.normal(3, 2, shape=(32, 4))
    X.attach_grad()                    # as the output of an earlier layer that still trains
    target = nd.random.normal(shape=(32, 4))
    rows = []
    for setting in FREEZE_SETTINGS:
        global_stats = "use_global_stats" in setting
        layer = nn.BatchNorm(in_channels=4, use_global_stats=global_stats)
        layer.initialize()
        if "grad_req" in setting:
            layer.gamma.grad_req = layer.beta.grad_req = "null"
        before = [p.data().copy() for p in (layer.gamma, layer.beta, layer.running_mean,
                                               layer.running_var)]
        trainer = gluon.Trainer(layer.collect_params(), "sgd", {"learning_rate": 0.1})
        with autograd.record(train_mode=setting != "whole net in inference mode"):
            Y = layer(X)
            loss = ((Y - target) ** 2).sum()
        loss.backward()
        trainer.step(X.shape[0])
        after = [p.data() for p in (layer.gamma, layer.beta, layer.running_mean, layer.running_var)]
        changed = [not np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(after, before)]
        mean, var = channel_moments(X)
        batch_hat = (X.asnumpy() - mean) / np.sqrt(var + 1e-5)
        Y_hat = (Y.asnumpy() - before[1].asnumpy()) / before[0].asnumpy()
        used = "batch" if np.allclose(Y_hat, batch_hat, atol=1e-3) else "moving"
        rows.append(FreezeRow(setting, changed[0] or changed[1], changed[2] or changed[3], used))
    return rows


# ---- the nets, loaders and training pieces of the reproductions --------------------------------------------

def lenet_gluon_bn(momentum: float = 0.9, activation: str = "relu") -> nn.HybridSequential:
    """LeNet with ``gluon.nn.BatchNorm(momentum=momentum)`` after each conv/dense layer but the last,
    the layout of ``d2lbn.models.lenet_bn_gluon``. X: (N, 1, 28, 28) -> scores (N, 10)."""
    from .models import CONV_CHANNELS, DENSE_UNITS, NUM_CLASSES, _check_activation
    from .norm import check_momentum
    check_momentum(momentum)
    _check_activation(activation)
    net = nn.HybridSequential()
    for channels in CONV_CHANNELS:
        net.add(nn.Conv2D(channels, kernel_size=5), nn.BatchNorm(momentum=momentum),
                nn.Activation(activation), nn.MaxPool2D(pool_size=2, strides=2))
    for units in DENSE_UNITS:
        net.add(nn.Dense(units), nn.BatchNorm(momentum=momentum), nn.Activation(activation))
    net.add(nn.Dense(NUM_CLASSES))
    return net


class InterleavedLoader:
    """Batches taken in turn from several loaders (one batch of each, then the next of each, ...,
    until all are exhausted): every batch comes from a single source, as when a training set is
    assembled from several data sets, each with its own loader.

    ``loaders``: iterables of ``(X, y)`` batches (with ``len()`` for :meth:`__len__`).
    """

    def __init__(self, loaders: Sequence[Batches]):
        self.loaders = list(loaders)
        if not self.loaders:
            raise ValueError("loaders must hold at least one loader")

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def __iter__(self) -> Iterator[Tuple[nd.NDArray, nd.NDArray]]:
        iterators = [iter(loader) for loader in self.loaders]
        while iterators:
            for it in list(iterators):
                try:
                    yield next(it)
                except StopIteration:
                    iterators.remove(it)


def with_input_batch_norm(net: nn.HybridSequential) -> nn.HybridSequential:
    """A new ``HybridSequential``: ``gluon.nn.BatchNorm`` on the input (one statistic per input
    channel), then the layers of ``net`` (which must not have been run yet)."""
    if not isinstance(net, nn.HybridSequential):
        raise TypeError(f"net must be a HybridSequential; got {type(net).__name__}")
    out = nn.HybridSequential()
    out.add(nn.BatchNorm(), *net._children.values())
    return out


def _grad_params(net: gluon.Block) -> List[gluon.Parameter]:
    return [p for p in net.collect_params().values() if p.grad_req != "null"]


def accumulated_gradient(net: gluon.Block, X: nd.NDArray, y: nd.NDArray, micro_batch: int,
                         loss_fn: Optional[gluon.loss.Loss] = None) -> np.ndarray:
    """The gradient of the summed loss over the batch ``X: (N, ...)``, ``y: (N,)``, accumulated over
    consecutive micro-batches of ``micro_batch`` examples (``micro_batch = N``: the true batch
    gradient), as one flat float64 vector over every trained parameter. The net is in training mode;
    its moving statistics are restored afterwards and no parameter changes."""
    micro_batch = check_int("micro_batch", micro_batch)
    if X.shape[0] % micro_batch:
        raise ValueError(f"the batch size ({X.shape[0]}) must be a multiple of micro_batch ({micro_batch})")
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    params = _grad_params(net)
    layers = batch_norm_layers(net)
    saved = _save_moving(layers)
    total = None
    try:
        for i in range(0, X.shape[0], micro_batch):
            with autograd.record():
                loss = loss_fn(net(X[i:i + micro_batch]), y[i:i + micro_batch]).sum()
            loss.backward()
            flat = np.concatenate([p.grad(p.list_ctx()[0]).asnumpy().astype(np.float64).ravel()
                                   for p in params])
            total = flat if total is None else total + flat
    finally:
        for layer, (m, v) in zip(layers, saved):
            set_layer_statistics(layer, m, v)
    return total


def synchronised_gradient(net: gluon.Block, X: nd.NDArray, y: nd.NDArray,
                          ctxs: Sequence[mx.Context],
                          loss_fn: Optional[gluon.loss.Loss] = None) -> np.ndarray:
    """The gradient of the summed loss over ``X: (N, ...)``, ``y: (N,)`` computed in ``len(ctxs)``
    micro-batches whose batch-norm layers share their statistics: ``net`` is a
    ``d2lbn.parallel`` net (``data_parallel_lenet('sync', k)``, initialised on ``ctxs``), each
    micro-batch runs on its own context, and the per-context gradients are summed. Returned as one
    flat float64 vector over the trained parameters, in ``net``'s order. Like a training step, it
    updates the moving statistics."""
    from .parallel import ListSequential, split_batch
    if not isinstance(net, ListSequential):
        raise TypeError("net must be a d2lbn.parallel.ListSequential, such as "
                        "data_parallel_lenet('sync', k)")
    loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
    Xs, ys = split_batch(X, y, ctxs)
    with autograd.record():
        losses = [loss_fn(s, yk).sum() for s, yk in zip(net(Xs), ys)]
    autograd.backward(losses)
    return np.concatenate([sum(g.asnumpy().astype(np.float64) for g in p.list_grad()).ravel()
                           for p in _grad_params(net)])


def relative_difference(a, b) -> float:
    """``||a - b|| / ||b||`` of two array-likes of the same shape (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape; got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def train_accumulated(net: gluon.Block, train_iter: Batches, micro_batch: int, num_epochs: int,
                      lr: float, ctx: mx.Context, momentum: float = 0.9, seed: int = 0) -> None:
    """Train ``net`` (initialised here, Xavier, after ``set_seed(seed)``) with SGD (``momentum``)
    where each batch of ``train_iter`` is processed as consecutive micro-batches of ``micro_batch``
    examples whose gradients are accumulated (``grad_req='add'``) before one update: the update of
    the whole batch for every layer but batch norm, whose statistics come from each micro-batch.
    A batch whose size is not a multiple of ``micro_batch`` is skipped."""
    micro_batch = check_int("micro_batch", micro_batch)
    num_epochs = check_int("num_epochs", num_epochs)
    lr, momentum = check_real("lr", lr, positive=True), check_sgd_momentum(momentum)
    set_seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctx, force_reinit=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr, "momentum": momentum})
    params = _grad_params(net)
    for p in params:
        p.grad_req = "add"
    try:
        for _ in range(num_epochs):
            for X, y in train_iter:
                if X.shape[0] % micro_batch:
                    continue
                X, y = X.as_in_context(ctx), y.as_in_context(ctx)
                for p in params:
                    p.zero_grad()
                for i in range(0, X.shape[0], micro_batch):
                    with autograd.record():
                        loss = loss_fn(net(X[i:i + micro_batch]), y[i:i + micro_batch])
                    loss.backward()
                trainer.step(X.shape[0])
    finally:
        for p in params:
            p.grad_req = "write"


# ---- 6. changing the weights ----------------------------------------------------------------------------

def _weights(net: gluon.Block) -> List[gluon.Parameter]:
    return [layer.weight for layer in blocks(net) if isinstance(layer, (nn.Conv2D, nn.Dense))]


def prune_by_magnitude(net: gluon.Block, fraction: float) -> int:
    """Set to zero the ``fraction`` of entries of smallest magnitude in the weight of every
    ``Conv2D`` and ``Dense`` layer (each layer separately; biases and batch-norm parameters kept).
    Returns the number of weights zeroed."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"fraction must be a number in [0, 1); got {fraction!r}")
    zeroed = 0
    for weight in _weights(net):
        w = weight.data(weight.list_ctx()[0]).asnumpy()
        k = int(fraction * w.size)
        if k == 0:
            continue
        cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
        mask = np.abs(w) > cut
        zeroed += int(w.size - mask.sum())
        weight.set_data(nd.array(w * mask, dtype=w.dtype))
    return zeroed


def snapshot(net: gluon.Block) -> Dict[str, np.ndarray]:
    """Every parameter of ``net`` (weights, gamma, beta and the moving statistics) as NumPy copies,
    by name."""
    return {name: p.data(p.list_ctx()[0]).asnumpy().copy() for name, p in net.collect_params().items()}


def average_snapshots(snapshots: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The entry-wise mean of several snapshots of one net (SWA's average). The moving statistics
    are averaged too, as a naive average of all parameters does."""
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("snapshots must hold at least one snapshot")
    names = set(snapshots[0])
    if any(set(s) != names for s in snapshots):
        raise ValueError("the snapshots must come from the same net (same parameter names)")
    return {name: np.mean([s[name] for s in snapshots], axis=0).astype(snapshots[0][name].dtype)
            for name in snapshots[0]}


def load_snapshot(net: gluon.Block, values: Dict[str, np.ndarray]) -> None:
    """Set every parameter of ``net`` from a snapshot (names must match)."""
    params = net.collect_params()
    if set(params.keys()) != set(values):
        missing = sorted(set(params.keys()) ^ set(values))
        raise ValueError(f"the snapshot does not match the net's parameters; differing names: {missing[:5]}")
    for name, p in params.items():
        p.set_data(nd.array(values[name], dtype=p.dtype))
