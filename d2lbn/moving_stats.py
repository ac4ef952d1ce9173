"""Moving statistics: find a net's batch-norm layers, read, set and freeze their moving statistics, and estimate better ones (ch06, ch08, ch09, ch10).

The tools the chapters on batch norm's practice share, each working on the layers of a Gluon net:

* finding the layers: :func:`is_batch_norm`, :func:`blocks`, :func:`batch_norm_layers` (Gluon's
  ``nn.BatchNorm`` and ``d2lbn.norm.BatchNorm``, however deeply nested),
  :func:`scratch_norm_layers` (only ``d2lbn.norm.BatchNorm``, which updates its moving statistics
  in the forward pass); :func:`imperative` runs a hybridized net imperatively so forward hooks fire;
* one layer's statistics: :func:`statistic_params`, :func:`layer_statistics`,
  :func:`set_layer_statistics`;
* a net's statistics: :func:`moving_statistics`, :func:`set_moving_statistics`,
  :func:`frozen_moving_statistics`, :func:`train_mode_accuracy`;
* better estimates: :func:`settle_moving_statistics`, :func:`precise_statistics` (Wu & Johnson,
  2021), :func:`layer_batch_moments`, :func:`remove_initial_values`.

Statistics are float64 NumPy arrays of shape (C,), one (mean, var) pair per layer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .checks import check_int, check_momentum
from .norm import BatchNorm
from .training import evaluate_accuracy

__all__ = ["is_batch_norm", "blocks", "imperative", "batch_norm_layers", "scratch_norm_layers",
           "statistic_params", "layer_statistics", "set_layer_statistics",
           "moving_statistics", "set_moving_statistics", "frozen_moving_statistics",
           "train_mode_accuracy", "settle_moving_statistics", "precise_statistics",
           "LayerMoments", "layer_batch_moments", "remove_initial_values"]


def _check_net(net: gluon.Block) -> None:
    if not isinstance(net, gluon.Block):
        raise TypeError(f"net must be a gluon Block, got {type(net).__name__}")


# ---- finding the layers ---------------------------------------------------------------------------

def is_batch_norm(block: gluon.Block) -> bool:
    """True for ``gluon.nn.BatchNorm`` (and subclasses) and ``d2lbn.norm.BatchNorm``."""
    return isinstance(block, (nn.BatchNorm, BatchNorm))


def blocks(net: gluon.Block) -> List[gluon.Block]:
    """``net`` and every block inside it, each once, depth first in the order they were
    registered (the insides of a batch-norm layer are not walked)."""
    seen, found = set(), []

    def walk(block: gluon.Block) -> None:
        if id(block) in seen:
            return
        seen.add(id(block))
        found.append(block)
        if not is_batch_norm(block):
            for child in block._children.values():
                walk(child)
    walk(net)
    return found


@contextlib.contextmanager
def imperative(net: gluon.Block) -> Iterator[None]:
    """Within the block every hybridized block of ``net`` runs imperatively, so that forward
    hooks of the blocks inside it fire; on exit each is hybridized again with its own flags
    (``static_alloc`` and the like), its compiled graph kept."""
    active = [block for block in blocks(net)
              if isinstance(block, gluon.HybridBlock) and block._active]
    for block in active:
        block._active = False
    try:
        yield
    finally:
        for block in active:
            block._active = True


def batch_norm_layers(net: gluon.Block) -> List[gluon.Block]:
    """Every batch-norm layer of ``net`` (see :func:`is_batch_norm`), however deeply nested: the
    children of every block are walked, depth first in the order they were registered (for a
    sequential net, the order the data meets them; in a ``d2lbn.resnet.BasicBlock``, ``bn1``,
    ``bn2``, then the shortcut's ``short_bn``)."""
    _check_net(net)
    return [block for block in blocks(net) if is_batch_norm(block)]


def statistic_params(layer: gluon.Block) -> Tuple[gluon.Parameter, gluon.Parameter]:
    if isinstance(layer, nn.BatchNorm):
        return layer.running_mean, layer.running_var
    if is_batch_norm(layer):
        return layer.moving_mean, layer.moving_var
    raise TypeError(f"{type(layer).__name__} is not a batch-norm layer")


def layer_statistics(layer: gluon.Block) -> Tuple[np.ndarray, np.ndarray]:
    """``(moving_mean, moving_var)`` of a batch-norm layer as float64 NumPy copies, each (C,)."""
    mean, var = statistic_params(layer)
    return (mean.data(mean.list_ctx()[0]).asnumpy().astype(np.float64),
            var.data(var.list_ctx()[0]).asnumpy().astype(np.float64))


def set_layer_statistics(layer: gluon.Block, mean, var) -> None:
    """Store ``mean`` and ``var`` (array-likes of shape (C,)) as the layer's moving statistics, on
    every context it lives on."""
    mean_p, var_p = statistic_params(layer)
    for param, value, name in ((mean_p, mean, "mean"), (var_p, var, "var")):
        value = np.asarray(value, dtype=np.float64)
        if value.shape != param.shape:
            raise ValueError(f"{name} must have shape {param.shape} for {layer.name}; got {value.shape}")
        param.set_data(nd.array(value, dtype=param.dtype))


# ---- a net's moving statistics, and better estimates of them ------------------------------------

@contextlib.contextmanager
def frozen_moving_statistics(net: gluon.Block):
    """Within the block, training-mode forward passes may update the moving statistics (every
    parameter with ``grad_req='null'``); on exit they are restored to their values on entry."""
    params = [p for p in net.collect_params().values() if p.grad_req == "null"]
    saved = [[d.copy() for d in p.list_data()] for p in params]
    try:
        yield
    finally:
        for p, values in zip(params, saved):
            for d, v in zip(p.list_data(), values):
                d[:] = v


def train_mode_accuracy(net: gluon.Block, loader, ctx: mx.Context) -> float:
    """Fraction of correct predictions over ``loader`` in *training* mode: each batch is
    normalised with its own statistics, as during training. The moving statistics are
    left unchanged."""
    with frozen_moving_statistics(net), autograd.train_mode():
        return evaluate_accuracy(net, loader, ctx)


def scratch_norm_layers(net: gluon.Block) -> List[gluon.Block]:
    """The layers of ``net`` that keep moving statistics in their forward pass (``d2lbn.norm.BatchNorm``),
    in the order of ``net.collect_params()``."""
    layers, seen = [], set()
    stack = [net]
    while stack:
        block = stack.pop(0)
        if isinstance(block, BatchNorm) and id(block) not in seen:
            layers.append(block)
            seen.add(id(block))
        stack.extend(block._children.values())
    return layers


def moving_statistics(net: gluon.Block) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``(moving_mean, moving_var)`` of every ``d2lbn.norm.BatchNorm`` layer of ``net``, as float64
    NumPy arrays of shape (C,), in the order of the layers."""
    return [(layer.moving_mean.data().asnumpy().astype(np.float64),
             layer.moving_var.data().asnumpy().astype(np.float64)) for layer in scratch_norm_layers(net)]


def set_moving_statistics(net: gluon.Block, stats: Sequence[Tuple[np.ndarray, np.ndarray]]) -> None:
    """Store ``stats`` (as returned by :func:`moving_statistics`) as the moving statistics of
    ``net``'s batch-norm layers, on every context the layers live on."""
    layers = scratch_norm_layers(net)
    if len(stats) != len(layers):
        raise ValueError(f"stats must hold one (mean, var) pair per batch-norm layer ({len(layers)}); "
                         f"got {len(stats)}")
    for layer, (mean, var) in zip(layers, stats):
        for param, value in ((layer.moving_mean, mean), (layer.moving_var, var)):
            if np.shape(value) != param.shape:
                raise ValueError(f"stats for {layer.name} must have shape {param.shape}; "
                                 f"got {np.shape(value)}")
            param.set_data(nd.array(value, dtype="float32"))


def _batches(loader, num_batches: int):
    """Yield the inputs of ``num_batches`` batches of ``loader``, passing over it again as often
    as needed (an empty loader is a ``ValueError``, not an endless loop)."""
    done = 0
    while done < num_batches:
        before = done
        for X, _ in loader:
            yield X
            done += 1
            if done == num_batches:
                return
        if done == before:
            raise ValueError("loader yielded no batch")


def settle_moving_statistics(net: gluon.Block, loader, num_batches: int, ctx: mx.Context) -> None:
    """Let the moving statistics catch up with the current weights: ``num_batches`` training-mode
    forward passes over ``loader``'s batches, no weight update. With momentum 0.9, after 50 batches
    the statistics from before weigh 0.9**50 < 0.01. (For layers that update their moving
    statistics in the forward pass, as ``d2lbn.norm.BatchNorm`` does.) This is itself a moving
    average, dominated by the last few dozen batches; :func:`precise_statistics` is the
    equal-weight alternative."""
    num_batches = check_int("num_batches", num_batches, minimum=0)
    with autograd.train_mode():
        for X in _batches(loader, num_batches):
            net(X.as_in_context(ctx))


def precise_statistics(net: gluon.Block, loader, num_batches: int, ctx: mx.Context
                       ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Precise batch norm (Wu & Johnson, 2021): population statistics of every
    batch-norm layer as the *equal-weight* average over ``num_batches`` training batches
    of ``loader`` (passing over it again if it has fewer), with the weights fixed and
    every layer in training mode:

    ``mean = E[mu_B]``, ``var = E[sigma2_B + mu_B**2] - mean**2``,

    where mu_B and sigma2_B (biased) are a batch's statistics at the layer's input. For
    batches of equal size this is the mean and biased variance of all their values
    pooled. Returns one ``(mean, var)`` pair of float64 arrays (C,) per layer (as
    :func:`moving_statistics`); the net, its moving statistics included, is left
    unchanged (store the result with :func:`set_moving_statistics`). Works for
    ``d2lbn.norm.BatchNorm`` layers (statistics read with momentum set to 0 for each
    batch)."""
    num_batches = check_int("num_batches", num_batches)
    layers = scratch_norm_layers(net)
    if not layers:
        raise ValueError("net has no d2lbn.norm.BatchNorm layer to take statistics of")
    sums = [[0.0, 0.0] for _ in layers]
    momenta = [layer.momentum for layer in layers]
    done = 0
    try:
        for layer in layers:
            layer.momentum = 0.0          # the moving statistics become the batch's own
        with frozen_moving_statistics(net), autograd.train_mode():
            for X in _batches(loader, num_batches):
                net(X.as_in_context(ctx))
                for acc, (mean, var) in zip(sums, moving_statistics(net)):
                    acc[0] = acc[0] + mean
                    acc[1] = acc[1] + var + mean ** 2
                done += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    stats = []
    for first, second in sums:
        mean = first / done
        stats.append((mean, np.maximum(second / done - mean ** 2, 0.0)))
    return stats


@dataclass
class LayerMoments:
    """Batch statistics of one batch-norm layer's input, averaged with equal weights
    over batches, as float64 arrays (C,): ``mean`` = E[mu_B]; ``batch_var`` =
    E[sigma2_B], the average of each batch's biased variance (what a moving average of
    the batch variances estimates); ``pooled_var`` = E[sigma2_B + mu_B**2] -
    E[mu_B]**2, the precise variance (:func:`precise_statistics`). ``values``: the
    values per channel in one batch of the loader (N, or N*H*W for images)."""
    mean: np.ndarray
    batch_var: np.ndarray
    pooled_var: np.ndarray
    values: int

    @property
    def within_share(self) -> np.ndarray:
        """batch_var / pooled_var per channel: the share of the variance that lies
        within a batch (1 where the pooled variance is 0). For N independent values
        per channel it is (N - 1) / N on average."""
        return np.divide(self.batch_var, self.pooled_var,
                         out=np.ones_like(self.batch_var), where=self.pooled_var > 0)


def layer_batch_moments(net: gluon.Block, loader, num_batches: int, ctx: mx.Context,
                        training: bool = True) -> List[LayerMoments]:
    """:class:`LayerMoments` of every ``d2lbn.norm.BatchNorm`` layer's input over
    ``num_batches`` batches of ``loader`` (passing over it again if it has fewer), with
    the weights fixed. The inputs are read by a forward pre-hook, in float64.

    ``training=True``: every layer in training mode, as during training (each batch
    normalised with its own statistics, so the examples of a batch depend on each other
    at every layer after the first); the moving statistics are left unchanged.
    ``training=False``: the net in inference mode (every example normalised with the
    stored statistics, alone), so the examples of a batch stay independent.
    Batches are weighted equally (exact for batches of equal size)."""
    num_batches = check_int("num_batches", num_batches)
    layers = scratch_norm_layers(net)
    if not layers:
        raise ValueError("net has no d2lbn.norm.BatchNorm layer to take statistics of")
    sums = [{"mean": 0.0, "var": 0.0, "square": 0.0, "values": 0} for _ in layers]

    def make_hook(acc):
        def hook(block, inputs):
            X = inputs[0].asnumpy().astype(np.float64)
            axes = (0,) if X.ndim == 2 else (0, 2, 3)
            mean = X.mean(axis=axes)
            acc["mean"] = acc["mean"] + mean
            acc["var"] = acc["var"] + X.var(axis=axes)
            acc["square"] = acc["square"] + mean ** 2
            acc["values"] = acc["values"] or X.size // X.shape[1]
        return hook

    handles = [layer.register_forward_pre_hook(make_hook(acc))
               for layer, acc in zip(layers, sums)]
    mode = autograd.train_mode() if training else autograd.predict_mode()
    try:
        with frozen_moving_statistics(net), mode:
            for X in _batches(loader, num_batches):
                net(X.as_in_context(ctx))
    finally:
        for handle in handles:
            handle.detach()
    out = []
    for acc in sums:
        mean, batch_var = acc["mean"] / num_batches, acc["var"] / num_batches
        pooled = np.maximum(batch_var + acc["square"] / num_batches - mean ** 2, 0.0)
        out.append(LayerMoments(mean, batch_var, pooled, acc["values"]))
    return out


def remove_initial_values(stats: Sequence[Tuple[np.ndarray, np.ndarray]],
                          num_updates: int, momentum: float = 0.9,
                          initial: Tuple[float, float] = (0.0, 1.0)
                          ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Moving statistics without the weight their initial values still carry.

    After t updates ``moving = momentum * moving + (1 - momentum) * batch`` from
    ``initial`` (mean 0, variance 1, as ``d2lbn.norm.BatchNorm`` starts),
    ``m_t = momentum**t * initial + (1 - momentum) * sum_k momentum**(t - k) x_k``: the
    batches' weights sum to 1 - momentum**t. This returns
    ``(m_t - momentum**t * initial) / (1 - momentum**t)`` for every (mean, var) pair,
    the same exponential weighting of the batches alone (Adam's bias correction)."""
    num_updates = check_int("num_updates", num_updates)
    check_momentum(momentum)
    left = float(momentum) ** num_updates
    return [((np.asarray(mean, np.float64) - left * initial[0]) / (1 - left),
             (np.asarray(var, np.float64) - left * initial[1]) / (1 - left))
            for mean, var in stats]

