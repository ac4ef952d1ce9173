"""Chapter 6's studies ("Beyond the Tutorials"): Figure 1 of the paper, learning-rate sweeps, batch size, statistics arms (ch06; ch08 reuses Figure 1).

* :func:`figure1_run` -- Ioffe & Szegedy (2015), Figure 1, on Fashion-MNIST: a net of three fully
  connected layers of 100 sigmoid units, batch 60, with and without batch norm; test accuracy and the
  15th/50th/85th percentiles of the inputs of the last hidden layer's sigmoids over training.
* :func:`sweep` -- short LeNet runs over learning rates or weight-initialisation scales, with and
  without batch norm, recording which runs diverge or stall.
* :func:`batch_size_run` -- the same net at several batch sizes: accuracy in inference mode (moving
  statistics) against training mode (statistics of each test batch), with batch norm or layer norm.
* :func:`statistics_arms`, :func:`arm_accuracies` -- what separates the moving averages from precise
  statistics, one factor at a time.
* :func:`batch_mean_noise`, :func:`relative_updates` -- the noise of a batch's mean; the effective
  learning rate of a layer followed by batch norm.

The data (``d2lbn.data.fashion_arrays``, ``ArrayLoader``), the moving-statistics tools
(``d2lbn.moving_stats``) and the seed bookkeeping (``d2lbn.seeds``) live in library modules; this
module holds the studies only. Everything runs on one context (a GPU when there is one). Shapes:
images ``X: (N, 1, 28, 28)`` for LeNet and ``X: (N, 784)`` for the fully connected net, labels
``y: (N,)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, init as mx_init, nd
from mxnet.gluon import nn

from .checks import check_int
from .data import ArrayLoader, fashion_arrays
from .moving_stats import (LayerMoments, frozen_moving_statistics, moving_statistics,
                           precise_statistics, remove_initial_values, scratch_norm_layers,
                           set_moving_statistics, settle_moving_statistics, train_mode_accuracy)
from .norm import BatchNorm, LayerNorm
from .repro import set_seed
from .training import evaluate_accuracy

__all__ = ["IMPL", "SigmoidMLP", "Figure1Result", "figure1_run", "steps_to_accuracy",
           "percentile_drift", "lenet_with_norm", "RunResult", "short_run", "sweep", "failures",
           "BatchSizeResult", "batch_size_run", "batch_mean_noise", "ARMS", "statistics_arms",
           "arm_accuracies", "relative_updates"]


#: The batch-norm implementation the experiments use: the formula as written (``d2lbn.norm.batch_norm``),
#: so that their numbers do not depend on any faster variant (pass ``impl=`` to choose another).
IMPL = "naive"


# ---- 1. Figure 1 of the paper --------------------------------------------------------------------

class SigmoidMLP(nn.Block):
    """The net of Ioffe & Szegedy (2015), Figure 1: ``num_layers`` fully connected
    layers of ``hidden`` sigmoid units (batch norm before each sigmoid when
    ``batch_norm``), then 10 scores.

    X: (N, 784) -> (N, 10). Weights are drawn from N(0, ``sigma``^2) ("small random
    Gaussian values"), biases start at 0. :meth:`sigmoid_inputs` returns the inputs of
    the last hidden layer's sigmoids, (N, hidden).
    """

    def __init__(self, batch_norm: bool, hidden: int = 100, num_layers: int = 3,
                 sigma: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        hidden = check_int("hidden", hidden)
        num_layers = check_int("num_layers", num_layers)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0; got {sigma!r}")
        self.batch_norm = bool(batch_norm)
        self.dense: List[nn.Dense] = []
        self.norms: List[BatchNorm] = []
        with self.name_scope():
            for i in range(num_layers):
                layer = nn.Dense(hidden, weight_initializer=mx_init.Normal(sigma))
                self.register_child(layer, f"dense{i}")
                self.dense.append(layer)
                if self.batch_norm:
                    bn = BatchNorm(hidden, 2, impl=IMPL)
                    self.register_child(bn, f"bn{i}")
                    self.norms.append(bn)
            self.output = nn.Dense(10, weight_initializer=mx_init.Normal(sigma))

    def _hidden(self, X: nd.NDArray) -> Tuple[nd.NDArray, nd.NDArray]:
        """Return (last hidden layer's sigmoid inputs, its outputs)."""
        H = X
        for i, layer in enumerate(self.dense):
            Z = layer(H)
            if self.batch_norm:
                Z = self.norms[i](Z)
            H = nd.sigmoid(Z)
        return Z, H

    def forward(self, X: nd.NDArray) -> nd.NDArray:
        return self.output(self._hidden(X)[1])

    def sigmoid_inputs(self, X: nd.NDArray) -> nd.NDArray:
        """Inputs of the last hidden layer's sigmoids as during training (batch
        statistics of X when the net has batch norm), without changing the moving
        statistics. X: (N, 784) -> (N, hidden)."""
        with frozen_moving_statistics(self), autograd.train_mode():
            return self._hidden(X)[0]


@dataclass
class Figure1Result:
    """One run of :func:`figure1_run`. ``steps``: the training steps at which the net was measured
    (0 = before training); ``test_acc``: test accuracy there; ``percentiles``: (len(steps), 3, hidden),
    the 15th, 50th and 85th percentile over the probe images of each last-layer sigmoid's input;
    ``inputs``: (len(steps), probe_size), the inputs of sigmoid ``record_unit`` itself at each step
    (the values whose percentiles are ``percentiles[:, :, record_unit]``; the book's explorer draws
    their histogram). ``net``: the trained net itself (its moving statistics as training left
    them), for measurements after training; None when the result was built by hand."""
    batch_norm: bool
    steps: List[int] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    percentiles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 0)))
    inputs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    record_unit: int = 0
    net: Optional[gluon.Block] = field(default=None, repr=False, compare=False)


def figure1_run(batch_norm: bool, num_steps: int, lr: float = 0.5, batch_size: int = 60,
                eval_every: int = 100, sigma: float = 0.1, train_limit: Optional[int] = None,
                test_limit: int = 2000, probe_size: int = 500, seed: int = 0,
                ctx: mx.Context = mx.cpu(), data=None, record_unit: int = 0) -> Figure1Result:
    """Train :class:`SigmoidMLP` with SGD on Fashion-MNIST and record Figure 1's measurements.

    Every ``eval_every`` steps (and at step 0): accuracy on the first ``test_limit`` test images, and
    the 15/50/85th percentiles of each last-layer sigmoid's input over ``probe_size`` fixed test
    images (the last ones, disjoint from the accuracy set when the test set is large enough).
    Batches are drawn at random with replacement, as a stream of steps. ``data``: optional
    ``fashion_arrays(flatten=True)`` output, to load once for several runs. ``record_unit``: the
    sigmoid (0 .. 99) whose probe inputs are kept whole in ``result.inputs``.
    """
    record_unit = check_int("record_unit", record_unit, minimum=0)
    num_steps, batch_size, eval_every, test_limit, probe_size = (
        check_int(name, value) for name, value in (
            ("num_steps", num_steps), ("batch_size", batch_size), ("eval_every", eval_every),
            ("test_limit", test_limit), ("probe_size", probe_size)))
    if record_unit >= 100:
        raise ValueError(f"record_unit must be a unit of the 100-unit hidden layer (0 .. 99); "
                         f"got {record_unit}")
    if data is None:
        data = fashion_arrays(train_limit, None, flatten=True, ctx=ctx)
    train_X, train_y, test_X, test_y = data
    if train_limit is not None:
        train_X, train_y = train_X[:train_limit], train_y[:train_limit]
    test_loader = ArrayLoader(test_X[:test_limit], test_y[:test_limit], 1000)
    probe = test_X[test_X.shape[0] - probe_size:]
    set_seed(seed)
    net = SigmoidMLP(batch_norm, sigma=sigma)
    net.initialize(ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    result = Figure1Result(batch_norm, record_unit=record_unit)
    percentiles, inputs = [], []

    def measure(step: int) -> None:
        result.steps.append(step)
        result.test_acc.append(evaluate_accuracy(net, test_loader, ctx))
        Z = net.sigmoid_inputs(probe).asnumpy()
        percentiles.append(np.percentile(Z, [15, 50, 85], axis=0))
        inputs.append(Z[:, record_unit].copy())

    measure(0)
    n = train_X.shape[0]
    for step in range(1, num_steps + 1):
        idx = nd.array(np.random.randint(0, n, batch_size), ctx=ctx)
        X, y = train_X.take(idx), train_y.take(idx)
        with autograd.record():
            loss = loss_fn(net(X), y)
        loss.backward()
        trainer.step(batch_size)
        if step % eval_every == 0 or step == num_steps:
            measure(step)
    result.percentiles = np.stack(percentiles)
    result.inputs = np.stack(inputs)
    result.net = net
    return result


def steps_to_accuracy(result: Figure1Result, target: float) -> Optional[int]:
    """The first measured step at which the test accuracy reaches ``target``; None if it never does."""
    for step, acc in zip(result.steps, result.test_acc):
        if acc >= target:
            return step
    return None


def percentile_drift(result: Figure1Result, start_step: int = 0) -> float:
    """How far the sigmoid inputs' percentiles move during training: for every unit and
    each of the three percentiles, max - min over the measurements from ``start_step``
    on, averaged over both."""
    keep = np.asarray(result.steps) >= start_step
    p = result.percentiles[keep]                       # (T, 3, hidden)
    return float((p.max(axis=0) - p.min(axis=0)).mean())


# ---- 2. learning-rate and initialisation sweeps on LeNet ------------------------------------------

def lenet_with_norm(norm: Optional[str], activation: str = "relu", impl=None) -> gluon.Block:
    """LeNet (``d2lbn.models``) with ``norm`` after every conv/dense layer but the last, before the
    activation: None (plain LeNet), ``'batch'`` (``d2lbn.norm.BatchNorm`` with ``impl``) or
    ``'layer'`` (``d2lbn.norm.LayerNorm``); ``'batch+output'``: as ``'batch'``, and batch norm
    after the last layer too, on the 10 scores before the softmax. X: (N, 1, 28, 28) -> (N, 10).
    ``impl=None``: :data:`IMPL`."""
    from . import models
    if norm is None:
        return models.lenet(activation)
    if norm == "batch":
        return models.lenet_bn(activation, impl=IMPL if impl is None else impl)
    if norm == "batch+output":
        net = models.lenet_bn(activation, impl=IMPL if impl is None else impl)
        net.add(BatchNorm(models.NUM_CLASSES, 2, impl=IMPL if impl is None else impl))
        return net
    if norm == "layer":
        return models._build(lambda num_features, num_dims: LayerNorm(num_features, num_dims), activation)
    raise ValueError(f"norm must be None, 'batch', 'batch+output' or 'layer'; got {norm!r}")


@dataclass
class RunResult:
    """One short training run: the setting, the per-epoch test accuracy and loss, and how it ended."""
    norm: Optional[str]
    lr: float
    sigma: Optional[float]
    test_acc: List[float]
    loss: List[float]
    diverged: bool
    seed: Optional[int] = None

    @property
    def final_acc(self) -> float:
        """Test accuracy at the end; 0.1 (chance) for a diverged run."""
        return 0.1 if self.diverged or not self.test_acc else self.test_acc[-1]


def short_run(norm: Optional[str], lr: float, data, num_epochs: int = 1,
              batch_size: int = 64, sigma: Optional[float] = None, seed: int = 0,
              ctx: mx.Context = mx.cpu()) -> RunResult:
    """Train ``lenet_with_norm(norm)`` for ``num_epochs`` on ``data = (train_X, train_y,
    test_X, test_y)`` with ``d2lbn.training.train`` (SGD). Weights from N(0, sigma^2)
    when ``sigma`` is given, Xavier otherwise. A NaN/inf loss ends the run with
    ``diverged=True``."""
    from .training import NonFiniteLossError, train
    train_X, train_y, test_X, test_y = data
    net = lenet_with_norm(norm)
    initializer = mx_init.Normal(sigma) if sigma is not None else None
    try:
        history = train(net, ArrayLoader(train_X, train_y, batch_size, shuffle=True),
                        ArrayLoader(test_X, test_y, 500), num_epochs, lr, ctx,
                        seed=seed, init=initializer, progress=False, plot=False,
                        log=lambda line: None)
    except NonFiniteLossError as error:
        return RunResult(norm, lr, sigma, list(error.history.test_acc),
                         list(error.history.loss), True, seed)
    loss = list(history.loss)
    return RunResult(norm, lr, sigma, list(history.test_acc), loss,
                     not all(map(math.isfinite, loss)), seed)


def sweep(norms: Sequence[Optional[str]], lrs: Sequence[float], data, sigmas: Sequence[Optional[float]] = (None,),
          **kwargs) -> List[RunResult]:
    """:func:`short_run` for every norm, learning rate and init scale (keyword arguments passed on)."""
    return [short_run(norm, lr, data, sigma=sigma, **kwargs)
            for norm in norms for sigma in sigmas for lr in lrs]


def failures(results: Sequence[RunResult], below: float = 0.5) -> List[RunResult]:
    """The runs that diverged or stalled: final test accuracy under ``below``."""
    return [r for r in results if r.diverged or r.final_acc < below]


# ---- 3. batch size --------------------------------------------------------------------------------

@dataclass
class BatchSizeResult:
    """One net trained at one batch size, and its test accuracy measured three ways.

    ``steps``: the SGD steps taken (every batch size sees the same number of examples, so smaller
    batches take more steps); ``train_loss``/``train_acc``: loss and accuracy over the last training
    epoch; ``moving_acc``: inference mode with the moving averages as training left them;
    ``precise_acc``: inference mode with precise statistics (:func:`precise_statistics`);
    ``train_mode_acc``: training mode, each test batch (of the training batch size) normalised with
    its own statistics. ``var_ratio``: for each batch-norm layer, the moving variance divided by the
    precise variance, averaged over the channels (empty for layer norm). ``moving_stats``: the
    moving statistics as training left them (:func:`moving_statistics`; empty for layer norm);
    ``net``: the trained net, which holds the *precise* statistics (for measurements after
    the run)."""
    norm: str
    batch_size: int
    lr: float
    steps: int
    train_loss: float
    train_acc: float
    moving_acc: float
    precise_acc: float
    train_mode_acc: float
    var_ratio: List[float] = field(default_factory=list)
    moving_stats: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    net: Optional[gluon.Block] = field(default=None, repr=False, compare=False)

    @property
    def inference_acc(self) -> float:
        """Inference-mode accuracy with the precise statistics."""
        return self.precise_acc

    @property
    def gap(self) -> float:
        """inference-mode (precise) accuracy minus training-mode accuracy."""
        return self.precise_acc - self.train_mode_acc


def batch_size_run(norm: str, batch_size: int, data, num_epochs: int = 2, lr_per_64: float = 0.1,
                   precise_batches: Optional[int] = None, seed: int = 0,
                   ctx: mx.Context = mx.cpu()) -> BatchSizeResult:
    """Train ``lenet_with_norm(norm)`` with batches of ``batch_size`` for ``num_epochs`` over
    ``data = (train_X, train_y, test_X, test_y)`` (SGD with the linear scaling rule,
    ``lr = lr_per_64 * batch_size / 64``; every batch size sees the same examples, in
    ``num_epochs * ceil(n / batch_size)`` steps), and measure the test accuracy with test batches of
    the same size: in inference mode with the moving averages, in inference mode with precise
    statistics over ``precise_batches`` training batches (default: one pass over the training
    arrays), and in training mode. For layer norm all three coincide by construction."""
    from .training import train
    batch_size = check_int("batch_size", batch_size)
    num_epochs = check_int("num_epochs", num_epochs)
    if precise_batches is not None:
        precise_batches = check_int("precise_batches", precise_batches,
                                    what="a positive int or None")
    train_X, train_y, test_X, test_y = data
    lr = lr_per_64 * batch_size / 64
    net = lenet_with_norm(norm)
    train_loader = ArrayLoader(train_X, train_y, batch_size, shuffle=True)
    history = train(net, train_loader, ArrayLoader(test_X, test_y, 1000), num_epochs, lr, ctx,
                    seed=seed, progress=False, plot=False, log=lambda line: None)
    test_loader = ArrayLoader(test_X, test_y, batch_size)
    moving_acc = evaluate_accuracy(net, test_loader, ctx)
    ratios: List[float] = []
    moving: List[Tuple[np.ndarray, np.ndarray]] = []
    if scratch_norm_layers(net):
        moving = moving_statistics(net)
        precise = precise_statistics(net, train_loader, precise_batches or len(train_loader), ctx)
        ratios = [float((m[1] / p[1]).mean()) for m, p in zip(moving, precise)]
        set_moving_statistics(net, precise)
    return BatchSizeResult(norm, batch_size, lr, num_epochs * len(train_loader),
                           history.loss[-1], history.train_acc[-1], moving_acc,
                           evaluate_accuracy(net, test_loader, ctx),
                           train_mode_accuracy(net, test_loader, ctx), ratios, moving, net)


def batch_mean_noise(X: nd.NDArray, batch_size: int,
                     num_batches: int = 200) -> Tuple[float, float]:
    """How much a batch's mean wanders: for X: (n, D), draw ``num_batches`` batches of
    ``batch_size`` rows at random (NumPy's global generator) and return (the standard
    deviation of the batch mean, averaged over the D features; the prediction sqrt(var /
    batch_size) averaged likewise)."""
    if X.ndim != 2:
        raise ValueError(f"X must be (n, D); got shape {X.shape}")
    batch_size = check_int("batch_size", batch_size)
    num_batches = check_int("num_batches", num_batches)
    values = X.asnumpy().astype(np.float64)
    means = np.stack([values[np.random.randint(0, len(values), batch_size)].mean(axis=0)
                      for _ in range(num_batches)])
    predicted = np.sqrt(values.var(axis=0) / batch_size)
    return float(means.std(axis=0).mean()), float(predicted.mean())


# ---- 4. what the moving averages miss: one factor at a time ---------------------------------------

#: The statistics :func:`statistics_arms` builds, each one factor away from another.
ARMS = ("moving", "moving, unbiased", "initial values removed",
        "average at final weights", "equal weights", "precise")


def statistics_arms(net: gluon.Block, moving: Sequence[Tuple[np.ndarray, np.ndarray]],
                    moments: Sequence[LayerMoments], loader, num_updates: int,
                    ctx: mx.Context, max_batches: int = 200
                    ) -> Dict[str, List[Tuple[np.ndarray, np.ndarray]]]:
    """Six sets of statistics for a trained net's batch-norm layers (:data:`ARMS`),
    to tell apart what separates the moving averages from precise statistics:

    * ``"moving"``: ``moving``, as training left them (``num_updates`` updates);
    * ``"moving, unbiased"``: the same with every variance times n / (n - 1), n the
      values per channel in a batch (what PyTorch, and cuDNN on a GPU, store);
    * ``"initial values removed"``: ``moving`` without the leftover of the initial
      values (:func:`remove_initial_values`);
    * ``"average at final weights"``: the same exponential average, over
      ``min(num_updates, max_batches)`` fresh batches of ``loader`` with the final
      weights (training-mode passes, initial values removed): no lag behind the weights;
    * ``"equal weights"``: mean E[mu_B] and variance E[sigma2_B] of ``moments``: the
      batch statistics averaged with equal weights, the variance still the batches' own;
    * ``"precise"``: mean E[mu_B] and the pooled variance of ``moments``.

    ``moments``: :func:`layer_batch_moments` of the net in training mode over
    ``loader``. The net's moving statistics are restored on exit."""
    num_updates = check_int("num_updates", num_updates)
    max_batches = check_int("max_batches", max_batches)
    layers = scratch_norm_layers(net)
    if not (len(moving) == len(moments) == len(layers)):
        raise ValueError(f"moving and moments must hold one entry per batch-norm layer "
                         f"({len(layers)}); got {len(moving)} and {len(moments)}")
    momenta = {layer.momentum for layer in layers}
    if len(momenta) != 1:
        raise ValueError(f"the batch-norm layers must share one momentum; "
                         f"got {momenta}")
    momentum = momenta.pop()
    moving = [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in moving]
    arms = {"moving": moving,
            "moving, unbiased": [(m, v * k.values / (k.values - 1))
                                 for (m, v), k in zip(moving, moments)],
            "initial values removed": remove_initial_values(moving, num_updates,
                                                            momentum)}
    saved = moving_statistics(net)
    fresh = min(num_updates, max_batches)
    try:
        set_moving_statistics(net, [(np.zeros_like(m), np.ones_like(v))
                                    for m, v in moving])
        settle_moving_statistics(net, loader, fresh, ctx)
        arms["average at final weights"] = remove_initial_values(moving_statistics(net),
                                                                 fresh, momentum)
    finally:
        set_moving_statistics(net, saved)
    arms["equal weights"] = [(k.mean, k.batch_var) for k in moments]
    arms["precise"] = [(k.mean, k.pooled_var) for k in moments]
    return arms


def arm_accuracies(net: gluon.Block,
                   arms: Dict[str, Sequence[Tuple[np.ndarray, np.ndarray]]],
                   loader, ctx: mx.Context) -> Dict[str, float]:
    """Inference-mode accuracy over ``loader`` with each set of statistics of ``arms``
    (as :func:`statistics_arms` returns) stored in turn; the net's own moving
    statistics are restored on exit."""
    saved = moving_statistics(net)
    out = {}
    try:
        for name, stats in arms.items():
            set_moving_statistics(net, stats)
            out[name] = evaluate_accuracy(net, loader, ctx)
    finally:
        set_moving_statistics(net, saved)
    return out


# ---- 5. the effective learning rate of a layer followed by batch norm ----------------------------

def relative_updates(net: gluon.Block, X: nd.NDArray, y: nd.NDArray,
                     lr: float) -> List[float]:
    """How much one plain SGD step of size ``lr`` on the batch ``(X, y)`` would change
    each weight tensor of ``net`` relative to its size: ``lr * ||grad W|| / ||W||`` for
    every parameter whose name ends in ``weight``, in the order of
    ``net.collect_params()``. The net is not changed.

    For a layer followed by batch norm, scaling W by a scales ||W|| by a and its
    gradient by 1/a (Eq. 'eq-bn-scale-invariance'), so this ratio falls as 1/a**2: the
    init scale acts as a per-layer learning rate. X: (N, ...) on the net's context, y:
    (N,) labels."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr!r}")
    params = [p for name, p in net.collect_params().items() if name.endswith("weight")]
    if not params:
        raise ValueError("net has no parameter whose name ends in 'weight'")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with frozen_moving_statistics(net):
        with autograd.record():
            loss = loss_fn(net(X), y).mean()
        loss.backward()
    out = []
    for p in params:
        w = p.data().asnumpy().astype(np.float64)
        g = p.grad().asnumpy().astype(np.float64)
        out.append(float(lr * np.linalg.norm(g) / np.linalg.norm(w)))
    return out

