"""Timing and profiling helpers (ch04, ch05, the fast-MXNet appendix, ``benchmarks/bench_norm.py``).

MXNet runs operators asynchronously: a Python call only *queues* work. Every timing here therefore
ends with ``nd.waitall()``, and competing implementations are timed *interleaved* (A, B, A, B, ...)
so that a busy machine slows them alike; results are medians over repetitions.
"""
from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import mxnet as mx
from mxnet import autograd, gluon, nd

__all__ = ["interleaved_ms", "paired_rounds", "layer_rounds", "layer_step", "Row", "format_table", "on_path", "compare_layers",
           "mxnet_range", "operator_profile", "kernel_ms", "KernelRow", "kernel_rows",
           "extra_kernel_ms", "format_kernel_table", "train_epoch_seconds", "training_step"]


def interleaved_ms(fns: Dict[str, Callable[[], object]], reps: int = 15, inner: int = 1,
                   warmup: int = 2) -> Dict[str, List[float]]:
    """Milliseconds per call of each function, measured ``reps`` times, interleaved.

    Each measurement runs a function ``inner`` times and then ``nd.waitall()``; returns, per name,
    the list of ``reps`` per-call times (take the median).
    """
    if reps < 1 or inner < 1:
        raise ValueError(f"reps and inner must be >= 1; got reps={reps}, inner={inner}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        nd.waitall()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            nd.waitall()
            times[name].append((time.perf_counter() - start) / inner * 1e3)
    return times


def paired_rounds(fns: Dict[str, Callable[[], object]], rounds: int = 5, reps: int = 5,
                  inner: int = 1, warmup: int = 2) -> Dict[str, List[float]]:
    """Median milliseconds per call of each function in each of ``rounds`` rounds.

    Every round times all of ``fns`` in one rotation (:func:`interleaved_ms`, ``reps``
    measurements each, ``warmup`` calls before the first round only). The i-th entries of the
    returned lists were measured in the same round, under the same load, so they pair: compare
    two candidates round by round (``d2lbn.seeds.compare_seeds(a, b, ...,
    higher_is_better=False)``, the rounds standing in for seeds), not by their ratios to a
    third function timed in other rotations.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    if not fns:
        raise ValueError("paired_rounds needs at least one function to time")
    medians: Dict[str, List[float]] = {name: [] for name in fns}
    for i in range(rounds):
        times = interleaved_ms(fns, reps=reps, inner=inner, warmup=warmup if i == 0 else 0)
        for name, t in times.items():
            medians[name].append(statistics.median(t))
    return medians


def layer_rounds(shape: Tuple[int, ...], impls: Sequence[str] = ("fast",), rounds: int = 5,
                 reps: int = 5, ctx: Optional[mx.Context] = None,
                 seed: int = 0) -> Dict[str, List[float]]:
    """Forward+backward time of ``gluon.nn.BatchNorm`` (``'mxnet'``) and of
    ``d2lbn.norm.BatchNorm(impl=name)`` for every name in ``impls``, all timed in ONE rotation
    on the same input and head gradient (:func:`paired_rounds`): per name, the median ms of
    each round. Unlike :func:`compare_layers`, where each implementation gets its own pairing
    with MXNet's layer (and so its own MXNet time), the candidates here share every round, so
    they can be compared with each other and their ratios to MXNet's layer share one
    denominator. ``'fast:graph'``/``'fast:function'`` force the fast layer's path
    (:func:`on_path`)."""
    if not impls:
        raise ValueError("layer_rounds needs at least one implementation in impls")
    fns = _layer_steps(tuple(shape), impls, ctx or mx.cpu(), seed)
    # as in compare_layers: keep each measurement >= ~20 ms of MXNet's step
    probe = interleaved_ms({"mxnet": fns["mxnet"]}, reps=3, inner=10)["mxnet"]
    inner = max(1, int(20.0 / max(statistics.median(probe), 1e-3)))
    return paired_rounds(fns, rounds=rounds, reps=reps, inner=inner)


def layer_step(layer: gluon.Block, X: nd.NDArray, dY: nd.NDArray) -> Callable[[], None]:
    """One training-mode forward and backward pass of ``layer`` on X with head gradient dY.

    X gets a gradient buffer, so the backward pass computes dX as it would inside a network.
    """
    X = X.copy()
    X.attach_grad()

    def step() -> None:
        with autograd.record():
            Y = layer(X)
        Y.backward(dY)
    return step


@dataclass
class Row:
    """One line of a timing table: ``ours_ms`` and ``mxnet_ms`` are medians; ``ratio`` = ours / MXNet.
    ``shape``: the input's shape, where the row times a layer on one input (:func:`compare_layers`)."""
    case: str
    ours_ms: float
    mxnet_ms: float
    shape: Optional[Tuple[int, ...]] = None

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.mxnet_ms


def format_table(rows: Sequence[Row], unit: str = "ms") -> str:
    """A plain-text table with columns case, ours, MXNet, ratio."""
    width = max([len("case")] + [len(r.case) for r in rows])
    lines = [f"{'case':<{width}}  {'ours ' + unit:>10}  {'MXNet ' + unit:>10}  {'ratio':>6}",
             f"{'-' * width}  {'-' * 10}  {'-' * 10}  {'-' * 6}"]
    for r in rows:
        lines.append(f"{r.case:<{width}}  {r.ours_ms:>10.2f}  {r.mxnet_ms:>10.2f}  {r.ratio:>5.2f}x")
    return "\n".join(lines)


def on_path(step: Callable[[], None], path: str) -> Callable[[], None]:
    """``step`` with the fast layer's training path forced: ``'graph'`` (the compiled graph of
    ``d2lbn.graph_norm``) or ``'function'`` (the closed-form ``Function`` of ``d2lbn.fast_norm``),
    whatever the size of the input; the size limit is restored after each call."""
    from .graph_norm import graph_path
    if path not in ("graph", "function"):
        raise ValueError(f"path must be 'graph' or 'function'; got {path!r}")

    def forced() -> None:
        with graph_path(path == "graph"):
            step()
    return forced


def _layer_steps(shape: Tuple[int, ...], impls: Sequence[str], ctx: mx.Context,
                 seed: int) -> Dict[str, Callable[[], None]]:
    """Training steps (:func:`layer_step`) on one seeded input X of ``shape`` and head gradient:
    ``'mxnet'`` for ``gluon.nn.BatchNorm``, and one per name in ``impls`` for
    ``d2lbn.norm.BatchNorm(impl=name)`` (``'fast:graph'``/``'fast:function'``: :func:`on_path`)."""
    from .norm import BatchNorm
    mx.random.seed(seed)
    C = shape[1]
    X = nd.random.normal(1.0, 2.0, shape=shape, ctx=ctx)
    dY = nd.random.normal(shape=shape, ctx=ctx)
    theirs = gluon.nn.BatchNorm(in_channels=C)
    theirs.initialize(ctx=ctx)
    steps = {"mxnet": layer_step(theirs, X, dY)}
    for impl in impls:
        name, _, path = impl.partition(":")
        ours = BatchNorm(C, len(shape), impl=name)
        ours.initialize(ctx=ctx)
        steps[impl] = layer_step(ours, X, dY) if not path else on_path(layer_step(ours, X, dY), path)
    return steps


def compare_layers(shapes: Iterable[Tuple[int, ...]], impls: Sequence[str] = ("fast",), reps: int = 15,
                   ctx: Optional[mx.Context] = None, seed: int = 0) -> List[Row]:
    """Forward+backward time of ``d2lbn.norm.BatchNorm(impl=...)`` against ``gluon.nn.BatchNorm``.

    For every shape (N, D) or (N, C, H, W) and every implementation name, one :class:`Row`: the
    layer and MXNet's, timed in turns (interleaved) on the same input and head gradient. Each
    implementation is paired with MXNet's layer on its own, so that a third layer's work does not
    disturb the pair's timing. The partner still moves MXNet's own time: on (256, 20, 24, 24) the
    book's appendix measured MXNet's layer at 44-59 ms alternating with the naive layer and 26-27 ms
    alternating with the fast paths, in one run (the naive layer's many large temporary arrays
    change what the memory allocator and the caches hold). Every row therefore carries its own
    MXNet time; :func:`mxnet_range` gives their spread over the rows of one shape. The names
    ``'fast:graph'`` and ``'fast:function'`` time the fast layer with its training path forced
    (:func:`on_path`).
    """
    ctx = ctx or mx.cpu()
    rows = []
    for shape in shapes:
        fns = _layer_steps(shape, impls, ctx, seed)
        # the per-call cost decides how many calls make one measurement (keep each >= ~20 ms: on a
        # loaded machine one call and its wait measure mostly the wake-up of MXNet's threads)
        probe = interleaved_ms({"mxnet": fns["mxnet"]}, reps=3, inner=10)["mxnet"]
        inner = max(1, int(20.0 / max(statistics.median(probe), 1e-3)))
        for impl in impls:
            times = interleaved_ms({"mxnet": fns["mxnet"], impl: fns[impl]}, reps=reps, inner=inner)
            rows.append(Row(f"{impl} layer fwd+bwd {shape}", statistics.median(times[impl]),
                            statistics.median(times["mxnet"]), tuple(shape)))
    return rows


def mxnet_range(rows: Iterable[Row], shape: Tuple[int, ...]) -> Tuple[float, float]:
    """The lowest and highest of MXNet's medians (``Row.mxnet_ms``) over the rows that time a
    layer on ``shape``: how much MXNet's own step on that input moved between pairings within a
    run (each :func:`compare_layers` row times MXNet's layer again, alternating with another
    layer). ``ValueError`` when no row has that shape."""
    times = [r.mxnet_ms for r in rows if r.shape == tuple(shape)]
    if not times:
        raise ValueError(f"no row times a layer on shape {tuple(shape)}")
    return min(times), max(times)


_PROFILE_LINE = re.compile(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def operator_profile(fn: Callable[[], object], reps: int = 5, top: int = 10
                     ) -> List[Tuple[str, int, float]]:
    """Run ``fn`` ``reps`` times under MXNet's profiler; return the ``top`` operators by total time.

    Each entry is ``(operator, calls per run, milliseconds per run)``, largest time first. Operators
    named ``_backward_X`` are the backward passes autograd runs for ``X``.
    """
    fn()
    nd.waitall()
    trace = os.path.join(tempfile.gettempdir(), f"d2lbn_profile_{os.getpid()}.json")
    mx.profiler.set_config(profile_imperative=True, aggregate_stats=True, filename=trace)
    mx.profiler.set_state("run")
    for _ in range(reps):
        fn()
    nd.waitall()
    mx.profiler.set_state("stop")
    text = mx.profiler.dumps(reset=True)
    section = text.split("operator\n", 1)[1] if "operator\n" in text else ""
    stats = []
    for line in section.splitlines():
        match = _PROFILE_LINE.match(line.strip())
        if match and match.group(1) not in ("DeleteVariable", "WaitForVar"):
            name, count, total = match.group(1), int(match.group(2)), float(match.group(3))
            stats.append((name, round(count / reps), total / reps))
    stats.sort(key=lambda s: -s[2])
    return stats[:top]


def kernel_ms(fn: Callable[[], object], reps: int = 5) -> float:
    """Milliseconds per call of ``fn`` that its operators spend computing, summed over every
    operator MXNet's profiler lists (:func:`operator_profile`): the time left if launching operators
    from Python cost nothing. (The profiler slows the kernels a little too; compare two such sums,
    not a sum with a wall-clock time.)"""
    return sum(ms for _, _, ms in operator_profile(fn, reps=reps, top=1_000_000))


@dataclass
class KernelRow:
    """One batch-norm input: wall-clock ms of a forward+backward step (medians) and kernel ms (MXNet's
    profiler, summed over operators), for the from-scratch layer (``ours``) and MXNet's."""
    shape: Tuple[int, ...]
    ours_ms: float
    mxnet_ms: float
    ours_kernel_ms: float
    mxnet_kernel_ms: float

    @property
    def kernel_ratio(self) -> float:
        return self.ours_kernel_ms / self.mxnet_kernel_ms


def kernel_rows(shapes: Iterable[Tuple[int, ...]], reps: int = 9, ctx: Optional[mx.Context] = None,
                seed: int = 0) -> List[KernelRow]:
    """Wall-clock and kernel time of ``d2lbn.norm.BatchNorm`` (default implementation) and
    ``gluon.nn.BatchNorm`` on each input shape, (N, D) or (N, C, H, W), training mode.

    Swapping MXNet's layer for ours in a network adds at least the difference of the kernel times,
    as long as ours costs no less to launch (one compiled graph and one more operator, called from
    Python, against one fused operator): :func:`extra_kernel_ms`.
    """
    from .norm import DEFAULT_IMPL
    ctx = ctx or mx.cpu()
    rows = []
    for shape in shapes:
        steps = _layer_steps(shape, (DEFAULT_IMPL,), ctx, seed)
        wall = {k: statistics.median(v) for k, v in interleaved_ms(steps, reps=reps, inner=5).items()}
        kernels = {k: kernel_ms(f, reps=10) for k, f in steps.items()}
        rows.append(KernelRow(tuple(shape), wall[DEFAULT_IMPL], wall["mxnet"], kernels[DEFAULT_IMPL],
                              kernels["mxnet"]))
    return rows


def extra_kernel_ms(rows: Sequence[KernelRow]) -> float:
    """The least time the from-scratch layers of ``rows`` add to a training step over MXNet's: the
    sum of their kernel-time differences (ms)."""
    return sum(r.ours_kernel_ms - r.mxnet_kernel_ms for r in rows)


def format_kernel_table(rows: Sequence[KernelRow]) -> str:
    """A plain-text table of :func:`kernel_rows`."""
    lines = [f"{'input':<18}{'ours ms':>9}{'MXNet ms':>10}{'ours krn':>10}{'MXNet krn':>11}"
             f"{'krn ratio':>11}", "-" * 69]
    for r in rows:
        lines.append(f"{str(r.shape):<18}{r.ours_ms:>9.2f}{r.mxnet_ms:>10.2f}{r.ours_kernel_ms:>10.2f}"
                     f"{r.mxnet_kernel_ms:>11.2f}{r.kernel_ratio:>10.2f}x")
    return "\n".join(lines)


def train_epoch_seconds(net: gluon.Block, train_iter, lr: float = 0.05, momentum: float = 0.9,
                        max_batches: Optional[int] = None, ctx: Optional[mx.Context] = None) -> float:
    """Wall-clock seconds of one training epoch (data loading, forward, backward, SGD step).

    ``net`` must be initialised on ``ctx``. The loss is read back every batch, as a training loop
    that reports it does, and the time ends after ``nd.waitall()``. ``max_batches`` cuts the epoch
    short (for quick runs).
    """
    from .training import make_trainer
    ctx = ctx or mx.cpu()
    trainer = make_trainer(net, lr, momentum)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    nd.waitall()
    start = time.perf_counter()
    for i, (X, y) in enumerate(train_iter):
        if max_batches is not None and i >= max_batches:
            break
        X, y = X.as_in_context(ctx), y.as_in_context(ctx)
        with autograd.record():
            l = loss(net(X), y)
        l.backward()
        trainer.step(X.shape[0])
        l.mean().asscalar()
    nd.waitall()
    return time.perf_counter() - start


def training_step(net: gluon.Block, X: nd.NDArray, y: nd.NDArray, lr: float = 0.05,
                  momentum: float = 0.9) -> Callable[[], None]:
    """One training step of ``net`` on the batch (X, y): forward pass, softmax cross-entropy
    loss, backward pass and an SGD step (``d2lbn.training.make_trainer``), as in
    :func:`train_epoch_seconds` but without the data loading. ``net`` must be initialised on
    X's device. Time the returned function with :func:`interleaved_ms` (which waits for it)."""
    from .training import make_trainer
    trainer = make_trainer(net, lr, momentum)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def step() -> None:
        with autograd.record():
            l = loss(net(X), y)
        l.backward()
        trainer.step(X.shape[0])
    return step
