"""Batch norm across devices: data parallelism with per-device or synchronised statistics (ch07, ch10).

In data-parallel training each device (``ctx``) receives a slice of the mini-batch and runs the same
net on it. An ordinary batch-norm layer then normalises every slice with *that slice's* statistics.
Synchronised batch norm instead all-reduces the per-device sums, so every device normalises with the
statistics of the whole mini-batch: the result is what one device would compute on the whole batch.

* :func:`split_batch` -- cut ``X: (N, ...)`` and ``y: (N,)`` into equal slices, one per context;
* :func:`all_reduce_sum` -- the sum of per-device arrays, delivered to every device (differentiable);
* :func:`sync_moments` -- the whole batch's mean and biased variance from per-device slices;
* :func:`sync_batch_norm` -- batch norm of a list of per-device slices with synchronised statistics;
* :class:`SyncBatchNorm` -- the layer; :class:`ListSequential` -- a net whose forward takes the list of
  per-device slices, so that a synchronised layer can see all of them at once;
* :func:`data_parallel_lenet` and :func:`data_parallel_step` -- LeNet and one SGD step on several
  contexts, with ``'local'`` (per-device), ``'sync'`` (from scratch) or ``'mxnet-sync'``
  (``gluon.contrib.nn.SyncBatchNorm``) batch norm;
* :func:`moving_statistics`, :func:`trace_moving_statistics` and
  :func:`average_moving_statistics` -- what happens to the per-device moving statistics: the
  Gluon ``Trainer``'s first ``step`` copies *every* parameter, the moving statistics included,
  from the first device (or rank 0) to the others (MXNet 1.9.1, ``gluon/trainer.py``:
  ``_reset_kvstore`` puts every parameter in ``_params_to_init``, ``_init_params`` broadcasts
  each); only the gradients of later steps skip them (``grad_req='null'``).

Contexts may be GPUs (``mx.gpu(0)``, ``mx.gpu(1)``) or, to try it all on one machine, CPU contexts
(``mx.cpu(0)``, ``mx.cpu(1)``): MXNet keeps separate copies of the parameters on each.
"""
from __future__ import annotations

import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, nd
from mxnet.gluon import nn

from .checks import (check_int, check_layer_args, check_layer_dtype, check_momentum, check_norm_inputs,
                     check_training)
from .norm import add_norm_params

__all__ = ["split_batch", "all_reduce_sum", "sync_moments", "sync_batch_norm", "SyncBatchNorm",
           "ListSequential", "data_parallel_lenet", "reference_and_data_parallel", "in_threads",
           "data_parallel_step", "forward_backward", "moving_statistics", "trace_moving_statistics",
           "average_moving_statistics", "NORMS", "MOVING"]

#: The kinds of batch norm :func:`data_parallel_lenet` builds.
NORMS = ("local", "sync", "mxnet-sync")
#: How the moving statistics are named: d2lbn's and Gluon's layers (``moving_*``), MXNet's
#: ``SyncBatchNorm`` (``running_*``).
MOVING = ("moving_mean", "moving_var", "running_mean", "running_var")


def _check_contexts(ctxs: Sequence[mx.Context]) -> List[mx.Context]:
    ctxs = list(ctxs)
    if not ctxs or not all(isinstance(c, mx.Context) for c in ctxs):
        raise TypeError(f"ctxs must be a non-empty list of mxnet Contexts; got {ctxs!r}")
    if len(set(ctxs)) != len(ctxs):
        raise ValueError(f"ctxs must be distinct; got {ctxs}")
    return ctxs


def split_batch(X: nd.NDArray, y: nd.NDArray, ctxs: Sequence[mx.Context]
                ) -> Tuple[List[nd.NDArray], List[nd.NDArray]]:
    """Split X: (N, ...) and y: (N,) into ``len(ctxs)`` equal consecutive slices, slice
    k on ctxs[k].

    N must be divisible by the number of contexts. The gradient does not need it: the
    slices' losses are summed and ``trainer.step(N)`` divides by N, so every example
    weighs 1/N whatever its slice. MXNet's ``gluon.contrib.nn.SyncBatchNorm`` does: it
    averages the per-device E(x) and E(x^2) without weights (``mean_ = data_[0] * 1.0f
    / num_devices_``, ``src/operator/contrib/sync_batch_norm-inl.h:156``, tag 1.9.1),
    so with unequal slices the examples of a smaller slice would weigh more in its
    statistics. (:func:`sync_moments` divides by the total count and takes any sizes.)
    """
    ctxs = _check_contexts(ctxs)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have as many rows; "
                         f"got {X.shape[0]} and {y.shape[0]}")
    if X.shape[0] % len(ctxs):
        raise ValueError(f"the batch size ({X.shape[0]}) must be divisible by the "
                         f"number of contexts ({len(ctxs)})")
    return (gluon.utils.split_and_load(X, ctxs, even_split=True),
            gluon.utils.split_and_load(y, ctxs, even_split=True))


def all_reduce_sum(arrays: Sequence[nd.NDArray]) -> List[nd.NDArray]:
    """All-reduce: given one array per device (same shape), return their sum on every
    device.

    Done the simplest way: copy everything to the first device, add, copy the total
    back. The copies are recorded by autograd, so gradients flow back to every device.
    (NCCL, Horovod and MXNet's kvstore use a ring or tree instead, which sends less data
    through any one link.)
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all arrays must have the same shape; got {sorted(shapes)}")
    home = arrays[0].context
    total = arrays[0]
    for a in arrays[1:]:
        total = total + a.as_in_context(home)
    return [total.as_in_context(a.context) for a in arrays]


def sync_moments(Xs: Sequence[nd.NDArray]
                 ) -> Tuple[List[nd.NDArray], List[nd.NDArray]]:
    """The mean and biased variance of the *whole* batch, one copy per device.

    Xs: per-device slices, each (N_k, D) or (N_k, C, H, W). Returns ``(means,
    variances)``, lists of (1, D) or (1, C, 1, 1) arrays, entry k on Xs[k]'s context.
    Two all-reduces of per-feature sums: first the sum of X (with the count) for the
    mean, then the sum of squared deviations from that mean for the variance -- the same
    numbers a single device would compute on the whole batch.
    """
    Xs = list(Xs)
    if not Xs:
        raise ValueError("Xs must hold at least one slice")
    axes = (0,) if Xs[0].ndim == 2 else (0, 2, 3)
    if any(X.ndim != Xs[0].ndim or X.shape[1:] != Xs[0].shape[1:] for X in Xs):
        raise ValueError(f"all slices must agree except in the batch axis; "
                         f"got {[X.shape for X in Xs]}")
    count = sum(X.size // X.shape[1] for X in Xs)   # values per channel, all devices
    sums = all_reduce_sum([X.sum(axis=axes, keepdims=True) for X in Xs])
    means = [s / count for s in sums]
    squares = all_reduce_sum([((X - mean) ** 2).sum(axis=axes, keepdims=True)
                              for X, mean in zip(Xs, means)])
    return means, [q / count for q in squares]


def sync_batch_norm(Xs: Sequence[nd.NDArray], gammas: Sequence[nd.NDArray],
                    betas: Sequence[nd.NDArray], moving_means: Sequence[nd.NDArray],
                    moving_vars: Sequence[nd.NDArray], *, training: bool,
                    eps: float = 1e-5, momentum: float = 0.9
                    ) -> Tuple[List[nd.NDArray], List[nd.NDArray], List[nd.NDArray]]:
    """``d2lbn.norm.batch_norm`` over per-device slices with synchronised statistics.

    Every argument is a list with one entry per device: Xs[k]: (N_k, D) or (N_k, C, H,
    W), the others (D,) or (C,), all on Xs[k]'s context. Returns ``(Ys,
    new_moving_means, new_moving_vars)``, lists likewise. In training mode the slices
    are normalised with the whole batch's mean and biased variance
    (:func:`sync_moments`), so ``concat(Ys)`` equals ``batch_norm(concat(Xs))`` and so
    do the gradients (autograd differentiates through the all-reduce); the moving
    statistics, updated with the same numbers everywhere, stay equal on all devices. In
    inference mode each slice uses its device's moving statistics and nothing is
    communicated.
    """
    Xs = list(Xs)
    n = len(Xs)
    for name, values in (("gammas", gammas), ("betas", betas),
                         ("moving_means", moving_means), ("moving_vars", moving_vars)):
        if len(values) != n:
            raise ValueError(f"{name} must hold one array per slice ({n}); "
                             f"got {len(values)}")
    for k in range(n):
        check_norm_inputs(Xs[k], eps, gamma=gammas[k], beta=betas[k],
                          moving_mean=moving_means[k], moving_var=moving_vars[k])
    check_momentum(momentum)
    check_training(training)
    shape = (1, -1) if Xs[0].ndim == 2 else (1, -1, 1, 1)
    if training:
        count = sum(X.size // X.shape[1] for X in Xs)
        if count == 1:
            raise ValueError("training-mode batch norm needs more than one value per "
                             "feature/channel over all devices together")
        means, variances = sync_moments(Xs)
    else:
        means = [m.reshape(shape) for m in moving_means]
        variances = [v.reshape(shape) for v in moving_vars]
    Ys = [gammas[k].reshape(shape) * (Xs[k] - means[k]) / nd.sqrt(variances[k] + eps)
          + betas[k].reshape(shape) for k in range(n)]
    if not training:
        return (Ys, [m.detach() for m in moving_means],
                [v.detach() for v in moving_vars])
    new_means = [momentum * moving_means[k].detach()
                 + (1 - momentum) * means[k].detach().reshape((-1,)) for k in range(n)]
    new_vars = [momentum * moving_vars[k].detach()
                + (1 - momentum) * variances[k].detach().reshape((-1,))
                for k in range(n)]
    return Ys, new_means, new_vars


class SyncBatchNorm(nn.Block):
    """Synchronised batch norm from scratch: ``forward`` takes the *list* of per-device slices.

    num_features: D or C; num_dims: 2 or 4. Parameters as ``d2lbn.norm.BatchNorm`` (gamma, beta,
    moving_mean, moving_var, each (num_features,)), initialised on every context. Use it inside a
    :class:`ListSequential`; it follows ``autograd.is_training()`` like ``BatchNorm``.
    """

    takes_list = True     # ListSequential passes it every device's slice at once

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        num_features, num_dims, eps = check_layer_args(num_features, num_dims, eps)
        check_momentum(momentum)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = eps, float(momentum)
        add_norm_params(self, num_features)

    def forward(self, Xs: Sequence[nd.NDArray]) -> List[nd.NDArray]:
        if isinstance(Xs, nd.NDArray):
            raise TypeError("SyncBatchNorm takes the list of per-device slices, not one array; "
                            "put it in a ListSequential")
        Xs = list(Xs)
        for X in Xs:
            if X.ndim != self.num_dims or X.shape[1] != self.num_features:
                raise ValueError(f"{self.name} expects slices with {self.num_dims} axes and "
                                 f"{self.num_features} features/channels on axis 1; got shape {X.shape}")
        ctxs = [X.context for X in Xs]
        for X in Xs:
            check_layer_dtype(self, X, self.gamma.data(X.context))
        means = [self.moving_mean.data(c) for c in ctxs]
        variances = [self.moving_var.data(c) for c in ctxs]
        training = autograd.is_training()
        Ys, new_means, new_vars = sync_batch_norm(
            Xs, [self.gamma.data(c) for c in ctxs], [self.beta.data(c) for c in ctxs], means, variances,
            training=training, eps=self.eps, momentum=self.momentum)
        if training:
            with autograd.pause():
                for k in range(len(Xs)):
                    means[k][:] = new_means[k]
                    variances[k][:] = new_vars[k]
        return Ys

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_features={self.num_features}, num_dims={self.num_dims}, "
                f"eps={self.eps:g}, momentum={self.momentum:g})")


class ListSequential(nn.Block):
    """A sequential net whose forward takes the list of per-device slices and returns a list.

    Ordinary layers run on each slice separately (on its device); layers with ``takes_list = True``
    (:class:`SyncBatchNorm`) receive all slices at once. A single NDArray is also accepted and
    treated as a one-device list, returning one NDArray.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._layers: List[gluon.Block] = []

    def add(self, *blocks: gluon.Block) -> None:
        for block in blocks:
            self.register_child(block)
            self._layers.append(block)

    def forward(self, Xs):
        single = isinstance(Xs, nd.NDArray)
        Xs = [Xs] if single else list(Xs)
        for layer in self._layers:
            if getattr(layer, "takes_list", False):
                Xs = layer(Xs)
            else:
                Xs = [layer(X) for X in Xs]
        return Xs[0] if single else Xs

    def __repr__(self) -> str:
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self._layers)]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def data_parallel_lenet(norm: str, num_devices: int, activation: str = "relu") -> gluon.Block:
    """LeNet (the layout of ``d2lbn.models``) for data-parallel training on ``num_devices`` contexts.

    norm: ``'local'`` -- ``d2lbn.norm.BatchNorm`` (``impl='naive'``, the formula as written:
    the reference the synchronised versions are checked against), each device with its own
    slice's statistics; ``'sync'`` -- :class:`SyncBatchNorm`, from scratch (the net is a
    :class:`ListSequential`: call it with the list of slices); ``'mxnet-sync'`` --
    ``gluon.contrib.nn.SyncBatchNorm``, whose operator blocks until all ``num_devices``
    devices have reached it: run each device's forward and backward pass in its own thread,
    as :func:`data_parallel_step` does (:func:`in_threads`). Calling the slices one after
    another from one thread can wait forever (it does for this book's LeNet on MXNet
    1.9.1's CPU build).
    """
    from . import models
    from .norm import BatchNorm
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    num_devices = check_int("num_devices", num_devices)
    if norm == "local":
        return models._build(lambda c, d: BatchNorm(c, d, impl="naive"), activation)
    if norm == "mxnet-sync":
        return models._build(lambda c, d: gluon.contrib.nn.SyncBatchNorm(in_channels=c, num_devices=num_devices),
                             activation)
    plain = models._build(lambda c, d: SyncBatchNorm(c, d), activation)
    net = ListSequential()
    net.add(*plain._children.values())
    return net


def reference_and_data_parallel(norm: str, ctxs: Sequence[mx.Context], X: nd.NDArray, seed: int = 0
                                ) -> Tuple[gluon.Block, gluon.Block]:
    """Two LeNets with the same initial parameters (Xavier, seeded with ``seed``): the reference, with
    ``d2lbn.norm.BatchNorm`` on ``ctxs[0]`` alone, and ``data_parallel_lenet(norm, len(ctxs))`` on
    every context. X: (N, 1, 28, 28), N divisible by ``len(ctxs)``, a sample batch used (in inference
    mode, changing nothing) to infer the parameter shapes."""
    from .repro import set_seed
    ctxs = _check_contexts(ctxs)
    set_seed(seed)
    one = data_parallel_lenet("local", 1)
    one.initialize(init.Xavier(), ctx=ctxs[0])
    many = data_parallel_lenet(norm, len(ctxs))
    many.initialize(init.Xavier(), ctx=ctxs)
    Xs, _ = split_batch(X, nd.zeros(X.shape[0]), ctxs)
    with autograd.predict_mode():
        one(X.as_in_context(ctxs[0]))
        if isinstance(many, ListSequential):
            many(Xs)
        else:
            for Xk in Xs:
                many(Xk)
    mine, theirs = list(one.collect_params().values()), list(many.collect_params().values())
    if [p.shape for p in mine] != [p.shape for p in theirs]:
        raise RuntimeError("the two nets do not have the same parameter layout")
    for source, target in zip(mine, theirs):
        target.set_data(source.data(ctxs[0]))
    nd.waitall()            # nothing left queued (see data_parallel_step)
    return one, many


def _has_mxnet_sync(net: gluon.Block) -> bool:
    return any(isinstance(b, gluon.contrib.nn.SyncBatchNorm) for b in net._children.values())


def in_threads(work, n: int) -> list:
    """Run ``work(k)`` for k = 0..n-1, each in its own thread; return the results, re-raise an error."""
    results: list = [None] * n
    errors: list = []

    def run(k: int) -> None:
        try:
            results[k] = work(k)
        except BaseException as error:      # noqa: BLE001 -- re-raised in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def data_parallel_step(net: gluon.Block, trainer: gluon.Trainer,
                       loss_fn: gluon.loss.Loss, X: nd.NDArray, y: nd.NDArray,
                       ctxs: Sequence[mx.Context],
                       batch_size: Optional[int] = None) -> float:
    """One SGD step of data-parallel training; returns the batch's mean loss.

    X: (N, 1, 28, 28), y: (N,) with N divisible by ``len(ctxs)``.
    :func:`forward_backward` computes every slice's loss and gradients on its device;
    ``trainer.step`` then sums the gradients over the devices (MXNet's kvstore) and
    applies the same update to every device's copy of the parameters. ``batch_size``
    (default N) is what ``trainer.step`` divides by: in a job of several processes, the
    global batch. A Trainer's *first* step also copies every parameter, the moving
    statistics included, from the first device to the others
    (:func:`trace_moving_statistics` shows it).
    """
    losses = forward_backward(net, loss_fn, X, y, ctxs)
    trainer.step(X.shape[0] if batch_size is None else batch_size)
    return sum(float(l.sum().asscalar()) for l in losses) / X.shape[0]


def forward_backward(net: gluon.Block, loss_fn: gluon.loss.Loss, X: nd.NDArray,
                     y: nd.NDArray, ctxs: Sequence[mx.Context]) -> List[nd.NDArray]:
    """The forward and backward passes of :func:`data_parallel_step`: split X: (N, 1,
    28, 28) and y: (N,) over ``ctxs``, compute each slice's loss on its device (a
    :class:`ListSequential` sees all slices at once) and back-propagate; returns the
    per-slice losses (the gradients stay in the parameters, one copy per device).

    With ``gluon.contrib.nn.SyncBatchNorm`` each device runs its forward and backward
    pass in its own thread (:func:`in_threads`). MXNet's operator waits at a barrier in
    each pass until all ``num_devices`` devices have reached it. On MXNet 1.9.1's CPU
    build this book's LeNet (four such layers) waited forever when one thread ran the
    devices' forward passes in turn, and also when the forward passes ran in threads
    but one thread started every device's backward pass (ch07_devices shows both in
    child processes). GluonCV's ``DataParallelModel`` threads the forward pass only,
    with ``sync=True``, and its segmentation script back-propagates every device from
    one thread, on GPUs (read, not run here).
    Pending work is finished first (``nd.waitall()``): a first step from a cold start
    hung without it.
    """
    Xs, ys = split_batch(X, y, ctxs)
    if _has_mxnet_sync(net):
        if any(p._deferred_init for p in net.collect_params().values()):
            # infer the shapes; no synchronisation at inference
            with autograd.predict_mode():
                for Xk in Xs:
                    net(Xk)
        # Let every queued operation finish first: if work pushed earlier (the shape
        # inference above, parameter copies) is still pending when the threads push the
        # synchronised forward passes, MXNet 1.9.1's barrier can wait forever (a cold
        # start hung on its first step).
        nd.waitall()

        def work(k: int) -> nd.NDArray:
            with autograd.record():
                loss = loss_fn(net(Xs[k]), ys[k])
            loss.backward()
            return loss
        losses = in_threads(work, len(Xs))
    else:
        with autograd.record():
            if isinstance(net, ListSequential):
                scores = net(Xs)
            else:
                scores = [net(Xk) for Xk in Xs]
            losses = [loss_fn(s, yk) for s, yk in zip(scores, ys)]
        autograd.backward(losses)
    return losses


# ---- what the Trainer does to the moving statistics ----------------------------------

def _moving_parameters(net: gluon.Block) -> list:
    return [p for name, p in net.collect_params().items() if name.endswith(MOVING)]


def moving_statistics(net: gluon.Block, ctx: mx.Context) -> np.ndarray:
    """Every moving statistic of ``net`` (moving means and variances of every batch-norm
    layer, ``collect_params()`` order) on ``ctx``, concatenated: a float64 vector."""
    moving = _moving_parameters(net)
    if not moving:
        raise ValueError("net has no moving statistics (no parameter whose name ends "
                         f"in one of {MOVING})")
    return np.concatenate([p.data(ctx).asnumpy().astype(np.float64).ravel()
                           for p in moving])


def trace_moving_statistics(net: gluon.Block, trainer: gluon.Trainer,
                            loss_fn: gluon.loss.Loss, batches,
                            ctxs: Sequence[mx.Context],
                            batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Train ``net`` on ``batches`` and record its moving statistics on every context
    around each ``trainer.step``.

    batches: a sequence of ``(X, y)``, each split over ``ctxs`` as in
    :func:`data_parallel_step` (in a job of several processes: this worker's part, with
    ``ctxs=[its context]`` and ``batch_size`` the global batch). Returns ``'before'``
    and ``'after'``, float64 arrays (steps, len(ctxs), S) of :func:`moving_statistics`:
    ``'before'`` after the step's forward and backward passes (by then every batch-norm
    layer has updated its moving statistics from its own slice: d2lbn's in the forward
    pass, MXNet's CPU layer in the backward pass), ``'after'`` after ``trainer.step``.
    Every pending operation finishes before the step (``nd.waitall()``), as
    ``d2lbn.distributed.step`` does.
    """
    ctxs = _check_contexts(ctxs)
    before, after = [], []
    for X, y in batches:
        forward_backward(net, loss_fn, X, y, ctxs)
        nd.waitall()
        before.append([moving_statistics(net, c) for c in ctxs])
        trainer.step(X.shape[0] if batch_size is None else batch_size)
        after.append([moving_statistics(net, c) for c in ctxs])
    if not before:
        raise ValueError("batches must hold at least one (X, y)")
    return {"before": np.array(before), "after": np.array(after)}


def average_moving_statistics(net: gluon.Block, ctxs: Sequence[mx.Context]) -> None:
    """Replace every moving statistic of ``net`` on every context of ``ctxs`` by its
    mean over ``ctxs`` (in place).

    For the moving means this is the moving average of every device's slice means,
    except where a copy replaced a device's statistics: after the ``Trainer``'s first
    step has copied device 0's to the others, the first step's term holds device 0's
    slice mean only. For the moving variances it is the mean of per-slice variances,
    which lacks the spread *between* the slice means (the variance decomposition), so
    it underestimates the variance of whole batches; recomputing the statistics on
    whole batches (precise statistics) does not.
    """
    ctxs = _check_contexts(ctxs)
    for p in _moving_parameters(net):
        copies = [p.data(c).as_in_context(ctxs[0]) for c in ctxs]
        mean = nd.add_n(*copies) / len(copies)
        for c in ctxs:
            p.data(c)[:] = mean.as_in_context(c)


def _dist_trace_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m d2lbn.parallel --out PREFIX [--steps 3] [--batch-size 32]
    [--seed 0]``, run by every worker of a ``dist_sync`` job (started by
    ``python -m d2lbn launch``):
    LeNet-BN with per-worker batch norm (``d2lbn.distributed.dist_lenet('local')``),
    trained on this worker's shards of the first Fashion-MNIST images by
    :func:`trace_moving_statistics`; writes its arrays and ``rank`` to
    ``PREFIX-rank{r}.npz``."""
    import argparse
    from . import distributed as D
    from .repro import set_seed
    parser = argparse.ArgumentParser(prog="python -m d2lbn.parallel")
    parser.add_argument("--out", required=True, help="path prefix of the results")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kv = D.dist_kvstore()
    X, y = D.lockstep_data("fashion", args.steps * args.batch_size)
    mine = nd.array(D.shard(np.arange(args.batch_size), kv.rank, kv.num_workers),
                    dtype="int64")
    batches = [(X[t * args.batch_size:(t + 1) * args.batch_size].take(mine),
                y[t * args.batch_size:(t + 1) * args.batch_size].take(mine))
               for t in range(args.steps)]
    net = D.dist_lenet("local")
    net.initialize(init.Xavier())
    set_seed(args.seed)
    with autograd.predict_mode():
        net(batches[0][0])                 # infer shapes (no communication)
    trainer = D.dist_trainer(net, kv, 0.1)
    trace = trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
                                    batches, [mx.cpu()], batch_size=args.batch_size)
    np.savez(f"{args.out}-rank{kv.rank}.npz", rank=np.array(kv.rank), **trace)
    print(f"rank {kv.rank}: {args.steps} steps traced", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_dist_trace_main())
