"""ch12: shrinking a batch-normed net for deployment: folding a sequential net, fake quantization,
channel pruning by gamma (Network Slimming), and gradient checkpointing's statistics.

* :func:`fold_sequential`: a ``HybridSequential`` (LeNet with ``gluon.nn.BatchNorm``) with every
  batch-norm layer folded into the ``Conv2D``/``Dense`` before it (``d2lbn.fold``, ch02).
* :func:`fake_quantize`: symmetric uniform quantization to ``bits`` bits and back, per tensor or
  per output channel; :func:`quantize_weights` applies it to every weight of a folded net;
  :func:`channel_ranges` measures what per-tensor quantization suffers from.
* :func:`slimming_masks`, :func:`prune_sequential`, :func:`add_gamma_l1_grad`: Network Slimming
  (Liu et al., 2017): an L1 penalty on gamma, then drop the channels with the smallest ``|gamma|``.
* :func:`checkpointed_step`: one gradient step with gradient checkpointing over segments of a
  sequential net, with or without the fix for the moving statistics' double update.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import List, Optional, Sequence

import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from .checks import check_int, check_real
from .fold import fold_layer_and_batch_norm
from .moving_stats import batch_norm_layers, frozen_moving_statistics, is_batch_norm

__all__ = ["check_bits", "fake_quantize", "channel_ranges", "fold_sequential",
           "quantize_weights", "affine_layers", "slimming_masks", "prune_sequential",
           "add_gamma_l1_grad", "checkpointed_step", "split_sequential",
           "fake_quantize_ste", "QATFolded", "qat_lenet", "freeze_qat_statistics",
           "bn_leaky_relu"]

AFFINE = (nn.Conv2D, nn.Dense)


# ---- fake quantization ---------------------------------------------------------------------------

def check_bits(bits) -> int:
    """bits: an int in [2, 16] (2 bits is the fewest a symmetric grid -1, 0, 1 needs; beyond 16 a
    float32 weight barely changes)."""
    bits = check_int("bits", bits, minimum=None, what="an int in [2, 16]")
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16]; got {bits}")
    return bits


def fake_quantize(W, bits: int = 8, per_channel: bool = False) -> np.ndarray:
    """Quantize ``W`` to ``bits``-bit signed integers and back (symmetric, round to
    nearest).

    W: (C_out, ...) weights, output channels first (NDArray or array-like). The scale
    is ``max|W| / (2**(bits-1) - 1)``, over the whole tensor (``per_channel=False``) or
    over each output channel ``W[c]``; values become ``scale * clip(round(W / scale),
    -q, q)`` with ``q = 2**(bits-1) - 1``. A channel that is all zeros stays zero.
    Returns a float array of W's dtype (float32 for an NDArray), same shape."""
    bits = check_bits(bits)
    W = W.asnumpy() if isinstance(W, nd.NDArray) else np.asarray(W)
    if W.dtype.kind != "f":
        raise TypeError(f"W must hold floats; got dtype {W.dtype}")
    if W.ndim < 1 or W.size == 0:
        raise ValueError("W must be a non-empty array, output channels first; "
                         f"got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("W holds NaN or infinite values; they cannot be quantized")
    q = 2 ** (bits - 1) - 1
    if per_channel:
        peak = np.abs(W).reshape(W.shape[0], -1).max(axis=1)
        peak = peak.reshape((-1,) + (1,) * (W.ndim - 1))
    else:
        peak = np.abs(W).max()
    scale = np.where(peak > 0, peak / q, 1.0).astype(W.dtype)
    return (scale * np.clip(np.round(W / scale), -q, q)).astype(W.dtype)


def channel_ranges(W) -> np.ndarray:
    """``max|W[c]|`` for every output channel c of W: (C_out, ...) -> (C_out,) float64."""
    W = W.asnumpy() if isinstance(W, nd.NDArray) else np.asarray(W)
    return np.abs(W.astype(np.float64)).reshape(W.shape[0], -1).max(axis=1)


# ---- rebuilding sequential nets: fold, quantize, prune ----------------------------------------------

def _children(net) -> list:
    if not isinstance(net, nn.HybridSequential):
        raise TypeError(f"net must be a gluon HybridSequential (such as "
                        f"d2lbn.models.lenet_bn_gluon()); got {type(net).__name__}")
    children = list(net._children.values())
    for child in children:
        if isinstance(child, AFFINE) and child.weight._data is None:
            raise ValueError(f"{net.name} has uninitialised weights: initialise it and run "
                                 "it once on a batch first")
    return children


def _is_parameter_free(block) -> bool:
    return len(list(block.collect_params().keys())) == 0


def _affine_like(layer, weight: np.ndarray, bias: Optional[np.ndarray], ctx) -> gluon.Block:
    """A new Conv2D/Dense with ``layer``'s configuration and the given weight and bias."""
    act = layer.act._act_type if getattr(layer, "act", None) is not None else None
    use_bias = bias is not None
    if isinstance(layer, nn.Conv2D):
        kw = layer._kwargs
        if kw["num_group"] != 1:
            raise ValueError(f"{layer.name}: grouped convolutions are not supported")
        new = nn.Conv2D(weight.shape[0], kw["kernel"], strides=kw["stride"], padding=kw["pad"],
                        dilation=kw["dilate"], in_channels=weight.shape[1], use_bias=use_bias,
                        activation=act)
    else:
        new = nn.Dense(weight.shape[0], in_units=weight.shape[1], flatten=layer._flatten,
                       use_bias=use_bias, activation=act)
    new.initialize(ctx=ctx)
    new.weight.set_data(nd.array(weight, ctx=ctx, dtype="float32"))
    if use_bias:
        new.bias.set_data(nd.array(bias, ctx=ctx, dtype="float32"))
    return new


def _np(param) -> Optional[np.ndarray]:
    return None if param is None else param.data().asnumpy()


def fold_sequential(net: nn.HybridSequential) -> nn.HybridSequential:
    """A new ``HybridSequential`` computing ``net``'s inference output with every
    ``gluon.nn.BatchNorm`` folded into the ``Conv2D`` or ``Dense`` right before it
    (``d2lbn.fold.fold_layer_and_batch_norm``); parameter-free blocks are shared, other
    layers copied. A batch-norm layer without such a layer before it cannot be folded
    (``ValueError``). The new net is initialised on net's context and not hybridized."""
    children = _children(net)
    out = nn.HybridSequential()
    i = 0
    while i < len(children):
        child = children[i]
        ctx = child.weight.list_ctx()[0] if isinstance(child, AFFINE) else None
        nxt = children[i + 1] if i + 1 < len(children) else None
        if isinstance(child, AFFINE) and nxt is not None and is_batch_norm(nxt):
            weight, bias = fold_layer_and_batch_norm(child, nxt)
            out.add(_affine_like(child, weight.asnumpy(), bias.asnumpy(), ctx))
            i += 2
            continue
        if is_batch_norm(child):
            raise ValueError(f"{child.name} does not follow a Conv2D or Dense layer "
                             "directly; it cannot be folded")
        if isinstance(child, AFFINE):
            out.add(_affine_like(child, _np(child.weight), _np(child.bias), ctx))
        elif _is_parameter_free(child):
            out.add(child)
        else:
            raise TypeError(f"cannot copy {type(child).__name__} {child.name}")
        i += 1
    return out


def affine_layers(net: gluon.Block) -> List[gluon.Block]:
    """Every ``Conv2D`` and ``Dense`` layer of a sequential ``net``, in order."""
    return [c for c in _children(net) if isinstance(c, AFFINE)]


def quantize_weights(net: nn.HybridSequential, bits: int = 8, per_channel: bool = False,
                     keep_batch_norm: bool = False) -> nn.HybridSequential:
    """A copy of a folded sequential ``net`` whose Conv2D/Dense weights are fake-quantized
    (:func:`fake_quantize`); biases stay float (int8 kernels keep them in 32 bits). The copy's
    activations are float: this simulates weight quantization only. Refuses a net that still has
    batch-norm layers (fold it first, :func:`fold_sequential`), unless ``keep_batch_norm``: then
    they are copied and stay float (the ablation: the same weights quantized without folding)."""
    bits = check_bits(bits)
    children = _children(net)
    if not keep_batch_norm and any(is_batch_norm(c) for c in children):
        raise ValueError("net still has batch-norm layers: fold them first "
                         "(d2lbn.compress.fold_sequential), then quantize the folded weights")
    out = nn.HybridSequential()
    for child in children:
        if isinstance(child, AFFINE):
            ctx = child.weight.list_ctx()[0]
            out.add(_affine_like(child, fake_quantize(_np(child.weight), bits, per_channel),
                                 _np(child.bias), ctx))
        elif is_batch_norm(child):
            out.add(_bn_like(child, np.ones(child.gamma.shape, dtype=bool),
                             child.gamma.list_ctx()[0]))
        elif _is_parameter_free(child):
            out.add(child)
        else:
            raise TypeError(f"cannot copy {type(child).__name__} {child.name}")
    return out


# ---- Network Slimming ----------------------------------------------------------------------------

def _check_ratio(ratio) -> float:
    ratio = check_real("ratio", ratio, what="a number in (0, 1)")
    if not 0 < ratio < 1:
        raise ValueError(f"ratio (the fraction of channels to prune) must be in (0, 1); got {ratio}")
    return ratio


def slimming_masks(net: gluon.Block, ratio: float) -> List[np.ndarray]:
    """Which channels to keep, one bool array (C,) per batch-norm layer of ``net`` (in
    ``d2lbn.moving_stats.batch_norm_layers`` order).

    One global threshold over all layers, as in Liu et al. (2017): the ``floor(ratio *
    n)`` channels with the smallest ``|gamma|`` of all ``n`` are pruned (ties: earlier
    layers and channels first). A layer that would lose every channel keeps its
    largest-``|gamma|`` one."""
    ratio = _check_ratio(ratio)
    layers = batch_norm_layers(net)
    if not layers:
        name = getattr(net, "name", net)
        raise ValueError(f"{name} has no batch-norm layer: Network Slimming prunes by "
                         "the batch-norm gammas, so there is nothing to prune by")
    gammas = [np.abs(layer.gamma.data().asnumpy().astype(np.float64))
              for layer in layers]
    flat = np.concatenate(gammas)
    pruned = np.argsort(flat, kind="stable")[:int(np.floor(ratio * flat.size))]
    keep = np.ones(flat.size, dtype=bool)
    keep[pruned] = False
    masks, start = [], 0
    for g in gammas:
        mask = keep[start:start + g.size].copy()
        if not mask.any():
            mask[int(np.argmax(g))] = True
        masks.append(mask)
        start += g.size
    return masks


def _bn_like(bn, mask: np.ndarray, ctx) -> nn.BatchNorm:
    kw = bn._kwargs
    new = nn.BatchNorm(momentum=kw["momentum"], epsilon=kw["eps"],
                       scale=not kw.get("fix_gamma", False), in_channels=int(mask.sum()))
    new.initialize(ctx=ctx)
    for name in ("gamma", "beta", "running_mean", "running_var"):
        value = getattr(bn, name).data().asnumpy()[mask]
        getattr(new, name).set_data(nd.array(value, ctx=ctx))
    return new


def prune_sequential(net: nn.HybridSequential, masks: Sequence[np.ndarray]) -> nn.HybridSequential:
    """A smaller copy of a sequential ``net`` (Conv2D/Dense, each followed by a
    ``gluon.nn.BatchNorm``, with parameter-free blocks between) keeping only the channels
    ``masks`` (one bool array per batch-norm layer) keep: the layer's output channels, its batch
    norm's, and the matching inputs of the next Conv2D/Dense (for a Dense after a Conv2D, every
    flattened position of a kept channel). Its output equals ``net``'s in inference mode when the
    pruned channels' gamma and beta are 0."""
    children = _children(net)
    bns = [c for c in children if is_batch_norm(c)]
    if not bns:
        raise ValueError("net has no batch-norm layer: nothing to prune by")
    if len(masks) != len(bns):
        raise ValueError(f"masks must hold one array per batch-norm layer ({len(bns)}); "
                         f"got {len(masks)}")
    masks = [np.asarray(m, dtype=bool) for m in masks]
    for bn, m in zip(bns, masks):
        if m.shape != bn.gamma.shape:
            raise ValueError(f"mask for {bn.name} must have shape {bn.gamma.shape}; got {m.shape}")
        if not m.any():
            raise ValueError(f"mask for {bn.name} keeps no channel")
    out, in_mask, k = nn.HybridSequential(), None, 0
    for i, child in enumerate(children):
        if isinstance(child, AFFINE):
            ctx = child.weight.list_ctx()[0]
            W, b = _np(child.weight), _np(child.bias)
            if in_mask is not None:
                full = np.repeat(in_mask, W.shape[1] // in_mask.size)
                W = W[:, full]
            nxt = children[i + 1] if i + 1 < len(children) else None
            out_mask = masks[k] if nxt is not None and is_batch_norm(nxt) else None
            if out_mask is not None:
                W, b = W[out_mask], (None if b is None else b[out_mask])
            out.add(_affine_like(child, W, b, ctx))
            in_mask = out_mask
        elif is_batch_norm(child):
            out.add(_bn_like(child, masks[k], child.gamma.list_ctx()[0]))
            k += 1
        elif _is_parameter_free(child):
            out.add(child)
        else:
            raise TypeError(f"cannot copy {type(child).__name__} {child.name}")
    return out


def add_gamma_l1_grad(net: gluon.Block, strength: float, batch_size: int) -> None:
    """Add the subgradient of ``strength * sum |gamma|`` (over every batch-norm layer) to the
    gammas' gradients, after ``backward()`` and before ``trainer.step(batch_size)``. The Trainer
    divides gradients by ``batch_size``, so ``strength * batch_size * sign(gamma)`` is added: the
    penalty is per example, added to the mean loss, as in Liu et al. (2017)."""
    strength = check_real("strength", strength, what="a number >= 0")
    if strength < 0:
        raise ValueError(f"strength must be >= 0; got {strength}")
    batch_size = check_int("batch_size", batch_size)
    layers = batch_norm_layers(net)
    if not layers:
        raise ValueError("net has no batch-norm layer: there is no gamma to penalise")
    for layer in layers:
        for g, grad in zip(layer.gamma.list_data(), layer.gamma.list_grad()):
            grad[:] += strength * batch_size * nd.sign(g)


# ---- gradient checkpointing ----------------------------------------------------------------------

def checkpointed_step(segments: Sequence[gluon.Block], X: nd.NDArray, y: nd.NDArray,
                      loss_fn, fix: bool = False) -> float:
    """Gradients of ``loss_fn(segments[-1](...segments[0](X)), y).sum()`` by gradient
    checkpointing; returns that loss. Parameters' ``.grad`` are written
    (``grad_req='write'``).

    segments: the net cut in pieces, applied in order. A first pass runs every segment
    but the last in training mode *without recording* and keeps only the segments'
    inputs; then, from the last segment back, each segment is recomputed under
    ``autograd.record()`` from its stored input and differentiated, its input gradient
    feeding the segment before. So every segment but the last runs forward twice in
    training mode. A batch-norm layer that updates its moving statistics in the forward
    pass (``d2lbn.norm.BatchNorm``; cuDNN on a GPU) then updates them twice.
    ``fix=True`` runs the first pass with the moving statistics frozen
    (``d2lbn.moving_stats.frozen_moving_statistics``), so the differentiated
    recomputation makes the one update, in whichever of its passes the layer updates
    them."""
    if len(segments) < 2:
        raise ValueError("checkpointing needs at least 2 segments")
    inputs = [X]
    guard = contextlib.ExitStack()
    with guard:
        if fix:
            for seg in segments[:-1]:
                guard.enter_context(frozen_moving_statistics(seg))
        with autograd.train_mode():
            h = X
            for seg in segments[:-1]:
                h = seg(h)
                inputs.append(h)
    head, loss_value = None, None
    for k in reversed(range(len(segments))):
        x = inputs[k].copy()
        x.attach_grad()
        with autograd.record():
            out = segments[k](x)
            if k == len(segments) - 1:
                out = loss_fn(out, y)
        if head is None:
            loss_value = float(out.sum().asscalar())
            out.backward()
        else:
            out.backward(head)
        head = x.grad
    return loss_value


def split_sequential(net: gluon.Block, cuts: Sequence[int]) -> List[gluon.Block]:
    """``net``'s children cut into consecutive segments at the child indices ``cuts`` (increasing,
    each in 1..len-1), each segment a ``Sequential`` sharing the children (and parameters) of
    ``net``: the pieces :func:`checkpointed_step` takes."""
    if not isinstance(net, nn.Sequential) and not isinstance(net, nn.HybridSequential):
        raise TypeError(f"net must be a gluon Sequential or HybridSequential; got {type(net).__name__}")
    children = list(net._children.values())
    cuts = [check_int("each cut", c) for c in cuts]
    if not cuts or sorted(set(cuts)) != cuts or cuts[-1] >= len(children):
        raise ValueError(f"cuts must be increasing child indices in 1..{len(children) - 1}; got {cuts}")
    segments = []
    for start, stop in zip([0] + cuts, cuts + [len(children)]):
        seg = nn.Sequential()
        for child in children[start:stop]:
            seg.add(child)
        segments.append(seg)
    return segments


# ---- quantization-aware training with batch norm folded ----------------------------------------

def fake_quantize_ste(W: nd.NDArray, bits: int = 8, per_channel: bool = False) -> nd.NDArray:
    """:func:`fake_quantize` in MXNet operators, differentiable with the straight-through
    estimator: the forward value is the quantized W, the gradient passes as if quantization were
    the identity. W: (C_out, ...) NDArray."""
    bits = check_bits(bits)
    q = 2 ** (bits - 1) - 1
    A = nd.abs(W)
    if per_channel:
        peak = nd.max(A.reshape((W.shape[0], -1)), axis=1).reshape((-1,) + (1,) * (W.ndim - 1))
    else:
        peak = nd.max(A).reshape((1,) * W.ndim)
    scale = nd.stop_gradient(nd.where(peak > 0, peak / q, nd.ones_like(peak)))
    Wq = nd.broadcast_mul(nd.clip(nd.round(nd.broadcast_div(W, scale)), -q, q), scale)
    return W + nd.stop_gradient(Wq - W)


class QATFolded(nn.Block):
    """A Conv2D or Dense layer followed by batch norm, trained *folded* with
    fake-quantized weights (Jacob et al., 2018, Sec. 3.2 and Appendix C;
    Krishnamoorthi, 2018).

    ``kind``: ``'conv'`` (``channels`` filters of ``kernel_size``, stride 1, no
    padding; X: (N, C, H, W)) or ``'dense'`` (``channels`` units; X: (N, ...)
    flattened). Parameters: ``weight``, ``gamma``, ``beta`` (trained) and
    ``running_mean``, ``running_var`` (momentum, eps as Gluon's). In training mode,
    while ``frozen`` is False: z = layer(x, W) gives the batch mean and biased variance
    (which also update the moving ones); the layer outputs ``layer(x, q(W * s)) + beta
    - mean * s`` with ``s = gamma / sqrt(var + eps)`` and q the fake quantization,
    gradients flowing through the batch statistics. With ``frozen`` True, and at
    inference, the moving statistics take their place: exactly the folded, quantized
    layer deployed. With ``bn=False`` the layer is a plain layer with a bias and
    fake-quantized weights."""

    def __init__(self, kind: str, channels: int, kernel_size: int = 0, bits: int = 8,
                 per_channel: bool = False, bn: bool = True, momentum: float = 0.9,
                 eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("conv", "dense"):
            raise ValueError(f"kind must be 'conv' or 'dense'; got {kind!r}")
        self.kind, self.channels = kind, check_int("channels", channels)
        self.kernel = check_int("kernel_size", kernel_size) if kind == "conv" else 0
        self.bits, self.per_channel, self.bn = check_bits(bits), bool(per_channel), bool(bn)
        self.momentum, self.eps, self.frozen = float(momentum), float(eps), False
        with self.name_scope():
            shape = (channels, 0, self.kernel, self.kernel) if kind == "conv" else (channels, 0)
            self.weight = self.params.get("weight", shape=shape, allow_deferred_init=True)
            if self.bn:
                self.gamma = self.params.get("gamma", shape=(channels,), init="ones")
                self.beta = self.params.get("beta", shape=(channels,), init="zeros")
                self.running_mean = self.params.get("running_mean", shape=(channels,),
                                                    init="zeros", grad_req="null")
                self.running_var = self.params.get("running_var", shape=(channels,),
                                                   init="ones", grad_req="null")
            else:
                self.bias = self.params.get("bias", shape=(channels,), init="zeros")

    def _apply(self, x: nd.NDArray, W: nd.NDArray) -> nd.NDArray:
        if self.kind == "conv":
            return nd.Convolution(x, W, kernel=(self.kernel, self.kernel), no_bias=True,
                                  num_filter=self.channels)
        return nd.FullyConnected(x, W, no_bias=True, num_hidden=self.channels, flatten=True)

    def _shape(self) -> tuple:
        return (1, self.channels, 1, 1) if self.kind == "conv" else (1, self.channels)

    def forward(self, x: nd.NDArray) -> nd.NDArray:
        if self.weight._data is None:     # deferred shape: input channels/features
            conv = self.kind == "conv"
            fan_in = x.shape[1] if conv else int(np.prod(x.shape[1:]))
            self.weight.shape = ((self.channels, fan_in)
                                 + ((self.kernel,) * 2 if conv else ()))
            self.weight._finish_deferred_init()
        ctx, shape = x.context, self._shape()
        W = self.weight.data(ctx)
        if not self.bn:
            Wq = fake_quantize_ste(W, self.bits, self.per_channel)
            bias = self.bias.data(ctx).reshape(shape)
            return nd.broadcast_add(self._apply(x, Wq), bias)
        gamma, beta = self.gamma.data(ctx), self.beta.data(ctx)
        rm, rv = self.running_mean.data(ctx), self.running_var.data(ctx)
        if autograd.is_training() and not self.frozen:
            z = self._apply(x, W)              # the batch statistics of W x
            axes = (0, 2, 3) if self.kind == "conv" else (0,)
            mean = z.mean(axis=axes)
            centred = nd.broadcast_sub(z, mean.reshape(shape))
            var = centred.square().mean(axis=axes)
            with autograd.pause():
                rm[:] = self.momentum * rm + (1 - self.momentum) * mean
                rv[:] = self.momentum * rv + (1 - self.momentum) * var
        else:                                  # frozen, or inference
            mean, var = rm, rv
        s = gamma / nd.sqrt(var + self.eps)
        Wf = nd.broadcast_mul(W, s.reshape((-1,) + (1,) * (W.ndim - 1)))
        Wq = fake_quantize_ste(Wf, self.bits, self.per_channel)
        return nd.broadcast_add(self._apply(x, Wq), (beta - mean * s).reshape(shape))


def qat_lenet(bits: int = 8, per_channel: bool = False) -> nn.Sequential:
    """The LeNet of ``d2lbn.models`` (ReLU) built from :class:`QATFolded` layers: each Conv2D/Dense
    and its batch norm trained folded, every weight fake-quantized. X: (N, 1, 28, 28) -> (N, 10)."""
    net = nn.Sequential()
    for channels in (6, 16):
        net.add(QATFolded("conv", channels, 5, bits, per_channel), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=2, strides=2))
    for units in (120, 84):
        net.add(QATFolded("dense", units, bits=bits, per_channel=per_channel),
                nn.Activation("relu"))
    net.add(QATFolded("dense", 10, bits=bits, per_channel=per_channel, bn=False))
    return net


def freeze_qat_statistics(net: gluon.Block, frozen: bool = True) -> int:
    """Set ``frozen`` on every :class:`QATFolded` layer with batch norm in ``net`` (from then on
    training folds with the moving statistics, which stop changing); returns how many."""
    layers = [b for b in net._children.values() if isinstance(b, QATFolded) and b.bn]
    if not layers:
        raise ValueError("net has no QATFolded layer with batch norm to freeze")
    for layer in layers:
        layer.frozen = bool(frozen)
    return len(layers)


# ---- in-place activated batch norm -----------------------------------------------------------------

def _moment_axes(x: nd.NDArray):
    if x.ndim not in (2, 4):
        raise ValueError(f"x must have rank 2 (N, D) or 4 (N, C, H, W); got shape {x.shape}")
    return ((0,), (1, -1)) if x.ndim == 2 else ((0, 2, 3), (1, -1, 1, 1))


class _BNLeakyReLU(autograd.Function):
    """Batch norm in training mode (batch statistics) followed by leaky ReLU, with a hand-written
    backward. ``inplace=False`` keeps what a batch-norm layer and an activation layer each keep for
    backward: the batch norm's input x and the activation's input y. ``inplace=True`` (Rota Bulo et
    al., 2018) keeps only the output z and recovers y = leaky_relu^{-1}(z) and
    x_hat = (y - beta) / gamma in backward. ``saved_bytes``: the bytes of the arrays kept."""

    def __init__(self, slope: float, eps: float, inplace: bool):
        super().__init__()
        self.slope, self.eps, self.inplace = slope, eps, inplace
        self.saved_bytes = 0

    def forward(self, x, gamma, beta):
        axes, shape = _moment_axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        var = nd.square(x - mean).mean(axis=axes, keepdims=True)
        inv_std = 1.0 / nd.sqrt(var + self.eps)
        y = (x - mean) * inv_std * gamma.reshape(shape) + beta.reshape(shape)
        z = nd.where(y >= 0, y, self.slope * y)
        kept = (z, gamma, beta, inv_std) if self.inplace else (x, y, gamma, inv_std)
        self.save_for_backward(*kept)
        self.saved_bytes = sum(a.size * np.dtype(a.dtype).itemsize for a in kept)
        return z

    def backward(self, dz):
        if self.inplace:
            z, gamma, beta, inv_std = self.saved_tensors
            axes, shape = _moment_axes(z)
            y = nd.where(z >= 0, z, z / self.slope)              # invert the leaky ReLU
            x_hat = (y - beta.reshape(shape)) / gamma.reshape(shape)
        else:
            x, y, gamma, inv_std = self.saved_tensors
            axes, shape = _moment_axes(x)
            mean = x.mean(axis=axes, keepdims=True)
            x_hat = (x - mean) * inv_std
        dy = nd.where(y >= 0, dz, self.slope * dz)
        dgamma = (dy * x_hat).sum(axis=axes)
        dbeta = dy.sum(axis=axes)
        dx_hat = dy * gamma.reshape(shape)
        dx = inv_std * (dx_hat - dx_hat.mean(axis=axes, keepdims=True)
                        - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))
        return dx, dgamma, dbeta


def bn_leaky_relu(x: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray, slope: float = 0.01,
                  eps: float = 1e-5, inplace: bool = False):
    """``leaky_relu(batch_norm(x))`` in training mode, differentiable; returns ``(z, saved_bytes)``.

    x: (N, D) or (N, C, H, W); gamma, beta: (C,); slope in (0, 1]: the leaky ReLU's slope for
    negative inputs (invertible because it is > 0). ``inplace=True``: in-place activated batch norm
    (Rota Bulo et al., 2018), keeping only the output for backward (needs every gamma != 0, since
    x_hat is recovered by dividing by it). No moving statistics are kept: this is the training
    computation only."""
    slope = check_real("slope", slope, positive=True)
    if slope > 1:
        raise ValueError(f"slope must be in (0, 1]; got {slope}")
    if inplace and float(nd.abs(gamma).min().asscalar()) < 1e-12:
        raise ValueError("in-place activated batch norm divides by gamma to recover its input: "
                         "every gamma must be nonzero (Rota Bulo et al. use |gamma| + eps)")
    f = _BNLeakyReLU(slope, check_real("eps", eps, positive=True), bool(inplace))
    z = f(x, gamma, beta)
    return z, f.saved_bytes
