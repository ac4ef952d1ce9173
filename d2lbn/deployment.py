"""ch12: the experiments of "Batch norm at deployment and under memory limits".

Training (:func:`fit_lenet`, with an optional L1 penalty on gamma), post-training quantization of
the folded LeNet (:func:`ptq_accuracies`), Network Slimming (:func:`slimming_run`), the moving
statistics at the start of training (:func:`steps_to_forget`, :func:`start_of_training_run`) and
the double update of the moving statistics under gradient checkpointing
(:func:`double_update_ratio`). Every net is a LeNet with ``gluon.nn.BatchNorm``
(``d2lbn.models.lenet_bn_gluon``) on Fashion-MNIST arrays ``(train_X, train_y, test_X, test_y)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.lr_scheduler import CosineScheduler

from . import compress as C
from .checks import check_int, check_momentum, check_real
from .data import ArrayLoader
from .models import lenet_bn, lenet_bn_gluon
from .moving_stats import (batch_norm_layers, frozen_moving_statistics, imperative,
                           layer_statistics, remove_initial_values, set_layer_statistics)
from .practice import evaluate
from .resnet import count_parameters
from .training import set_seed

__all__ = ["make_lenet", "fit_lenet", "ptq_accuracies", "SlimmingResult", "slimming_run",
           "steps_to_forget", "gluon_precise_statistics", "start_of_training_run",
           "qat_run", "PROBE_OPERATORS", "THREAD_PROBE", "thread_probe", "permutation_difference",
           "PermutationDifference", "double_update_ratio"]


def make_lenet() -> gluon.nn.HybridSequential:
    """A new hybridized LeNet with ``gluon.nn.BatchNorm`` (momentum 0.9, eps 1e-5)."""
    net = lenet_bn_gluon()
    net.hybridize()
    return net


def fit_lenet(net, data, num_epochs: int, lr: float, seed: int, *, init: bool = True,
              l1: float = 0.0, batch_size: int = 128, momentum: float = 0.9,
              max_steps: Optional[int] = None) -> List[float]:
    """Train ``net`` with SGD (momentum), softmax cross-entropy and a half-cosine
    learning rate, adding ``l1 * sum|gamma|`` to the mean loss
    (``d2lbn.compress.add_gamma_l1_grad``) when ``l1 > 0``; test accuracy after every
    epoch. ``init``: Xavier-initialise first (else keep the weights: fine-tuning).
    ``max_steps``: stop after that many steps (then one accuracy, at the end); the
    cosine schedule then runs over those steps: the learning rate reaches 0 at the
    last one. On the CPU the moving statistics are updated once per step, in
    ``backward()``."""
    num_epochs = check_int("num_epochs", num_epochs)
    train_X, train_y, test_X, test_y = data
    set_seed(seed)
    if init:
        net.initialize(mx.init.Xavier(), force_reinit=True)
    loader = ArrayLoader(train_X, train_y, batch_size, shuffle=True)
    total = num_epochs * len(loader) if max_steps is None else max_steps
    sched = CosineScheduler(max_update=max(total, 1), base_lr=lr, final_lr=0.0)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {
        "learning_rate": lr, "momentum": momentum, "lr_scheduler": sched})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    accs, step = [], 0
    for _ in range(num_epochs):
        for X, y in loader:
            with autograd.record():
                loss = loss_fn(net(X), y)
            loss.backward()
            if l1 > 0:
                C.add_gamma_l1_grad(net, l1, X.shape[0])
            trainer.step(X.shape[0])
            step += 1
            if max_steps is not None and step >= max_steps:
                return [evaluate(net, test_X, test_y)]
        accs.append(evaluate(net, test_X, test_y))
    return accs


def ptq_accuracies(net, test_X: nd.NDArray, test_y: nd.NDArray,
                   bits: Sequence[int]) -> Dict[str, float]:
    """Test accuracy of ``net`` (a trained LeNet with batch norm): ``'float'``, ``'folded'``,
    and for every b in ``bits`` the folded net with fake-quantized weights per tensor
    (``'b per tensor'``) and per channel (``'b per channel'``), and the unfolded net with its
    weights quantized per tensor and batch norm kept in float (``'b per tensor, unfolded'``)."""
    folded = C.fold_sequential(net)
    out = {"float": evaluate(net, test_X, test_y), "folded": evaluate(folded, test_X, test_y)}
    for b in bits:
        for per_channel, name in ((False, "per tensor"), (True, "per channel")):
            out[f"{b} {name}"] = evaluate(C.quantize_weights(folded, b, per_channel),
                                          test_X, test_y)
        out[f"{b} per tensor, unfolded"] = evaluate(
            C.quantize_weights(net, b, False, keep_batch_norm=True), test_X, test_y)
    return out


@dataclass
class SlimmingResult:
    """One seed of Network Slimming: accuracies of the net trained with the L1 penalty
    (``trained``), right after pruning (``pruned``) and after fine-tuning (``tuned``); parameters
    before and after; channels kept per batch-norm layer; the same pruning applied to a net trained
    without the penalty (``plain_pruned``, before fine-tuning)."""
    trained: float
    pruned: float
    tuned: float
    plain_pruned: float
    params_before: int
    params_after: int
    kept: List[int] = field(default_factory=list)
    gammas: List[np.ndarray] = field(default_factory=list)


def slimming_run(seed: int, data, plain_net, num_epochs: int, lr: float, l1: float, ratio: float,
                 tune_epochs: int, tune_lr: float) -> SlimmingResult:
    """Train a LeNet with ``l1 * sum|gamma|`` added to the loss, prune the ``ratio`` of channels with
    the smallest |gamma| (one threshold over all layers), fine-tune ``tune_epochs``. ``plain_net``:
    the same LeNet trained without the penalty (same seed), pruned the same way for contrast."""
    test_X, test_y = data[2], data[3]
    net = make_lenet()
    trained = fit_lenet(net, data, num_epochs, lr, seed, l1=l1)[-1]
    masks = C.slimming_masks(net, ratio)
    small = C.prune_sequential(net, masks)
    small.hybridize()
    pruned = evaluate(small, test_X, test_y)
    tuned = fit_lenet(small, data, tune_epochs, tune_lr, seed, init=False)[-1]
    plain_small = C.prune_sequential(plain_net, C.slimming_masks(plain_net, ratio))
    gammas = [layer.gamma.data().asnumpy() for layer in batch_norm_layers(net)]
    return SlimmingResult(trained, pruned, tuned, evaluate(plain_small, test_X, test_y),
                          count_parameters(net), count_parameters(small),
                          [int(m.sum()) for m in masks], gammas)


def steps_to_forget(momentum: float, fraction: float = 0.01) -> int:
    """Updates until the initial value's weight ``momentum**t`` in the moving average drops below
    ``fraction``: the smallest t with ``momentum**t < fraction``."""
    check_momentum(momentum)
    fraction = check_real("fraction", fraction, positive=True)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    if momentum == 0:
        return 1
    t = math.ceil(math.log(fraction) / math.log(momentum))
    return t + 1 if momentum ** t >= fraction else t


def gluon_precise_statistics(net, X: nd.NDArray, batch_size: int = 128
                             ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Precise statistics (Wu & Johnson, 2021) of every ``gluon.nn.BatchNorm`` layer of ``net``:
    over the batches ``X[i:i+batch_size]`` (N, ...) with the net in training mode and the weights
    fixed, ``mean = E[mu_B]`` and ``var = E[sigma2_B + mu_B**2] - mean**2`` (biased batch
    variances, equal weights; a last partial batch is dropped). One float64 (mean, var) pair (C,)
    per layer; the net's moving statistics are left unchanged. (``d2lbn.moving_stats.
    precise_statistics`` does this for d2lbn's own layer.)"""
    layers = batch_norm_layers(net)
    if not layers:
        raise ValueError("net has no batch-norm layer")
    sums = [[0.0, 0.0] for _ in layers]

    def make_hook(acc):
        def hook(block, inputs):
            Z = inputs[0].asnumpy().astype(np.float64)
            axes = (0,) if Z.ndim == 2 else (0, 2, 3)
            mean = Z.mean(axis=axes)
            acc[0] = acc[0] + mean
            acc[1] = acc[1] + Z.var(axis=axes) + mean ** 2
        return hook
    n = X.shape[0] // batch_size
    if n < 1:
        raise ValueError(f"X has {X.shape[0]} rows, fewer than one batch of {batch_size}")
    with imperative(net), frozen_moving_statistics(net):
        handles = [layer.register_forward_pre_hook(make_hook(acc))
                   for layer, acc in zip(layers, sums)]
        try:
            with autograd.train_mode():
                for i in range(n):
                    net(X[i * batch_size:(i + 1) * batch_size])
        finally:
            for h in handles:
                h.detach()
    return [(m / n, np.maximum(sq / n - (m / n) ** 2, 0.0)) for m, sq in sums]


def start_of_training_run(seed: int, data, steps: Sequence[int], lr: float,
                          precise_batches: int = 20) -> Dict[str, List[float]]:
    """Train a fresh LeNet (momentum 0.9 in its batch norm) for each t in ``steps`` (t steps, then
    stop) and measure test accuracy with MXNet's stored moving statistics (``'stored'``), with
    them bias-corrected (``d2lbn.moving_stats.remove_initial_values`` with t updates:
    ``'corrected'``) and with precise statistics over ``precise_batches`` training batches
    (``'precise'``, the reference). Also ``'stored_err'``/``'corrected_err'``: the largest
    |moving mean - precise mean| over the first layer's channels."""
    out: Dict[str, List[float]] = {k: [] for k in ("stored", "corrected", "precise",
                                                   "stored_err", "corrected_err")}
    train_X, train_y, test_X, test_y = data
    for t in steps:
        t = check_int("each of steps", t)
        net = make_lenet()
        fit_lenet(net, data, 10 ** 6, lr, seed, max_steps=t)
        layers = batch_norm_layers(net)
        stored = [layer_statistics(layer) for layer in layers]
        corrected = remove_initial_values(stored, t, momentum=0.9)
        precise = gluon_precise_statistics(net, train_X[:precise_batches * 128])
        out["stored"].append(evaluate(net, test_X, test_y))
        for layer, (mean, var) in zip(layers, corrected):
            set_layer_statistics(layer, mean, var)
        out["corrected"].append(evaluate(net, test_X, test_y))
        for layer, (mean, var) in zip(layers, precise):
            set_layer_statistics(layer, mean, var)
        out["precise"].append(evaluate(net, test_X, test_y))
        out["stored_err"].append(float(np.abs(stored[0][0] - precise[0][0]).max()))
        out["corrected_err"].append(float(np.abs(corrected[0][0] - precise[0][0]).max()))
    return out


def double_update_ratio(scratch: bool, fix: bool, seed: int = 0,
                        cuts: Sequence[int] = (4, 8)) -> np.ndarray:
    """One checkpointed gradient step (``d2lbn.compress.checkpointed_step``) of a fresh LeNet on a
    random batch of 16, from moving mean 0: the first batch-norm layer's stored mean divided by the
    batch mean of its input (NumPy, per channel). One update with momentum 0.9 gives 0.1, two give
    1 - 0.9**2 = 0.19. ``scratch``: d2lbn's BatchNorm (updates in the forward pass), else
    ``gluon.nn.BatchNorm`` (on the CPU, updates in ``backward()``)."""
    set_seed(seed)
    net = lenet_bn() if scratch else lenet_bn_gluon()
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(16, 1, 28, 28))
    y = nd.array(np.arange(16) % 10)
    with autograd.predict_mode():
        net(X)                                       # shapes, no statistics update
    segments = C.split_sequential(net, list(cuts))
    C.checkpointed_step(segments, X, y, gluon.loss.SoftmaxCrossEntropyLoss(), fix=fix)
    with autograd.predict_mode():
        mu = net[0](X).asnumpy().astype(np.float64).mean(axis=(0, 2, 3))
    return layer_statistics(batch_norm_layers(net)[0])[0] / mu


def qat_run(seed: int, data, bits: int, per_channel: bool, num_epochs: int, lr: float,
            frozen_epochs: int, frozen_lr: float) -> List[float]:
    """Quantization-aware training of ``d2lbn.compress.qat_lenet(bits, per_channel)``:
    ``num_epochs`` folding with the batch statistics (learning rate ``lr`` along a half cosine),
    then ``frozen_epochs`` with the statistics frozen (``frozen_lr``, half cosine). Returns the test
    accuracy after each phase (the last is the deployed, folded and quantized net's)."""
    net = C.qat_lenet(bits, per_channel)
    first = fit_lenet(net, data, num_epochs, lr, seed)[-1]
    C.freeze_qat_statistics(net)
    second = fit_lenet(net, data, frozen_epochs, frozen_lr, seed, init=False)[-1]
    return [first, second]


#: The operators of the LeNet at the shapes they see in :data:`THREAD_PROBE` (a batch of 256):
#: name -> (operator, input shape, parameter shape or None).
PROBE_OPERATORS = {
    "Convolution 1": ("Convolution", (256, 1, 28, 28), (6, 1, 5, 5)),
    "BatchNorm 1": ("BatchNorm", (256, 6, 24, 24), None),
    "Pooling 1": ("Pooling", (256, 6, 24, 24), None),
    "Convolution 2": ("Convolution", (256, 6, 12, 12), (16, 6, 5, 5)),
    "BatchNorm 2": ("BatchNorm", (256, 16, 8, 8), None),
    "Pooling 2": ("Pooling", (256, 16, 8, 8), None),
    "FullyConnected 1": ("FullyConnected", (256, 256), (120, 256)),
    "BatchNorm 3": ("BatchNorm", (256, 120), None),
    "FullyConnected 2": ("FullyConnected", (256, 120), (84, 120)),
    "BatchNorm 4": ("BatchNorm", (256, 84), None),
    "FullyConnected 3": ("FullyConnected", (256, 84), (10, 84)),
}

#: The script :func:`thread_probe` runs in a fresh process: a LeNet with gluon BatchNorm, weights
#: and a batch of 256 drawn by NumPy (so MXNet's own random generator plays no part), 10 SGD steps;
#: then each operator of that LeNet alone (:data:`PROBE_OPERATORS`), at the shape it sees there,
#: forward and backward on NumPy-drawn data: keys ``'<name>: output'``, ``'<name>: input
#: gradient'`` and, for convolutions and dense layers, ``'<name>: weight gradient'``.
THREAD_PROBE = """
import sys
import d2lbn  # first: under NumPy >= 1.24 it restores numpy.bool for mxnet
import numpy as np, mxnet as mx
from mxnet import autograd, gluon, nd
from d2lbn.models import lenet_bn_gluon
from d2lbn.deployment import PROBE_OPERATORS
rng = np.random.default_rng(0)
X = nd.array(rng.uniform(size=(256, 1, 28, 28))); y = nd.array(np.arange(256) % 10)
net = lenet_bn_gluon(); net.hybridize(); net.initialize(); net(X)
for p in net.collect_params().values():
    if p.grad_req != 'null':
        p.set_data(nd.array(rng.normal(scale=0.1, size=p.shape)))
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05, 'momentum': 0.9})
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
out = {'output': net(X).asnumpy()}
for step in range(10):
    with autograd.record():
        loss = loss_fn(net(X), y)
    loss.backward()
    if step == 0:
        out['gradients'] = np.concatenate([p.grad().asnumpy().ravel()
            for p in net.collect_params().values() if p.grad_req != 'null'])
    trainer.step(256)
out['weights after 10 steps'] = np.concatenate([p.data().asnumpy().ravel()
                                                for p in net.collect_params().values()])
for name, (op, shape, wshape) in PROBE_OPERATORS.items():
    x = nd.array(rng.normal(size=shape) * 2 + 1); x.attach_grad()
    c = shape[1]
    if wshape is not None:
        w = nd.array(rng.normal(scale=0.1, size=wshape)); w.attach_grad()
        b = nd.array(rng.normal(scale=0.1, size=wshape[0]))
    with autograd.record():
        if op == 'BatchNorm':
            o = nd.BatchNorm(x, nd.array(rng.uniform(0.5, 2, c)), nd.array(rng.normal(size=c)),
                             nd.zeros(c), nd.ones(c), fix_gamma=False)
        elif op == 'Pooling':
            o = nd.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='max')
        elif op == 'Convolution':
            o = nd.Convolution(x, w, b, kernel=wshape[2:], num_filter=wshape[0])
        else:
            o = nd.FullyConnected(x, w, b, num_hidden=wshape[0])
    o.backward(nd.array(rng.normal(size=o.shape)))
    out[name + ': output'], out[name + ': input gradient'] = o.asnumpy(), x.grad.asnumpy()
    if wshape is not None:
        out[name + ': weight gradient'] = w.grad.asnumpy()
np.savez(sys.argv[1], **out)
"""


def thread_probe(threads: int, path: str) -> Dict[str, np.ndarray]:
    """Run :data:`THREAD_PROBE` in a new Python process with ``OMP_NUM_THREADS=threads`` (the number
    of threads MXNet's CPU operators use); return its arrays by name. Raises on a failed run."""
    import os
    import subprocess
    import sys
    threads = check_int("threads", threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", THREAD_PROBE, path], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the probe with OMP_NUM_THREADS={threads} failed:\n{done.stderr[-2000:]}")
    with np.load(path if path.endswith(".npz") else path + ".npz") as f:
        return {k: f[k] for k in f.files}


class PermutationDifference(NamedTuple):
    """What :func:`permutation_difference` measures (largest absolute differences; 0.0 means
    bit-identical). ``predicted``: the output difference that the two runs' stored statistics
    alone produce, normalising the same values in float64 with each run's mean and variance.
    ``equal_spread``: within the first run, the largest spread of the outputs of equal input values
    of one channel (0.0: a value's output does not depend on where it sits in the batch)."""
    mean: float
    var: float
    out: float
    predicted: float
    equal_spread: float


def permutation_difference(X: nd.NDArray, seed: int = 0, eps: float = 1e-3
                           ) -> PermutationDifference:
    """MXNet's BatchNorm in training mode (gamma 1, beta 0, momentum 0) on X (N, C, H, W) and on X
    with its rows shuffled (the same values in another order), on the CPU. The batch mean and
    variance are read from the moving statistics, which with momentum 0 are the batch's once
    backward() has run (MXNet 1.9.1 on the CPU stores the biased variance). Returns the largest
    differences of the means, the variances and the outputs (shuffled back), the output
    difference the statistics predict, and the spread of equal values' outputs
    (:class:`PermutationDifference`)."""
    if not isinstance(X, nd.NDArray) or X.ndim != 4:
        raise ValueError("X must be an NDArray (N, C, H, W)")
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    channels = X.shape[1]

    def bn(Z):
        mean, var = nd.zeros(channels), nd.ones(channels)
        Z = Z.copy()
        Z.attach_grad()
        with autograd.record():
            out = nd.BatchNorm(Z, nd.ones(channels), nd.zeros(channels), mean, var, eps=eps,
                               momentum=0.0, fix_gamma=False)
        out.backward()
        return mean.asnumpy(), var.asnumpy(), out.asnumpy()
    mean_a, var_a, out_a = bn(X)
    mean_b, var_b, out_b = bn(X[nd.array(perm)])
    x = X.asnumpy().astype(np.float64)
    shape = (1, channels, 1, 1)

    def normalise(mean, var):
        return (x - mean.astype(np.float64).reshape(shape)) / np.sqrt(
            var.astype(np.float64).reshape(shape) + eps)
    predicted = float(np.abs(normalise(mean_a, var_a) - normalise(mean_b, var_b)).max())
    spread = 0.0
    for c in range(channels):
        values, groups = np.unique(x[:, c].ravel(), return_inverse=True)
        outs = out_a[:, c].ravel()
        hi = np.full(len(values), -np.inf)
        lo = np.full(len(values), np.inf)
        np.maximum.at(hi, groups, outs)
        np.minimum.at(lo, groups, outs)
        spread = max(spread, float((hi - lo).max()))
    return PermutationDifference(float(np.abs(mean_a - mean_b).max()),
                                 float(np.abs(var_a - var_b).max()),
                                 float(np.abs(out_a[perm] - out_b).max()), predicted, spread)
