"""Batch norm as one compiled MXNet graph: the fast path for small inputs (ch03, ch04, appendix).

On a small input, such as a (256, 128) batch of a dense layer, MXNet's time goes to
dispatching operators, not to arithmetic: every imperative operator costs tens of
microseconds before it touches a number, and the closed-form backward of
:class:`d2lbn.fast_norm.BatchNormTrain` runs as a Python callback on an engine thread,
which costs more than MXNet's whole fused layer. This module writes the training-mode
formula once as a *symbolic graph* and hands it to ``mx.nd.CachedOp``, the object
``HybridBlock.hybridize()`` builds: one call runs every operator of the forward pass,
with its memory allocated once (``static_alloc``), and autograd differentiates the
graph in C++, with no Python in the backward pass at all.

Three rules make the graph fast:

* **Sums are matrix products.** The per-channel sum is ``(1, ..., 1) @ X`` (the mean
  divides it by m); a 4-D X: (N, C, H, W) is first summed over W, then over H, by
  products with vectors of ones. The backward pass of ``dot`` is another ``dot`` (a
  BLAS call).

The backward pass autograd derives from the graph is arranged to cancel exactly where
the exact gradient is 0: :func:`batch_norm_graph` says how.
* **No broadcasting operator.** Its backward pass is a reduction that MXNet 1.9.1 runs
  slowly. A per-feature vector v meets an (N, D) batch as the outer product
  ``ones(N, 1) @ v``; a per-channel scale and shift meet an (N, C, H, W) batch as one
  depthwise 1x1 convolution (oneDNN's kernel), one pass over memory each way.
* **No full-size reshape.** A reshape inside a graph may copy its data; only
  per-channel-sized arrays are reshaped.

Shapes: X: (N, D) or (N, C, H, W); gamma, beta, moving_mean, moving_var: (D,) or (C,).
One graph is built (and cached) per shape, dtype, context, eps and momentum.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd, sym

__all__ = ["batch_norm_graph", "graph_train", "graph_path", "GRAPH_MAX_SIZE"]

#: Inputs with at most this many values take the graph in ``fast_batch_norm``'s training
#: mode; larger ones take the closed-form backward of ``d2lbn.fast_norm``. On the book's
#: 2-core CPU the graph was clearly faster on every input of LeNet's batch-norm layers up
#: to (256, 6, 24, 24) when the limit was set, and the closed form ahead on
#: (256, 20, 12, 12) and (256, 20, 24, 24). Since the closed form reuses its scratch
#: arrays and scales with BLAS, it has also been ahead on (128, 6, 24, 24) and
#: (256, 6, 24, 24) (12-22% less time than the graph in three runs on the first, 20% in
#: one on the second); the limit still sends every input of LeNet to the graph, whose
#: kernel time the profiler measures operator by operator (the floor of the appendix
#: "Making it fast in MXNet" rests on it; the profiler times the closed form's backward
#: callback only as a whole, Python included).
#: ``benchmarks/bench_norm.py`` times both paths on every run.
GRAPH_MAX_SIZE = 1_000_000


@contextmanager
def graph_path(enabled: bool) -> Iterator[None]:
    """Within the block, the fast layer's training takes the compiled graph for every input
    (``enabled``) or never (the closed-form ``Function`` of ``d2lbn.fast_norm``), whatever its
    size; the size limit is restored on exit."""
    global GRAPH_MAX_SIZE
    saved, GRAPH_MAX_SIZE = GRAPH_MAX_SIZE, (2 ** 62 if enabled else 0)
    try:
        yield
    finally:
        GRAPH_MAX_SIZE = saved


def _spread(v: sym.Symbol, ones_n: sym.Symbol) -> sym.Symbol:
    """A (1, D) vector repeated on every row of an (N, D) batch: the outer product
    ones(N, 1) @ v."""
    return sym.dot(ones_n, v)


def _affine(X: sym.Symbol, scale: Optional[sym.Symbol], shift: sym.Symbol,
            ones_n: sym.Symbol, shape: Tuple[int, ...], dtype: str) -> sym.Symbol:
    """``scale[c] * X[:, c] + shift[c]`` for every feature or channel c; scale, shift:
    (1, C), scale None for 1. (N, D): products with the spread rows. (N, C, H, W): one
    depthwise 1x1 convolution (one C-channel filter of size 1 per channel, shift as its
    bias), one pass over memory each way, where spreading the vectors over H and W would
    write two full-size arrays."""
    if len(shape) == 2:
        scaled = X if scale is None else X * _spread(scale, ones_n)
        return scaled + _spread(shift, ones_n)
    C = shape[1]
    if scale is None:
        scale = sym.ones((1, C), dtype=dtype)
    return sym.Convolution(X, weight=scale.reshape((C, 1, 1, 1)),
                           bias=shift.reshape((C,)), kernel=(1, 1), num_filter=C,
                           num_group=C)


def _channel_sum(A: sym.Symbol, ones_row: sym.Symbol, shape: Tuple[int, ...],
                 dtype: str) -> sym.Symbol:
    """Per-channel sum of A: ``shape`` as a (1, C) row: sum over W, then over H, with
    products by ones, then (1, ..., 1) @ (N, C). Sums, not means: a mean is the sum
    divided by m afterwards (on C values), so that m equal values have exactly their
    value as mean when their sum is exact (0 and 1 always are)."""
    if len(shape) == 4:
        N, C, H, W = shape
        A = sym.dot(sym.dot(A, sym.ones((W,), dtype=dtype)),
                    sym.ones((H,), dtype=dtype))                          # (N, C)
    return sym.dot(ones_row, A)                                          # (1, C)


def batch_norm_graph(shape: Tuple[int, ...], eps: float, momentum: float,
                     for_layer: bool = False, dtype: str = "float32") -> sym.Symbol:
    """The training-mode batch norm of ``d2lbn.norm.batch_norm`` as a graph.

    Inputs (by name): ``X`` of ``shape``, (N, D) or (N, C, H, W); ``gamma``, ``beta``,
    ``moving_mean``, ``moving_var``: (C,); the constants ``ones_row``: (1, N) and
    ``ones_n``: (N, 1), filled with ones (m = N or N*H*W values per channel).
    Outputs: Y (shape of X), the new moving mean and moving variance (C,), the
    variance biased as in the formula. ``for_layer``: the graph ``d2lbn.norm.BatchNorm``
    runs, where a channel whose new statistics are not finite keeps its old ones and
    the two come out stacked, (2, C), for one operator to write them back.
    ``dtype``: X's dtype (the constants made inside the graph take it).

    The graph is written so that autograd's backward pass cancels at the scale of dY.
    With k = gamma / std the data gradient is ``k * (dY - mean(dY)) + (var term)``;
    differentiating ``k * (X - mean(X))`` as written would instead subtract
    ``mean(k * dY)`` from ``k * dY``, terms of about 316 each for a channel of
    variance 0 (k = 1 / sqrt(eps)), and their rounding is what is left: a constant
    (dead or padded) channel would leak a gradient where the exact one is 0. So Y
    takes X's centring as a constant, ``k * (X - stop(mean)) + beta``, and the mean's
    gradient comes through a term whose value is exactly 0,
    ``R - stop(R)`` with ``R = stop(k) * sum(X) / m``: its backward pass divides the
    column sums of dY by m *before* multiplying by k, giving ``-k * mean(dY)``, exactly
    ``-k`` when dY is 1 throughout. Mathematically the graph is the formula of
    ``d2lbn.norm.batch_norm``; the variance's gradient takes the same shortcut (the
    mean's term there is ``-2 * mean(X - mean)`` times it, 0).
    """
    X, gamma, beta = sym.var("X"), sym.var("gamma"), sym.var("beta")
    moving_mean, moving_var = sym.var("moving_mean"), sym.var("moving_var")
    ones_row, ones_n = sym.var("ones_row"), sym.var("ones_n")
    m = float(shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1))

    total = _channel_sum(X, ones_row, shape, dtype)                      # (1, C)
    mean = total / m
    X_centred = _affine(X, None, -sym.BlockGrad(mean), ones_n, shape, dtype)
    var = _channel_sum(sym.square(X_centred), ones_row, shape, dtype) / m
    scale = gamma.reshape((1, -1)) * sym.rsqrt(var + eps)                # gamma / std
    R = (sym.BlockGrad(scale) * total) / m                               # k * mean
    shift = beta.reshape((1, -1)) - (R - sym.BlockGrad(R))               # beta; 0 added
    Y = _affine(X_centred, scale, shift, ones_n, shape, dtype)

    new_mean = momentum * moving_mean + (1.0 - momentum) * mean.reshape((-1,))
    new_var = momentum * moving_var + (1.0 - momentum) * var.reshape((-1,))
    if not for_layer:
        return sym.Group([Y, sym.BlockGrad(new_mean), sym.BlockGrad(new_var)])
    both = new_mean + new_var
    finite = (both == both) * (sym.abs(both) != float("inf"))
    new_stats = sym.stack(sym.where(finite, new_mean, moving_mean),
                          sym.where(finite, new_var, moving_var))
    return sym.Group([Y, sym.BlockGrad(new_stats)])


class _Compiled:
    """One compiled graph with its argument order and constant inputs."""

    def __init__(self, shape: Tuple[int, ...], dtype, ctx: mx.Context, eps: float,
                 momentum: float, for_layer: bool):
        graph = batch_norm_graph(shape, eps, momentum, for_layer,
                                 np.dtype(dtype).name)
        self.op = nd.CachedOp(graph, flags=[("static_alloc", True),
                                            ("static_shape", True)])
        self.names: List[str] = graph.list_arguments()
        N = shape[0]
        self.constants: Dict[str, nd.NDArray] = {
            "ones_row": nd.ones((1, N), ctx=ctx, dtype=dtype),
            "ones_n": nd.ones((N, 1), ctx=ctx, dtype=dtype)}


_COMPILED: "OrderedDict[tuple, _Compiled]" = OrderedDict()
_MAX_COMPILED = 64


def _compiled(shape: Tuple[int, ...], dtype, ctx: mx.Context, eps: float,
              momentum: float, for_layer: bool) -> _Compiled:
    key = (shape, dtype, ctx, eps, momentum, for_layer)
    entry = _COMPILED.get(key)
    if entry is None:
        entry = _Compiled(shape, dtype, ctx, eps, momentum, for_layer)
        _COMPILED[key] = entry
        if len(_COMPILED) > _MAX_COMPILED:        # the least recently built goes
            _COMPILED.popitem(last=False)
    return entry


def graph_train(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                moving_mean: nd.NDArray, moving_var: nd.NDArray, eps: float,
                momentum: float, shape: Tuple[int, ...], update: bool = False
                ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Training-mode batch norm through the cached graph: ``(Y, new_moving_mean,
    new_moving_var)``: Y differentiable by autograd with respect to X, gamma and beta,
    the moving statistics detached from the graph. With ``update`` (what
    ``d2lbn.norm.BatchNorm`` does) the new statistics are written into ``moving_mean``
    and ``moving_var`` (a channel whose new ones are not finite keeps its old ones), and
    those two arrays are returned.

    X: ``shape`` = X.shape, (N, D) or (N, C, H, W) (passed in so that the caller's
    checks and this call read it once); the vectors (C,) on X's context with X's dtype.
    The arguments are not checked here: ``d2lbn.fast_norm.fast_batch_norm`` and
    ``d2lbn.norm.BatchNorm`` check them first.
    """
    entry = _compiled(shape, X.dtype, X.context, eps, momentum, update)
    feed = {"X": X, "gamma": gamma, "beta": beta, "moving_mean": moving_mean,
            "moving_var": moving_var}
    feed.update(entry.constants)
    outputs = entry.op(*[feed[name] for name in entry.names])
    if not update:
        Y, new_mean, new_var = outputs
        return Y, new_mean.detach(), new_var.detach()      # no autograd history
    Y, new_stats = outputs
    with autograd.pause():                                 # one operator, two writes
        nd.split(new_stats, axis=0, num_outputs=2, squeeze_axis=True,
                 out=[moving_mean, moving_var])
    return Y, moving_mean, moving_var
