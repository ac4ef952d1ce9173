"""ch11's experiments: when the batch is the problem -- small and class-sorted batches,
ghost batches at a large batch, swapping batch norm for group norm, padded sequences, a
normaliser-free net, and the cost of ``gluon.nn.BatchNorm(axis=-1)``.

The nets are the LeNet of ``d2lbn.models`` with the normalization layer of :data:`KINDS`
after every conv/dense layer but the last, and a small 1-D conv net over padded
sequences (:class:`SeqNet`). Training (:func:`fit_batches`) is SGD with momentum and a
half-cosine learning rate on batches from any iterator, so that class-sorted batches
(:func:`class_sorted_batches`) and padded sequences (``(X, mask, y)``) go through the
same loop; accuracy is measured in inference mode.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, init, nd
from mxnet.gluon import nn
from mxnet.lr_scheduler import CosineScheduler

from . import models
from .alt_norm import (BatchRenorm, GhostBatchNorm, GroupNorm, MaskedBatchNorm,
                       adaptive_grad_clip)
from .checks import check_int, check_real
from .norm import BatchNorm
from .repro import set_seed

__all__ = ["KINDS", "norm_lenet", "renorm_schedule", "class_sorted_batches",
           "shuffled_batches", "FitResult", "fit_batches", "accuracy", "swap_norm",
           "row_sequences", "SeqNet",
           "SEQ_KINDS", "sequence_batches", "padding_statistics_gap", "axis_timing"]

#: The normalizations :func:`norm_lenet` builds.
KINDS = ("batch", "renorm", "group", "layer", "instance", "ghost", "none")

Batch = Tuple[nd.NDArray, ...]


# ---- the LeNets ----------------------------------------------------------------------

def renorm_schedule(total_steps: int) -> Dict[str, int]:
    """``BatchRenorm``'s schedule scaled to a run of ``total_steps``: batch norm for the
    first 5%, r_max reaching 3 after 40% and d_max reaching 5 after 25% of the run
    (Ioffe, 2017, section 4: 5k, 40k and 25k steps of a longer run)."""
    total_steps = check_int("total_steps", total_steps)
    hold = max(total_steps // 20, 1)
    return {"hold": hold, "r_steps": max(total_steps * 2 // 5 - hold, 1),
            "d_steps": max(total_steps // 4 - hold, 1)}


def norm_lenet(kind: str, num_groups: int = 2, virtual_batch_size: Optional[int] = None,
               total_steps: int = 1000) -> gluon.Block:
    """LeNet (``d2lbn.models``) with the normalization ``kind`` after each conv/dense
    layer but the last. X: (N, 1, 28, 28) -> (N, 10).

    ``'batch'``: ``d2lbn.norm.BatchNorm``; ``'renorm'``: :class:`BatchRenorm` with
    :func:`renorm_schedule(total_steps)`; ``'ghost'``: :class:`GhostBatchNorm` with
    ``virtual_batch_size`` (None: the whole batch); ``'group'`` (``num_groups`` groups),
    ``'layer'`` (one group), ``'instance'`` (one group per channel): :class:`GroupNorm`
    in the two conv layers and layer norm (one group) in the two dense layers, where a
    channel holds one value per example and instance norm is undefined; ``'none'``: no
    normalization.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if kind == "none":
        return models.lenet()
    schedule = renorm_schedule(total_steps)
    groups = {"group": num_groups, "layer": 1}

    def make(channels: int, num_dims: int) -> gluon.Block:
        if kind == "batch":
            return BatchNorm(channels, num_dims)
        if kind == "renorm":
            return BatchRenorm(channels, **schedule)
        if kind == "ghost":
            return GhostBatchNorm(channels, virtual_batch_size)
        if num_dims == 2:
            return GroupNorm(channels, 1)
        return GroupNorm(channels, channels if kind == "instance" else groups[kind])
    return models._build(make, "relu")


# ---- batches -------------------------------------------------------------------------

def shuffled_batches(X: nd.NDArray, y: nd.NDArray, batch_size: int) -> Iterator[Batch]:
    """I.i.d. batches ``(X_b, y_b)`` of a fresh permutation (NumPy's global generator);
    a last batch smaller than ``batch_size`` is dropped."""
    batch_size = check_int("batch_size", batch_size)
    order = np.random.permutation(X.shape[0])
    for b in range(X.shape[0] // batch_size):
        idx = nd.array(order[b * batch_size:(b + 1) * batch_size], ctx=X.context)
        yield X.take(idx), y.take(idx)


def class_sorted_batches(X: nd.NDArray, y: nd.NDArray, batch_size: int,
                         classes_per_batch: int = 1) -> Iterator[Batch]:
    """Non-i.i.d. batches: each batch holds ``classes_per_batch`` classes, ``batch_size
    / classes_per_batch`` examples of each (Ioffe, 2017, section 4.3, built the same way
    from 16 classes per batch of 32). The batches come in a random order (NumPy's global
    generator); examples left over are dropped."""
    batch_size = check_int("batch_size", batch_size)
    classes_per_batch = check_int("classes_per_batch", classes_per_batch)
    if batch_size % classes_per_batch:
        raise ValueError(f"classes_per_batch={classes_per_batch} must divide "
                         f"batch_size={batch_size}")
    per = batch_size // classes_per_batch
    labels = y.asnumpy().astype(int)
    chunks: Dict[int, List[np.ndarray]] = {}
    for c in np.unique(labels):
        idx = np.random.permutation(np.flatnonzero(labels == c))
        chunks[c] = [idx[i:i + per] for i in range(0, len(idx) - per + 1, per)]
    batches = []
    while sum(len(v) > 0 for v in chunks.values()) >= classes_per_batch:
        alive = [c for c, v in chunks.items() if v]
        sizes = np.array([len(chunks[c]) for c in alive], dtype=float)
        pick = np.random.choice(alive, classes_per_batch, replace=False,
                                p=sizes / sizes.sum())
        batches.append(np.concatenate([chunks[c].pop() for c in pick]))
    for b in np.random.permutation(len(batches)):
        idx = nd.array(batches[b], ctx=X.context)
        yield X.take(idx), y.take(idx)


# ---- training and evaluation ---------------------------------------------------------

@dataclass
class FitResult:
    """A run of :func:`fit_batches`: ``test_acc`` (inference mode) and mean training
    ``loss`` per epoch, ``clipped``: units AGC clipped, ``seconds``: wall time."""
    test_acc: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    clipped: int = 0
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]


def accuracy(net: gluon.Block, batches: Iterable[Batch]) -> float:
    """Inference-mode accuracy of ``net(*inputs)`` over batches ``(*inputs, y)``."""
    correct = total = 0
    for *inputs, y in batches:
        scores = net(*inputs)
        hits = scores.argmax(axis=1) == y.astype(scores.dtype)
        correct += int(hits.sum().asscalar())
        total += y.shape[0]
    return correct / total


def fit_batches(net: gluon.Block, batches: Callable[[], Iterable[Batch]],
                num_epochs: int, lr: float, test: Callable[[], Iterable[Batch]], *,
                seed: Optional[int] = 0, ctx: mx.Context = mx.cpu(),
                initialize: bool = True, momentum: float = 0.9,
                cosine: bool = True, agc: Optional[float] = None,
                steps_per_epoch: Optional[int] = None) -> FitResult:
    """Train ``net`` with SGD (momentum) and softmax cross-entropy on ``batches()``
    (called once per epoch; each batch ``(*inputs, y)``), testing on ``test()`` after
    every epoch.

    ``seed``: seed every generator first (None: don't); ``initialize``:
    Xavier-initialise (False to fine-tune); ``cosine``: half-cosine learning rate to 0
    over the run (needs ``steps_per_epoch``, counted from one pass of ``batches()`` if
    None); ``agc``: clip gradients with :func:`d2lbn.alt_norm.adaptive_grad_clip` at
    this ratio. A NaN or infinite loss raises ``FloatingPointError``.
    """
    num_epochs = check_int("num_epochs", num_epochs)
    lr = check_real("lr", lr, positive=True)
    if seed is not None:
        set_seed(seed)
    if initialize:
        net.initialize(init.Xavier(), ctx=ctx, force_reinit=True)
    params: Dict[str, object] = {"learning_rate": lr, "momentum": momentum}
    if cosine:
        if steps_per_epoch is None:
            steps_per_epoch = sum(1 for _ in batches())
        params["lr_scheduler"] = CosineScheduler(
            max_update=num_epochs * steps_per_epoch, base_lr=lr, final_lr=0.0)
    trainer = gluon.Trainer(net.collect_params(), "sgd", params)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    result, start = FitResult(), time.perf_counter()
    for epoch in range(num_epochs):
        total, count = 0.0, 0
        for *inputs, y in batches():
            with autograd.record():
                loss = loss_fn(net(*inputs), y)
            loss.backward()
            if agc is not None:
                result.clipped += adaptive_grad_clip(net.collect_params().values(), agc)
            trainer.step(y.shape[0])
            total += float(loss.sum().asscalar())
            count += y.shape[0]
            if not math.isfinite(total):
                raise FloatingPointError(f"the training loss became {total} at epoch "
                                         f"{epoch + 1} (lr={lr:g})")
        result.loss.append(total / count)
        result.test_acc.append(accuracy(net, test()))
    result.seconds = time.perf_counter() - start
    return result


def swap_norm(trained: gluon.Block, kind: str, **options) -> gluon.Block:
    """A :func:`norm_lenet(kind, **options)` with the weights of the trained batch-norm
    LeNet ``trained``: convolutions, dense layers, gamma and beta copied in order; the
    moving statistics are dropped (the new layers have none). The new net is initialised
    on ``trained``'s context."""
    new = norm_lenet(kind, **options)
    src = [p for p in trained.collect_params().values() if "moving" not in p.name]
    dst = [p for p in new.collect_params().values() if "moving" not in p.name]
    ctx = src[0].list_ctx()[0]
    new.initialize(ctx=ctx)
    with autograd.predict_mode():
        new(nd.zeros((2, 1, 28, 28), ctx=ctx))
    if [p.shape for p in src] != [p.shape for p in dst]:
        raise ValueError("the nets' weights do not match layer by layer")
    for a, b in zip(src, dst):
        b.set_data(a.data(ctx))
    return new


# ---- padded sequences ----------------------------------------------------------------

#: The normalizations :class:`SeqNet` builds: batch norm over every position (padding
#: included), batch norm over the valid positions, layer norm over the channels at each
#: position.
SEQ_KINDS = ("padded", "masked", "layer")


def row_sequences(X: nd.NDArray, min_length: int, max_length: int = 28
                  ) -> Tuple[nd.NDArray, nd.NDArray]:
    """Fashion-MNIST images X: (n, 1, 28, 28) as sequences of rows, each cut to a random
    length in [min_length, max_length] (NumPy's global generator) and zero-padded to 28:
    returns ``(S, mask)`` with S: (n, 28, 28) (channel = pixel column, position = image
    row) and mask: (n, 28)."""
    min_length = check_int("min_length", min_length)
    max_length = check_int("max_length", max_length)
    if not min_length <= max_length <= 28:
        raise ValueError(f"need 1 <= min_length <= max_length <= 28; got {min_length}, "
                         f"{max_length}")
    n = X.shape[0]
    lengths = np.random.randint(min_length, max_length + 1, size=n)
    mask = (np.arange(28)[None, :] < lengths[:, None]).astype(np.float32)
    mask_nd = nd.array(mask, ctx=X.context)
    S = X.reshape((n, 28, 28)).transpose((0, 2, 1)) * mask_nd.expand_dims(1)
    return S, mask_nd


def sequence_batches(S: nd.NDArray, mask: nd.NDArray, y: nd.NDArray, batch_size: int,
                     shuffle: bool = True, extra_padding: Sequence[int] = (0,)
                     ) -> Iterator[Batch]:
    """Batches ``(S_b, mask_b, y_b)``; shuffled ones drop a last short batch. Each batch
    is padded with a further ``p`` zero positions, ``p`` drawn from ``extra_padding``
    per batch (NumPy's global generator): a pipeline that pads to one of several bucket
    lengths."""
    n = S.shape[0]
    order = np.random.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if shuffle else n
    for i in range(0, stop, batch_size):
        idx = nd.array(order[i:i + batch_size], ctx=S.context)
        Sb, Mb = S.take(idx), mask.take(idx)
        pad = (int(np.random.choice(extra_padding)) if len(extra_padding) > 1
               else extra_padding[0])
        if pad:
            Sb = nd.concat(Sb, nd.zeros(Sb.shape[:2] + (pad,), ctx=Sb.context), dim=2)
            Mb = nd.concat(Mb, nd.zeros((Mb.shape[0], pad), ctx=Mb.context), dim=1)
        yield Sb, Mb, y.take(idx)


class SeqNet(nn.Block):
    """A 1-D conv net over padded sequences: ``forward(S, mask)`` with S: (N, 28, L),
    mask: (N, L) -> scores (N, 10). Two blocks Conv1D(channels, 3, padding 1) -> norm ->
    ReLU, each output zeroed at the padding, then the mean over the valid positions and
    a dense layer.

    ``kind``: ``'padded'`` -- :class:`MaskedBatchNorm` given an all-ones mask, so its
    statistics cover every position, padding included (ordinary batch norm of (N, C,
    L)); ``'masked'`` -- the same layer given the mask; ``'layer'`` --
    ``gluon.nn.LayerNorm(axis=1)``, each position normalised over its channels. Only the
    statistics differ between the three.
    """

    def __init__(self, kind: str, channels: int = 32, **kwargs):
        super().__init__(**kwargs)
        if kind not in SEQ_KINDS:
            raise ValueError(f"kind must be one of {SEQ_KINDS}; got {kind!r}")
        self.kind = kind
        with self.name_scope():
            self.convs = nn.Sequential()
            self.norms = nn.Sequential()
            for _ in range(2):
                self.convs.add(nn.Conv1D(channels, 3, padding=1))
                self.norms.add(nn.LayerNorm(axis=1) if kind == "layer"
                               else MaskedBatchNorm(channels))
            self.out = nn.Dense(10)

    def features(self, S: nd.NDArray, mask: nd.NDArray, depth: int = 2) -> nd.NDArray:
        """The activations after ``depth`` blocks (0: the input), zero at padding."""
        m = mask.expand_dims(1)
        H = S
        for conv, norm in list(zip(self.convs, self.norms))[:depth]:
            H = conv(H)
            if self.kind == "layer":
                H = norm(H)
            else:
                H = norm(H, mask if self.kind == "masked" else nd.ones_like(mask))
            H = nd.relu(H) * m
        return H

    def forward(self, S: nd.NDArray, mask: nd.NDArray) -> nd.NDArray:
        H = self.features(S, mask)
        pooled = H.sum(axis=2) / mask.sum(axis=1, keepdims=True)
        return self.out(pooled)


def padding_statistics_gap(net: SeqNet, S: nd.NDArray, lengths: Sequence[int]
                           ) -> Dict[int, Tuple[float, float]]:
    """How padding corrupts batch statistics: for each length L in ``lengths``, cut
    every sequence of S: (N, 28, 28) to L (zero-padded to 28), and compare the first
    conv layer's per-channel mean and biased variance over every position with those
    over the valid ones. Returns ``{L: (mean |mean_all - mean_valid| / std_valid, mean
    var_all / var_valid)}``."""
    out = {}
    conv = net.convs[0]
    for L in lengths:
        row = (np.arange(28) < L).astype(np.float32)
        mask = nd.array(np.tile(row, (S.shape[0], 1)), ctx=S.context)
        H = conv(S * mask.expand_dims(1)).asnumpy().astype(np.float64)   # (N, C, 28)
        valid = H[:, :, :L]
        m_all, v_all = H.mean(axis=(0, 2)), H.var(axis=(0, 2))
        m_val, v_val = valid.mean(axis=(0, 2)), valid.var(axis=(0, 2))
        out[L] = (float(np.mean(np.abs(m_all - m_val) / np.sqrt(v_val))),
                  float(np.mean(v_all / v_val)))
    return out


# ---- what axis=-1 costs --------------------------------------------------------------

class _ChannelFirst(gluon.Block):
    """Wrap a channel-first layer for channel-last input: transpose X: (N, ..., C) to
    (N, C, ...), apply ``layer``, transpose back."""

    def __init__(self, layer: gluon.Block, ndim: int, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.to_first = (0, ndim - 1) + tuple(range(1, ndim - 1))
        self.to_last = (0,) + tuple(range(2, ndim)) + (1,)

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        return self.layer(X.transpose(self.to_first)).transpose(self.to_last)


#: The three ways :func:`axis_timing` normalises the same values, in its result's order.
AXIS_WAYS = ("axis=-1", "transpose, axis=1, back", "axis=1, channel-first data")


def axis_timing(channels_first: Tuple[int, ...], rounds: int = 5, reps: int = 5,
                ctx: mx.Context = mx.cpu(), seed: int = 0
                ) -> Tuple[Dict[str, List[float]], float]:
    """Forward+backward milliseconds of batch norm over the channels of the same values,
    three ways (:data:`AXIS_WAYS`), timed in the same rounds
    (``d2lbn.timing.paired_rounds``):

    * ``"axis=-1"``: ``gluon.nn.BatchNorm(axis=-1)`` on channel-last data (N, ..., C);
    * ``"transpose, axis=1, back"``: the same channel-last data transposed to
      (N, C, ...), ``gluon.nn.BatchNorm(axis=1)``, transposed back (the alternative);
    * ``"axis=1, channel-first data"``: ``gluon.nn.BatchNorm(axis=1)`` on data already
      stored channel-first, of shape ``channels_first`` (N, C, ...).

    Returns ``({way: [ms per round]}, max |difference|)``, where the difference is the
    largest between any way's output or input gradient and the ``axis=1`` one's (laid
    out alike): float32 rounding."""
    from .timing import layer_step, paired_rounds
    if len(channels_first) < 3:
        raise ValueError(f"channels_first must be (N, C, ...) with at least one axis after "
                         f"C; got {channels_first}")
    set_seed(seed)
    X = nd.random.normal(2, 3, shape=channels_first, ctx=ctx)
    perm = (0,) + tuple(range(2, X.ndim)) + (1,)
    back = (0, X.ndim - 1) + tuple(range(1, X.ndim - 1))
    Xl = X.transpose(perm).copy()
    dY = nd.random.normal(shape=channels_first, ctx=ctx)
    dYl = dY.transpose(perm).copy()
    layers = {AXIS_WAYS[0]: nn.BatchNorm(axis=-1),
              AXIS_WAYS[1]: _ChannelFirst(nn.BatchNorm(axis=1), X.ndim),
              AXIS_WAYS[2]: nn.BatchNorm(axis=1)}
    inputs = {AXIS_WAYS[0]: (Xl, dYl), AXIS_WAYS[1]: (Xl, dYl), AXIS_WAYS[2]: (X, dY)}
    results = {}
    for way, layer in layers.items():
        layer.initialize(ctx=ctx)
        x, dy = inputs[way][0].copy(), inputs[way][1]
        x.attach_grad()
        with autograd.record():
            y = layer(x)
        y.backward(dy)
        if way != AXIS_WAYS[2]:            # lay channel-last results out channel-first
            y, dx = y.transpose(back), x.grad.transpose(back)
        else:
            dx = x.grad
        results[way] = (y, dx)
    ref_y, ref_dx = results[AXIS_WAYS[2]]
    diff = max(float(nd.abs(a - b).max().asscalar())
               for y, dx in results.values() for a, b in ((y, ref_y), (dx, ref_dx)))
    fns = {way: layer_step(layer, *inputs[way]) for way, layer in layers.items()}
    return paired_rounds(fns, rounds=rounds, reps=reps), diff
