"""Data-parallel training on several processes through MXNet's parameter server, ``dist_sync`` (ch07, appendix).

Each worker is a process (started by ``python -m d2lbn launch``, see
:mod:`d2lbn.launch`) with its own copy of the net. The kvstore created by
``mx.kv.create('dist_sync')`` connects it to the servers; pushing an array under a key
and pulling it back gives the **sum over all workers** of what they pushed (no optimizer
runs on the servers: ``update_on_kvstore=False``). That sum is the cross-process
all-reduce used here for two things:

* the gradients, by ``gluon.Trainer(..., kvstore=kv, update_on_kvstore=False)``;
* the batch statistics, by :class:`KVStoreSyncBatchNorm`: in the forward pass every
  worker pushes its per-channel count, sum and sum of squares, and normalises with the
  whole (global) batch's mean and variance; in the backward pass it pushes the two
  per-channel sums of the gradient formula, so that the input gradients are those of the
  global batch.

Also here: :func:`global_batches` and :func:`shard` (every example in exactly one
worker's batch per epoch), :func:`dist_lenet`, :func:`train_dist` (what
``python -m d2lbn train --kvstore dist_sync`` runs) and :func:`lockstep` (a few SGD
steps on fixed batches, to compare with one process).

Shapes: X: (N, 1, 28, 28) images, y: (N,) labels; per-channel vectors (C,).
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .fast_norm import Function, channel_sum, moving_average, scale_shift
from .norm import add_norm_params, check_layer_args, check_layer_input, check_momentum

__all__ = ["LAUNCHER_ENV", "in_launcher", "require_launcher", "dist_kvstore",
           "SchedulerUnreachableError", "wait_for_scheduler", "SCHEDULER_WAIT",
           "KeyAllocator", "all_reduce", "KVStoreBatchNormTrain",
           "KVStoreSyncBatchNorm", "dist_lenet", "NORMS", "epoch_permutation",
           "min_global_batch", "global_batches", "shard", "dist_trainer", "step",
           "train_dist", "lockstep", "lockstep_reference", "lockstep_data"]


#: The environment variables a parameter-server worker needs (set by
#: ``python -m d2lbn launch``).
LAUNCHER_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER",
                "DMLC_NUM_SERVER")
#: Kinds of batch norm :func:`dist_lenet` builds: per-worker statistics, or
#: synchronised ones.
NORMS = ("local", "kvstore")
#: kvstore keys from here on are the batch-norm layers'; the Trainer uses 0, 1, ...
#: (one per parameter).
FIRST_KEY = 1_000_000

#: Seconds a worker waits for the scheduler to accept a connection before it gives up
#: (``$D2LBN_SCHEDULER_WAIT`` overrides it; the launcher starts the scheduler first).
SCHEDULER_WAIT = 10.0

_KVSTORES: Dict[str, mx.kvstore.KVStore] = {}


class SchedulerUnreachableError(RuntimeError):
    """The ``DMLC_*`` variables name a scheduler that does not answer."""


def in_launcher() -> bool:
    """True in a worker process started by the launcher (every ``DMLC_*`` variable
    is set)."""
    return (all(os.environ.get(name) for name in LAUNCHER_ENV)
            and os.environ["DMLC_ROLE"] == "worker")


def require_launcher(kind: str = "dist_sync") -> None:
    """Raise a ``RuntimeError`` that says how to start workers unless this process
    is one."""
    if not in_launcher():
        missing = [name for name in LAUNCHER_ENV if not os.environ.get(name)]
        raise RuntimeError(
            f"--kvstore {kind} needs a parameter-server job: this process is not a "
            f"worker of one ({', '.join(missing) or 'DMLC_ROLE=worker'} not set). "
            f"Start the workers with the launcher, e.g. python -m d2lbn launch -n 2 -- "
            f"python -m d2lbn train --kvstore {kind} ...")


def dist_kvstore(kind: str = "dist_sync") -> mx.kvstore.KVStore:
    """The process's distributed kvstore (created once, then reused); needs the
    launcher's environment."""
    if kind not in ("dist_sync", "dist_device_sync"):
        raise ValueError(f"kind must be 'dist_sync' or 'dist_device_sync'; "
                         f"got {kind!r}")
    if kind not in _KVSTORES:
        require_launcher(kind)
        wait_for_scheduler(kind)
        _KVSTORES[kind] = mx.kv.create(kind)
    return _KVSTORES[kind]


def wait_for_scheduler(kind: str = "dist_sync", timeout: Optional[float] = None) -> None:
    """Return once the scheduler named by ``DMLC_PS_ROOT_URI`` and ``DMLC_PS_ROOT_PORT``
    accepts a TCP connection; raise :class:`SchedulerUnreachableError` (one line: the
    address, the variables, what to do) when it does not within ``timeout`` seconds
    (default ``$D2LBN_SCHEDULER_WAIT`` or :data:`SCHEDULER_WAIT`).

    ``mx.kv.create('dist_sync')`` itself waits for the scheduler for ever, silently: with
    ``DMLC_*`` variables left over in a shell and no job running, it would hang."""
    host = os.environ.get("DMLC_PS_ROOT_URI", "")
    port_text = os.environ.get("DMLC_PS_ROOT_PORT", "")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SchedulerUnreachableError(f"--kvstore {kind}: DMLC_PS_ROOT_PORT must be a port "
                                        f"number in 1..65535; got {port_text!r}")
    port = int(port_text)
    if timeout is None:
        text = os.environ.get("D2LBN_SCHEDULER_WAIT", "")
        try:
            timeout = float(text) if text else SCHEDULER_WAIT
        except ValueError:
            timeout = -1.0
        if not (timeout >= 0 and math.isfinite(timeout)):
            raise SchedulerUnreachableError(f"D2LBN_SCHEDULER_WAIT must be a number of "
                                            f"seconds >= 0; got {text!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            remaining = max(0.2, min(1.0, deadline - time.monotonic()))
            socket.create_connection((host, port), timeout=remaining).close()
            return
        except socket.gaierror as err:
            raise SchedulerUnreachableError(
                f"--kvstore {kind}: the scheduler's host {host!r} (DMLC_PS_ROOT_URI) cannot be "
                f"resolved ({err.strerror or err})") from None
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise SchedulerUnreachableError(
        f"--kvstore {kind}: no scheduler answers at {host}:{port} (DMLC_PS_ROOT_URI:"
        f"DMLC_PS_ROOT_PORT) after {timeout:g} s ({reason}): the DMLC_* variables of a "
        f"parameter-server job are set, but no job's scheduler runs there. Start the workers "
        f"with python -m d2lbn launch -n 2 -- python -m d2lbn train --kvstore {kind} ..., or "
        f"unset the DMLC_* variables left in this shell (D2LBN_SCHEDULER_WAIT=SECONDS waits "
        f"longer)")


class KeyAllocator:
    """Integer kvstore keys for the batch-norm layers, handed out in order of first use.

    Every worker builds the same net and runs it in the same order, so the k-th layer to
    ask gets the same keys on every worker. Keys start at ``FIRST_KEY``, far above the
    Trainer's.
    """

    _next: Dict[int, int] = {}

    @classmethod
    def take(cls, kv: mx.kvstore.KVStore, count: int) -> List[int]:
        start = cls._next.get(id(kv), FIRST_KEY)
        cls._next[id(kv)] = start + count
        return list(range(start, start + count))


def all_reduce(kv: mx.kvstore.KVStore, key: int, value: nd.NDArray,
               out: Optional[nd.NDArray] = None) -> nd.NDArray:
    """The sum over all workers of ``value`` (any shape), through ``kv`` under ``key``
    (initialised with that shape and dtype). Returns ``out`` (a new array if None).

    Whether it blocks depends on MXNet's engine (read in MXNet 1.9.1's source). Under
    ``NaiveEngine``, which the launcher sets in every process unless the environment
    names another, so in every job of this book, it blocks: the engine waits for each
    operation's completion (``PushAsync`` ends in ``future.wait()``,
    ``src/engine/naive_engine.cc``), a push completes when the server answers it, and
    with ``dist_sync`` the server answers once every worker has pushed ``key``
    (``ApplyUpdates``, ``src/kvstore/kvstore_dist_server.h``); the pull then returns
    with the sum in ``out``. Under the default threaded engine the push and the pull
    are queued and the call returns at once; later operations on ``out`` wait for it."""
    out = (nd.empty(value.shape, ctx=value.context, dtype=value.dtype) if out is None
           else out)
    kv.push(key, value)
    kv.pull(key, out=out)
    return out


class KVStoreBatchNormTrain(Function):
    """Training-mode batch norm over the global batch of all workers:
    X, gamma, beta -> Y.

    ``forward``: each worker's per-channel count m_k, sum and sum of squares (in
    float64, so that E[x^2] - E[x]^2 keeps its digits) are summed over the workers
    through the kvstore (key ``keys[0]``, a (3, C) float64 array); every worker then
    normalises its slice with the global mean and biased variance (``self.mean``,
    ``self.var``).

    ``backward``: with M values per channel over all workers,
    x_hat = (x - mean) / sqrt(var + eps) and k = gamma / sqrt(var + eps),

        dX = k * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M)

    needs the two per-channel sums over the *global* batch: they are summed through
    the kvstore (key ``keys[1]``, a (2, C) array). The gradients of gamma and beta are
    this worker's sums, sum(dy * x_hat) and sum(dy): the Trainer sums them over workers.
    """

    def __init__(self, kv: mx.kvstore.KVStore, keys: Sequence[int], eps: float):
        super().__init__()
        self.kv, self.keys, self.eps = kv, list(keys), eps

    def forward(self, X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray) -> nd.NDArray:
        C, m = X.shape[1], X.size // X.shape[1]
        X64 = X.astype("float64")
        local = nd.stack(nd.full((C,), m, ctx=X.context, dtype="float64"),
                         channel_sum(X64), channel_sum(nd.square(X64)))
        total = all_reduce(self.kv, self.keys[0], local)         # (3, C): M, S1, S2
        # reading it earlier raced with the pull (one worker, 1.9.1)
        total.wait_to_read()
        mean64 = total[1] / total[0]
        var64 = nd.relu(total[2] / total[0] - nd.square(mean64))
        self.mean, self.var = mean64.astype("float32"), var64.astype("float32")
        self.count = total[0]                                     # (C,): M
        Xc = scale_shift(X, None, -self.mean)                     # X - mean
        inv_std = nd.rsqrt(self.var + self.eps)
        k = gamma * inv_std
        self.save_for_backward(Xc, inv_std, k)
        return scale_shift(Xc, k, beta)

    def backward(self, dY: nd.NDArray):
        Xc, inv_std, k = self.saved_tensors
        dbeta = channel_sum(dY)                                # this worker's sum(dy)
        dgamma = channel_sum(nd.elemwise_mul(dY, Xc)) * inv_std  # and sum(dy x_hat)
        sums = nd.stack(dbeta, dgamma)
        total = all_reduce(self.kv, self.keys[1], sums)        # (2, C): global sums
        inv_M = 1.0 / self.count.astype("float32")
        shift = -k * total[0] * inv_M                          # -k mean(dy)
        a = -k * inv_std * total[1] * inv_M                    # -k mean(dy x_hat) / std
        dX = scale_shift(dY, k, shift) + scale_shift(Xc, a)
        return dX, dgamma, dbeta


class KVStoreSyncBatchNorm(nn.Block):
    """Batch norm whose training-mode statistics are those of all workers' batches
    together.

    The cross-process counterpart of ``d2lbn.parallel.SyncBatchNorm``: ``forward`` takes
    this worker's X: (N, D) or (N, C, H, W), as ``d2lbn.norm.BatchNorm`` does, and
    communicates with the other workers through ``kvstore`` (default: this process's
    ``dist_sync`` store, created at the first forward pass; ``mx.kv.create('local')``
    gives a single-process layer, for testing). Parameters as ``BatchNorm``; the moving
    statistics are updated with the global batch's mean and biased variance, so they
    stay equal on every worker. Inference mode uses them and communicates nothing. Every
    worker must run its training-mode forward and backward passes in the same order
    (each is a barrier). After a training forward pass, ``batch_mean`` and ``batch_var``
    (C,) hold the statistics it normalised with.
    """

    def __init__(self, num_features: int, num_dims: int,
                 kvstore: Optional[mx.kvstore.KVStore] = None, eps: float = 1e-5,
                 momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        check_layer_args(num_features, num_dims, eps)
        check_momentum(momentum)
        if kvstore is not None and not isinstance(kvstore, mx.kvstore.KVStore):
            raise TypeError(f"kvstore must be an mxnet KVStore (mx.kv.create(...)) or "
                            f"None; got {type(kvstore).__name__}")
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum = float(eps), float(momentum)
        self._kv, self._keys = kvstore, None
        self.batch_mean = self.batch_var = None
        add_norm_params(self, num_features)

    def _kv_keys(self) -> Tuple[mx.kvstore.KVStore, List[int]]:
        if self._kv is None:
            self._kv = dist_kvstore()
        # every worker initialises the same keys in the same order
        if self._keys is None:
            self._keys = KeyAllocator.take(self._kv, 2)
            C = self.num_features
            self._kv.init(self._keys[0], nd.zeros((3, C), dtype="float64"))
            self._kv.init(self._keys[1], nd.zeros((2, C), dtype="float32"))
        return self._kv, self._keys

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        check_layer_input(self, X)
        ctx = X.context
        gamma, beta = self.gamma.data(ctx), self.beta.data(ctx)
        moving_mean, moving_var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        if not autograd.is_training():
            k = gamma * nd.rsqrt(moving_var + self.eps)
            return scale_shift(X, k, beta - moving_mean * k)
        kv, keys = self._kv_keys()
        fn = KVStoreBatchNormTrain(kv, keys, self.eps)
        Y = fn(X, gamma, beta)
        with autograd.pause():
            moving_average(moving_mean, fn.mean, self.momentum).copyto(moving_mean)
            moving_average(moving_var, fn.var, self.momentum).copyto(moving_var)
            self.batch_mean, self.batch_var = fn.mean, fn.var
        return Y

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_features={self.num_features}, "
                f"num_dims={self.num_dims}, eps={self.eps:g}, "
                f"momentum={self.momentum:g})")


def dist_lenet(norm: str = "local", kvstore: Optional[mx.kvstore.KVStore] = None,
               activation: str = "relu") -> gluon.Block:
    """LeNet-BN for one worker of a data-parallel job (the layout of
    ``d2lbn.models.lenet_bn``).

    norm: ``'local'`` (the default) -- ``d2lbn.norm.BatchNorm``, each worker normalising
    with its own batch's statistics (what ``gluon.nn.BatchNorm`` does across processes);
    ``'kvstore'`` -- :class:`KVStoreSyncBatchNorm`, the statistics of all workers'
    batches together.
    """
    from . import models
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    if norm == "local":
        return models.lenet_bn(activation)
    return models._build(lambda c, d: KVStoreSyncBatchNorm(c, d, kvstore), activation)


# ---- sharding ------------------------------------------------------------------------

def _check_positive(name: str, value) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value <= 0):
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def epoch_permutation(num_examples: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the training examples in ``epoch``: a permutation of
    0..num_examples-1 drawn from ``seed`` and ``epoch`` alone, so every worker computes
    the same one, and it changes per epoch."""
    _check_positive("num_examples", num_examples)
    return np.random.default_rng([int(seed) & 0xFFFFFFFF,
                                  int(epoch)]).permutation(num_examples)


def min_global_batch(num_workers: int, norm: str = "local") -> int:
    """The smallest global batch that training-mode batch norm accepts on ``num_workers``
    workers: with ``'local'`` statistics every worker's share needs 2 examples (the
    variance of one is 0), with ``'kvstore'`` every worker needs one and the whole batch
    2."""
    _check_positive("num_workers", num_workers)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    return max(2, num_workers * (2 if norm == "local" else 1))


def global_batches(num_examples: int, batch_size: int, epoch: int, seed: int,
                   num_workers: int = 1,
                   min_size: Optional[int] = None) -> List[np.ndarray]:
    """The epoch's global mini-batches: runs of ``batch_size`` indices of
    :func:`epoch_permutation`. The last may be smaller; if it has fewer than
    ``min_size`` examples (default ``num_workers``: each worker needs one) it joins
    the one before. Every index appears in exactly one batch."""
    _check_positive("batch_size", batch_size)
    _check_positive("num_workers", num_workers)
    min_size = num_workers if min_size is None else min_size
    _check_positive("min_size", min_size)
    floor = f"num_workers ({num_workers}) and min_size ({min_size})"
    if batch_size < max(num_workers, min_size):
        raise ValueError(f"batch_size ({batch_size}) is the global batch: it must be "
                         f"at least {floor}")
    if num_examples < max(num_workers, min_size):
        raise ValueError(f"num_examples ({num_examples}) must be at least {floor}")
    order = epoch_permutation(num_examples, epoch, seed)
    batches = [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_size:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def shard(batch: np.ndarray, rank: int, num_workers: int) -> np.ndarray:
    """Worker ``rank``'s part of a global batch: the rank-th of ``num_workers``
    consecutive parts whose sizes differ by at most one (concatenated in rank order,
    they are the batch)."""
    _check_positive("num_workers", num_workers)
    if (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
            or not 0 <= rank < num_workers):
        raise ValueError(f"rank must be an int in [0, {num_workers}); got {rank!r}")
    if len(batch) < num_workers:
        raise ValueError(f"a batch of {len(batch)} cannot give each of {num_workers} "
                         f"workers an example")
    return np.array_split(np.asarray(batch), num_workers)[rank]


# ---- training ------------------------------------------------------------------------

def dist_trainer(nets, kv: mx.kvstore.KVStore, lr: float, momentum: float = 0.0,
                 lr_schedule: Optional[str] = None,
                 num_steps: Optional[int] = None) -> gluon.Trainer:
    """SGD as ``d2lbn.training.make_trainer`` for the parameters of ``nets`` (a net or a
    list of nets), with gradients summed over the workers through ``kv`` and the update
    done on each worker (``update_on_kvstore=False``: with an optimizer on the servers,
    a pull would return updated "weights" instead of sums, also for the statistics)."""
    if (isinstance(lr, bool) or not isinstance(lr, (int, float))
            or not (lr > 0 and math.isfinite(lr))):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    if not isinstance(kv, mx.kvstore.KVStore):
        raise TypeError(f"kv must be an mxnet KVStore; got {type(kv).__name__}")
    params = {"learning_rate": lr}
    if momentum:
        params["momentum"] = momentum
    if lr_schedule == "cosine":
        if not num_steps:
            raise ValueError("lr_schedule='cosine' needs num_steps")
        params["lr_scheduler"] = mx.lr_scheduler.CosineScheduler(max_update=num_steps,
                                                                 base_lr=lr,
                                                                 final_lr=0.0)
    elif lr_schedule is not None:
        raise ValueError(f"lr_schedule must be None or 'cosine'; got {lr_schedule!r}")
    nets = [nets] if isinstance(nets, gluon.Block) else list(nets)
    parameters = []
    for net in nets:
        _plain_layout(net)
        parameters += list(net.collect_params().values())
    return gluon.Trainer(parameters, "sgd", params, kvstore=kv, update_on_kvstore=False)


def step(trainer: gluon.Trainer, batch_size: int) -> None:
    """``trainer.step(batch_size)`` after every pending computation has finished.

    Observed with MXNet 1.9.1's CPU build: without the wait, the workers' weights
    parted after a step (every run here; the last layer's weight differed). Waiting
    first avoids it. Why is not shown: that the push went out while the asynchronous
    backward pass was still writing the gradient is a hypothesis, not reproduced.
    """
    nd.waitall()
    trainer.step(batch_size)


def _plain_layout(net: gluon.Block) -> None:
    """Give every initialised parameter a freshly allocated array in the plain
    (row-major) layout.

    Observed with MXNet 1.9.1's CPU build: after an inference-mode forward pass, the
    Trainer's first step sometimes made the server abort ("init K first"); with
    freshly allocated plain arrays it did not. The suspected cause (oneDNN rewrote
    convolution weights in place into a blocked layout, and the other workers' first
    pull reached the server before the value did) is a hypothesis, not reproduced.
    """
    for p in net.collect_params().values():
        if p._data is not None:
            p.set_data(nd.array(p.data().asnumpy(), dtype=p.dtype))


def train_dist(norm: str, num_epochs: int, lr: float, batch_size: int, *,
               momentum: float = 0.0, lr_schedule: Optional[str] = None, seed: int = 0,
               train_limit: Optional[int] = None,
               test_limit: Optional[int] = None, activation: str = "relu",
               log: Callable[[str], None] = print, kind: str = "dist_sync",
               history=None):
    """Data-parallel training of LeNet-BN on Fashion-MNIST, run by every worker of a
    launched job.

    ``batch_size`` is the global batch: each step every worker takes its :func:`shard`
    of the same :func:`global_batches` (reshuffled per epoch with ``seed``), and the
    Trainer averages the gradients over the global batch. norm: ``'local'`` or
    ``'kvstore'`` (:func:`dist_lenet`). Only rank 0 evaluates (on its own copy: with
    ``'local'``, its own moving statistics) and logs. Returns the
    ``d2lbn.training.History`` on rank 0, None on the others; the training loss and
    accuracy in it are over all workers' examples, the throughput is global examples per
    second of training. ``history``: a ``History`` to append the epochs to (the CLI keeps
    it, to save the finished epochs when the job is interrupted); default a new one.
    """
    from .data import ArrayLoader, fashion_arrays
    from .repro import set_seed
    from .training import History, accuracy_count, evaluate_accuracy
    _check_positive("num_epochs", num_epochs)
    _check_positive("batch_size", batch_size)
    if (isinstance(lr, bool) or not isinstance(lr, (int, float))
            or not (lr > 0 and math.isfinite(lr))):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    if (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
            or not 0 <= momentum < 1):
        raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
    kv = dist_kvstore(kind)
    rank, num_workers = kv.rank, kv.num_workers
    ctx = mx.cpu()
    train_X, train_y, test_X, test_y = fashion_arrays(train_limit, test_limit)
    n = train_X.shape[0]
    smallest = min_global_batch(num_workers, norm)
    steps_per_epoch = len(global_batches(n, batch_size, 0, seed, num_workers, smallest))
    set_seed(seed)                            # the same initial weights on every worker
    net = dist_lenet(norm, kv, activation)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    trainer = dist_trainer(net, kv, lr, momentum, lr_schedule,
                           num_epochs * steps_per_epoch)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    # (loss sum, correct, examples) of all workers
    totals_key = KeyAllocator.take(kv, 1)[0]
    kv.init(totals_key, nd.zeros(3, dtype="float64"))
    say = log if rank == 0 else (lambda line: None)
    say(f"worker {rank} of {num_workers}: LeNet-BN ({norm} batch statistics), "
        f"global batch {batch_size} (about {batch_size // num_workers} per worker), "
        f"{n} training examples, {steps_per_epoch} steps per epoch")
    plural = "s" if num_workers != 1 else ""
    history = History() if history is None else history
    history.device = f"{num_workers} worker{plural} ({kind}, {norm} batch norm)"
    test_iter = ArrayLoader(test_X, test_y, 256)
    for epoch in range(1, num_epochs + 1):
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in global_batches(n, batch_size, epoch, seed, num_workers, smallest):
            idx = nd.array(shard(batch, rank, num_workers), ctx=ctx, dtype="int64")
            X, y = train_X.take(idx), train_y.take(idx)
            with autograd.record():
                scores = net(X)
                l = loss_fn(scores, y)
            l.backward()
            # gradients summed over all workers / global batch
            step(trainer, len(batch))
            loss_sum += float(l.sum().asscalar())
            correct += accuracy_count(scores, y)
            seen += X.shape[0]
        totals = all_reduce(kv, totals_key,
                            nd.array([loss_sum, correct, seen], dtype="float64"))
        loss_all, correct_all, seen_all = totals.asnumpy().tolist()
        train_seconds = time.perf_counter() - start
        if not math.isfinite(loss_all):
            raise FloatingPointError(f"the training loss became {loss_all} in epoch "
                                     f"{epoch} (lr={lr:g}); lower the learning rate")
        if rank == 0:
            test_acc = evaluate_accuracy(net, test_iter, ctx)
            history.append(loss_all / seen_all, correct_all / seen_all, test_acc,
                           seconds=time.perf_counter() - start,
                           examples_per_sec=seen_all / train_seconds)
            say(history.line(epoch))
    return history if rank == 0 else None


def _parameters(net: gluon.Block) -> List[np.ndarray]:
    return [p.data().asnumpy() for p in net.collect_params().values()]


def lockstep(X: nd.NDArray, y: nd.NDArray, batch_size: int, steps: int, lr: float = 0.1,
             norms: Sequence[str] = NORMS, seeds: Sequence[int] = (0,),
             kv: Optional[mx.kvstore.KVStore] = None) -> Dict[str, np.ndarray]:
    """``steps`` SGD steps of :func:`dist_lenet` on this worker, on fixed batches: step
    t trains on this worker's :func:`shard` of ``X[t*batch_size:(t+1)*batch_size]`` (so
    the workers together train on exactly those ``batch_size`` examples). X: (steps *
    batch_size, 1, 28, 28), y likewise.

    One net per norm in ``norms`` and seed in ``seeds`` (initialised with that seed),
    all trained by one Trainer (a kvstore serves one Trainer: a second would initialise
    the same keys again). Returns NumPy arrays named ``'{norm}/{seed}/...'``:
    ``initial_i`` and ``final_i``, the i-th parameter (``collect_params()`` order)
    before and after; ``bn_input``, this worker's input to the first batch-norm layer at
    step 1, (n_k, 6, 24, 24); ``bn_mean``, ``bn_var``, the statistics that layer
    normalised with at step 1 (its own slice's with ``'local'``); and ``rank``,
    ``num_workers``.
    """
    from .norm import BatchNorm
    from .repro import set_seed
    kv = dist_kvstore() if kv is None else kv
    rank, num_workers = kv.rank, kv.num_workers
    if X.shape[0] < steps * batch_size or y.shape[0] < steps * batch_size:
        raise ValueError(f"X and y need steps * batch_size = {steps * batch_size} "
                         f"rows; got {X.shape[0]}")
    mine = nd.array(shard(np.arange(batch_size), rank, num_workers), dtype="int64")
    parts = [X[t * batch_size:(t + 1) * batch_size].take(mine) for t in range(steps)]
    labels = [y[t * batch_size:(t + 1) * batch_size].take(mine) for t in range(steps)]
    nets: Dict[str, gluon.Block] = {}
    for seed in seeds:
        for norm in norms:
            net = dist_lenet(norm, kv)
            net.initialize(mx.init.Xavier())
            set_seed(seed)
            with autograd.predict_mode():
                net(parts[0])              # infer shapes, initialise (no communication)
            nets[f"{norm}/{seed}"] = net
    trainer = dist_trainer(list(nets.values()), kv, lr)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    out: Dict[str, np.ndarray] = {"rank": np.array(rank),
                                  "num_workers": np.array(num_workers)}
    for name, net in nets.items():
        out.update({f"{name}/initial_{i}": a for i, a in enumerate(_parameters(net))})
    bns = {name: next(b for b in net._children.values()
                      if isinstance(b, (BatchNorm, KVStoreSyncBatchNorm)))
           for name, net in nets.items()}
    captured: Dict[str, nd.NDArray] = {}
    hooks = [bn.register_forward_pre_hook(
                 lambda block, inputs, name=name:
                 captured.setdefault(name, inputs[0].copy()))
             for name, bn in bns.items()]

    for t in range(steps):
        for net in nets.values():
            with autograd.record():
                l = loss_fn(net(parts[t]), labels[t])
            l.backward()
        step(trainer, batch_size)
        if t == 0:
            for hook in hooks:
                hook.detach()
            for name, bn in bns.items():
                Z = captured[name].asnumpy().astype(np.float64)
                out[f"{name}/bn_input"] = Z
                if isinstance(bn, KVStoreSyncBatchNorm):
                    out[f"{name}/bn_mean"], out[f"{name}/bn_var"] = (
                        bn.batch_mean.asnumpy(), bn.batch_var.asnumpy())
                else:
                    out[f"{name}/bn_mean"], out[f"{name}/bn_var"] = (
                        Z.mean(axis=(0, 2, 3)), Z.var(axis=(0, 2, 3)))
    for name, net in nets.items():
        out.update({f"{name}/final_{i}": a for i, a in enumerate(_parameters(net))})
    return out


def lockstep_reference(initial: Sequence[np.ndarray], X: nd.NDArray, y: nd.NDArray,
                       batch_size: int, steps: int,
                       lr: float = 0.1) -> List[np.ndarray]:
    """The same ``steps`` SGD steps in one process on the whole batches
    (``d2lbn.models.lenet_bn``, starting from the parameters ``initial``, in
    ``collect_params()`` order); returns the final ones.

    The layers take the closed-form ``Function`` whatever the batch size (not the
    compiled graph the fast layer uses for small inputs): its backward pass is the one
    :class:`KVStoreBatchNormTrain` evaluates, so that a difference measures the
    synchronisation rather than two orders of rounding, which a few steps amplify."""
    from . import models
    from .graph_norm import graph_path
    net = models.lenet_bn()
    net.initialize()
    with autograd.predict_mode():
        net(X[:batch_size])
    params = list(net.collect_params().values())
    if [p.shape for p in params] != [a.shape for a in initial]:
        raise ValueError("initial does not match the layout of d2lbn.models.lenet_bn")
    for p, a in zip(params, initial):
        p.set_data(nd.array(a))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with graph_path(False):
        for t in range(steps):
            Xt, yt = (X[t * batch_size:(t + 1) * batch_size],
                      y[t * batch_size:(t + 1) * batch_size])
            with autograd.record():
                l = loss_fn(net(Xt), yt)
            l.backward()
            trainer.step(batch_size)
    return _parameters(net)


def _lockstep_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m d2lbn.distributed --out FILE [--norms local kvstore]
    [--seeds 0 1 2] ...``:
    run by every worker; runs :func:`lockstep` and writes its arrays to ``FILE`` with
    ``-rank{r}.npz`` appended."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m d2lbn.distributed")
    parser.add_argument("--out", required=True, help="path prefix of the results")
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--data", choices=["fashion", "random"], default="fashion")
    args = parser.parse_args(argv)
    X, y = lockstep_data(args.data, args.steps * args.batch_size)
    kv = dist_kvstore()
    result = lockstep(X, y, args.batch_size, args.steps, args.lr, args.norms,
                      args.seeds, kv)
    np.savez(f"{args.out}-rank{kv.rank}.npz", **result)
    print(f"rank {kv.rank}: {args.steps} steps of "
          f"{len(args.norms) * len(args.seeds)} nets done", flush=True)

    return 0


def lockstep_data(data: str, n: int) -> Tuple[nd.NDArray, nd.NDArray]:
    """The first ``n`` Fashion-MNIST training images and labels (``data='fashion'``) or
    ``n`` uniform random images with random labels (``'random'``, seeded); X:
    (n, 1, 28, 28), y: (n,)."""
    if data == "fashion":
        from .data import fashion_arrays
        X, y, _, _ = fashion_arrays(n, 1)
        return X, y
    if data == "random":
        rng = np.random.default_rng(0)
        return (nd.array(rng.random((n, 1, 28, 28)), dtype="float32"),
                nd.array(rng.integers(0, 10, n), dtype="float32"))
    raise ValueError(f"data must be 'fashion' or 'random'; got {data!r}")


if __name__ == "__main__":
    sys.exit(_lockstep_main())
