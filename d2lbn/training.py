"""Training and evaluation on one device, a GPU when there is one, the CPU otherwise (ch03-ch10).

Every batch is moved to ``ctx`` before use and the net is initialised on ``ctx``, so the
same code runs on ``mx.cpu()``, ``mx.gpu(0)`` or ``mx.cpu(1)`` (the tests use the last
to catch any array left on the default context).

Shapes: batches are ``(X, y)`` with ``X: (N, 1, 28, 28)`` float32 and ``y: (N,)``
integer labels; the net maps ``X`` to scores ``(N, 10)``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, asdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.lr_scheduler import CosineScheduler

from .checks import check_int, check_real
from .data import TrainBatchSampler, training_loader
from .repro import set_seed

__all__ = ["Settings", "quick_mode", "lenet_settings", "History", "make_trainer",
           "NonFiniteError", "NonFiniteLossError", "find_non_finite",
           "TrainBatchSampler", "training_loader",
           "accuracy_count", "evaluate_accuracy", "train", "comparison_table",
           "subset", "fashion_mnist_iters", "in_notebook"]

Batches = Iterable[Tuple[nd.NDArray, nd.NDArray]]

#: Accepted values of ``train``'s ``lr_schedule``.
LR_SCHEDULES = (None, "cosine")


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinity: in a batch of input data, in the loss, or in a
    parameter or moving statistic of a layer. ``history`` holds the epochs completed
    before it; ``epoch`` and ``batch`` (1-based) say where it was found, ``layer`` names
    the layer (None for data and loss)."""

    def __init__(self, message: str, history: "History", epoch: Optional[int] = None,
                 batch: Optional[int] = None, layer: Optional[str] = None):
        super().__init__(message)
        self.history, self.epoch, self.batch, self.layer = history, epoch, batch, layer


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite (a :class:`NonFiniteError`)."""


@dataclass
class History:
    """Per-epoch results of :func:`train` (lists of length ``num_epochs``).

    ``loss``: mean training loss over the epoch's examples; ``train_acc``: training
    accuracy measured on the fly (training mode, while the weights change);
    ``test_acc``: accuracy on the test set at the end of the epoch (inference mode);
    ``seconds``: wall time of the epoch including evaluation; ``examples_per_sec``:
    training throughput (training examples / training time).
    """
    device: str = ""
    loss: List[float] = field(default_factory=list)
    train_acc: List[float] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    examples_per_sec: List[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def append(self, loss: float, train_acc: float, test_acc: float, seconds: float,
               examples_per_sec: float) -> None:
        """Record one epoch."""
        self.loss.append(loss)
        self.train_acc.append(train_acc)
        self.test_acc.append(test_acc)
        self.seconds.append(seconds)
        self.examples_per_sec.append(examples_per_sec)

    def line(self, epoch: int) -> str:
        """One line for epoch ``epoch`` (1-based), as printed during training."""
        e = epoch - 1
        return (f"epoch {epoch}: loss {self.loss[e]:.4f}, "
                f"train acc {self.train_acc[e]:.4f}, "
                f"test acc {self.test_acc[e]:.4f}, {self.seconds[e]:.1f} s, "
                f"{self.examples_per_sec[e]:.0f} examples/s")

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def table(self) -> str:
        """The history as a plain-text table, one row per epoch."""
        rows = [f"{'epoch':>5} {'loss':>7} {'train acc':>9} {'test acc':>8} "
                f"{'seconds':>8} {'examples/s':>10}"]
        for e in range(self.epochs):
            rows.append(f"{e + 1:>5} {self.loss[e]:>7.4f} {self.train_acc[e]:>9.4f} "
                        f"{self.test_acc[e]:>8.4f} "
                        f"{self.seconds[e]:>8.1f} {self.examples_per_sec[e]:>10.0f}")
        return "\n".join(rows)


def accuracy_count(scores: nd.NDArray, y: nd.NDArray) -> int:
    """Number of rows of ``scores: (N, num_classes)`` whose arg-max equals the label
    ``y: (N,)``."""
    if scores.ndim != 2 or y.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, num_classes) and y (N,); "
                         f"got {scores.shape} and {y.shape}")
    return int((scores.argmax(axis=1) == y.astype(scores.dtype)).sum().asscalar())


def evaluate_accuracy(net: gluon.Block, data_iter: Batches, ctx: mx.Context) -> float:
    """Fraction of examples of ``data_iter`` that ``net`` classifies correctly, in
    inference mode.

    Each batch ``(X, y)`` is moved to ``ctx``; the net's parameters must live there too.
    """
    correct, total = 0, 0
    for X, y in data_iter:
        X, y = X.as_in_context(ctx), y.as_in_context(ctx)
        correct += accuracy_count(net(X), y)
        total += X.shape[0]
    if total == 0:
        raise ValueError("data_iter yielded no examples")
    return correct / total


def comparison_table(histories: Dict[str, "History"]) -> str:
    """Test accuracy and seconds of several runs side by side, one row per epoch, then
    the median seconds per epoch of each run. ``histories``: ``{name: History}``."""
    if not histories:
        raise ValueError("histories must name at least one run")
    names = list(histories)
    epochs = max(h.epochs for h in histories.values())
    width = max(8, *(len(n) for n in names))
    rows = [f"{'':>5}  " + "  ".join(f"{n:>{width}}" for n in names)]
    rows.append(f"{'epoch':>5}  "
                + "  ".join(f"{'test acc':>{width - 7}} {'s':>6}" for _ in names))
    for e in range(epochs):
        cells = []
        for h in histories.values():
            cells.append(f"{h.test_acc[e]:>{width - 7}.4f} {h.seconds[e]:>6.1f}"
                         if e < h.epochs else " " * width)

        rows.append(f"{e + 1:>5}  " + "  ".join(cells))
    rows.append("median seconds per epoch: " + ", ".join(
        f"{n} {float(np.median(h.seconds)):.1f}" for n, h in histories.items()))
    return "\n".join(rows)


# ---- where we are running: notebook or terminal --------------------------------------

def in_notebook() -> bool:
    """True inside a Jupyter kernel (where plots and progress bars are displayed in
    place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _TextReport:
    """Terminal output: a tqdm bar per epoch on stderr and one printed line per epoch.
    """

    def __init__(self, progress: bool, log: Callable[[str], None]):
        self.progress, self.log, self.bar = progress, log, None

    def start_epoch(self, desc: str, total: Optional[int]) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False,
                        disable=not self.progress)

    def batch(self, fraction: float, loss: float, acc: float) -> None:
        self.bar.update(1)

    def end_epoch(self, epoch: int, line: str, test_acc: float) -> None:
        self.bar.close()
        self.log(line)

    def message(self, line: str) -> None:
        self.log(line)

    def finish(self) -> None:
        pass


class _NotebookReport:
    """Notebook output, redrawn in place: the live plot, the epoch lines and the current
    tqdm bar.

    Each redraw clears the cell's output and shows the figure and the text again, so
    when training ends the cell holds one static figure and the epoch lines: that is
    what the rendered book shows.
    """

    def __init__(self, num_epochs: int, progress: bool, refresh_seconds: float):
        from .plot import TrainingPlot
        self.plot = TrainingPlot(num_epochs)
        self.progress, self.refresh_seconds = progress, refresh_seconds
        self.points_per_epoch = 10
        self.lines: List[str] = []
        self.bar = None
        self.last_draw = 0.0

    def _draw(self) -> None:
        from IPython import display
        display.clear_output(wait=True)
        display.display(self.plot.fig)
        text = list(self.lines)
        if self.bar is not None and self.progress:
            text.append(str(self.bar))
        print("\n".join(text), flush=True)
        self.last_draw = time.perf_counter()

    def start_epoch(self, desc: str, total: Optional[int]) -> None:
        from tqdm import tqdm
        import io
        # tqdm keeps the count, rate and time left; we print its meter ourselves
        # on each redraw
        self.bar = tqdm(total=total, desc=desc, unit="batch", file=io.StringIO(),
                        mininterval=0)

    def batch(self, fraction: float, loss: float, acc: float) -> None:
        self.bar.update(1)
        total = self.bar.total or 0
        every = max(1, total // self.points_per_epoch)
        # a few points per epoch, as in d2l
        if self.bar.n % every == 0 or self.bar.n == total:
            self.plot.add_train(fraction, loss, acc)
        if time.perf_counter() - self.last_draw >= self.refresh_seconds:
            self._draw()

    def end_epoch(self, epoch: int, line: str, test_acc: float) -> None:
        self.bar.close()
        self.bar = None
        self.plot.add_test(epoch, test_acc)
        self.lines.append(line)
        self._draw()

    def message(self, line: str) -> None:
        self.lines.append(line)

    def finish(self) -> None:
        from matplotlib import pyplot as plt
        # already displayed; closing keeps the inline backend from repeating it
        plt.close(self.plot.fig)


# ---- the training loop ---------------------------------------------------------------

def _num_batches(data_iter: Batches) -> Optional[int]:
    try:
        return len(data_iter)  # type: ignore[arg-type]
    except TypeError:
        return None


def make_trainer(net: gluon.Block, lr: float, momentum: float = 0.0,
                 lr_schedule: Optional[str] = None, num_steps: Optional[int] = None,
                 optimizer: str = "sgd") -> gluon.Trainer:
    """A ``gluon.Trainer`` for ``net``: ``optimizer`` with learning rate ``lr`` and
    ``momentum`` (if > 0); ``lr_schedule='cosine'`` lowers the rate along a half cosine
    from ``lr`` to 0 over ``num_steps``."""
    params = {"learning_rate": lr}
    if momentum:
        params["momentum"] = momentum
    if lr_schedule == "cosine":
        if not num_steps:
            raise ValueError("lr_schedule='cosine' needs the number of steps "
                             "(a train_iter with a length)")
        params["lr_scheduler"] = CosineScheduler(max_update=num_steps, base_lr=lr,
                                                 final_lr=0.0)
    return gluon.Trainer(net.collect_params(), optimizer, params)


def _check_train_args(num_epochs, lr, momentum, lr_schedule, ctx,
                      check_every) -> Tuple[int, float, float]:
    num_epochs = check_int("num_epochs", num_epochs)
    lr = check_real("lr", lr, positive=True)
    momentum = check_real("momentum", momentum, what="a number in [0, 1)")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; "
                         f"got {lr_schedule!r}")
    if not isinstance(ctx, mx.Context):
        raise TypeError(f"ctx must be an mxnet Context such as mx.cpu() or mx.gpu(0); "
                        f"got {ctx!r}")
    check_int("check_every", check_every)
    return num_epochs, lr, momentum


def _owners(net: gluon.Block) -> Dict[int, str]:
    """id(parameter) -> the name of the innermost layer that registered it."""
    owners: Dict[int, str] = {}

    def walk(block: gluon.Block) -> None:
        for child in block._children.values():
            walk(child)
        for param in block._reg_params.values():
            owners.setdefault(id(param), block.name)
    walk(net)
    return owners


def find_non_finite(net: gluon.Block, ctx: mx.Context) -> List[Tuple[str, str]]:
    """``(layer name, parameter name)`` of every parameter of ``net`` on ``ctx``
    (weights, gamma, beta, moving statistics) that holds a NaN or an infinity; empty
    when all are finite.

    Cheap: one product with 0 and one sum per parameter (NaN iff a value is not finite),
    gathered into one array and read back once.
    """
    params = [p for p in net.collect_params().values() if p._data is not None]
    if not params:
        return []
    flags = nd.concat(*[(p.data(ctx) * 0).sum().reshape((1,)).astype("float32")
                        for p in params], dim=0).asnumpy()
    owners = _owners(net)
    return [(owners.get(id(p), net.name), p.name) for p, flag in zip(params, flags)
            if not np.isfinite(flag)]


def _non_finite_params(net, ctx, history, epoch, num_epochs, batch, last_good,
                       lr) -> None:
    bad = find_non_finite(net, ctx)
    if bad:
        layer, param = bad[0]
        others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"parameter {param} of layer {layer}{others} became NaN or infinite at "
            f"epoch {epoch} of {num_epochs}, between batch {last_good + 1} and batch "
            f"{batch} (lr={lr:g}); the weights have diverged: lower the learning rate "
            f"or check the input data", history,
            epoch=epoch, batch=batch, layer=layer)


def _diverged(loss: float, epoch: int, num_epochs: int, i: int,
              num_batches: Optional[int], lr: float) -> str:
    of = f" of {num_batches}" if num_batches else ""
    return (f"training loss became {loss} at epoch {epoch} of {num_epochs}, "
            f"batch {i}{of} (lr={lr:g}); the weights have diverged: lower the learning "
            f"rate or check the input data for NaN/inf")


def train(net: gluon.Block, train_iter: Batches, test_iter: Batches, num_epochs: int,
          lr: float, ctx: mx.Context, *, seed: Optional[int] = 0,
          init: Optional[mx.init.Initializer] = None, optimizer: str = "sgd",
          momentum: float = 0.0, lr_schedule: Optional[str] = None,
          loss: Optional[gluon.loss.Loss] = None, progress: bool = True,

          plot: Optional[bool] = None, refresh_seconds: float = 3.0,
          log: Callable[[str], None] = print, check_every: int = 50) -> History:
    """Train ``net`` on ``ctx`` with softmax cross-entropy and mini-batch ``optimizer``
    (SGD, with ``momentum`` if > 0; ``lr_schedule='cosine'`` lowers ``lr`` to 0 over the
    run, see :func:`make_trainer`).

    After seeding every random generator with ``seed``, the net is (re)initialised on
    ``ctx`` with ``init`` (default Xavier); ``seed=None`` seeds nothing and keeps
    existing weights. Each batch ``(X, y)`` is moved to ``ctx``; test accuracy is
    measured after every epoch. In a notebook (``plot=None`` detects it) loss and
    accuracies are plotted live and the final figure stays in the cell; elsewhere a tqdm
    bar runs per epoch and one line per epoch goes to ``log``.

    Returns a :class:`History`. Training cannot silently rot: it stops with a
    :class:`NonFiniteError` naming the epoch and batch

    * when a batch's input ``X`` holds a NaN or infinity, before the forward pass (so no
      weight and no moving statistic sees it);
    * when a batch's loss is NaN or infinite (:class:`NonFiniteLossError`), before that
      batch's update;
    * when a parameter or moving statistic of a layer (named in the error) has become
      NaN or infinite: checked every ``check_every`` batches and at the end of every
      epoch (with ReLU a NaN can leave the loss finite). ``d2lbn.norm.BatchNorm`` also
      keeps its moving statistics when a batch's are not finite.

    The error's ``history`` holds the finished epochs; so does a
    ``KeyboardInterrupt``'s.
    """
    num_epochs, lr, momentum = _check_train_args(num_epochs, lr, momentum, lr_schedule,
                                                 ctx, check_every)
    if seed is not None:
        set_seed(seed)
    net.initialize(init or mx.init.Xavier(), ctx=ctx, force_reinit=seed is not None)
    num_batches = _num_batches(train_iter)
    trainer = make_trainer(net, lr, momentum, lr_schedule,
                           num_epochs * (num_batches or 0), optimizer)
    loss_fn = loss or gluon.loss.SoftmaxCrossEntropyLoss()
    live = in_notebook() if plot is None else plot
    report = (_NotebookReport(num_epochs, progress, refresh_seconds) if live
              else _TextReport(progress, log))
    epochs = f"{num_epochs} epoch" + ("s" if num_epochs > 1 else "")
    report.message(f"training on {ctx}: {epochs} of {num_batches or '?'} batches")
    report.message(f"{optimizer}, lr {lr:g}"
                   + (" (cosine schedule)" if lr_schedule else "")
                   + (f", momentum {momentum:g}" if momentum else ""))
    history = History(device=str(ctx))
    of = f" of {num_batches}" if num_batches else ""
    try:
        for epoch in range(1, num_epochs + 1):
            start = time.perf_counter()
            report.start_epoch(f"epoch {epoch}/{num_epochs}", num_batches)
            loss_sum, correct, seen, checked = 0.0, 0, 0, 0
            for i, (X, y) in enumerate(train_iter, start=1):
                X, y = X.as_in_context(ctx), y.as_in_context(ctx)
                if not math.isfinite(float(X.sum().asscalar())):   # one small reduction
                    raise NonFiniteError(
                        f"the input X holds NaN or infinite values at epoch {epoch} of "
                        f"{num_epochs}, batch {i}{of}; clean the data (nothing was "
                        f"trained on this batch)",
                        history, epoch=epoch, batch=i)
                with autograd.record():
                    scores = net(X)
                    l = loss_fn(scores, y)
                l.backward()
                batch_loss = float(l.sum().asscalar())
                if not math.isfinite(batch_loss):
                    message = _diverged(batch_loss, epoch, num_epochs, i, num_batches,
                                        lr)
                    raise NonFiniteLossError(message, history, epoch=epoch, batch=i)
                trainer.step(X.shape[0])
                loss_sum += batch_loss
                correct += accuracy_count(scores, y)
                seen += X.shape[0]
                if i % check_every == 0:
                    _non_finite_params(net, ctx, history, epoch, num_epochs, i, checked,
                                       lr)
                    checked = i
                report.batch(epoch - 1 + i / (num_batches or i), loss_sum / seen,
                             correct / seen)
            if seen == 0:
                raise ValueError("train_iter yielded no examples")
            _non_finite_params(net, ctx, history, epoch, num_epochs, i, checked, lr)
            train_seconds = time.perf_counter() - start
            test_acc = evaluate_accuracy(net, test_iter, ctx)
            history.append(loss_sum / seen, correct / seen, test_acc,
                           seconds=time.perf_counter() - start,
                           examples_per_sec=seen / train_seconds)
            report.end_epoch(epoch, history.line(epoch), test_acc)
    except KeyboardInterrupt as interrupt:
        interrupt.history = history        # the finished epochs, for whoever catches it
        raise
    finally:
        report.finish()
    return history


# ---- the experiment's settings: full, or quick (D2LBN_QUICK=1) -----------------------

@dataclass(frozen=True)
class Settings:
    """The LeNet chapters' experiment: what to train for how long, and the accuracy it
    must reach."""
    quick: bool
    num_epochs: int
    lr: float
    momentum: float
    lr_schedule: Optional[str]
    batch_size: int
    train_limit: Optional[int]      # None: all 60,000 training images
    test_limit: Optional[int]       # None: all 10,000 test images
    min_test_acc: float     # the notebooks assert the final test accuracy reaches this
    acc_tolerance: float    # ... and that two implementations of one net end this close


def quick_mode() -> bool:
    """True when the environment variable ``D2LBN_QUICK`` is set to anything but ``''``
    or ``'0'``."""
    return os.environ.get("D2LBN_QUICK", "") not in ("", "0")


def lenet_settings(quick: Optional[bool] = None) -> Settings:
    """Settings of the LeNet chapters. ``quick=None`` reads ``D2LBN_QUICK``
    (:func:`quick_mode`).

    Both: mini-batches of 128, SGD with momentum 0.9, learning rate 0.05 lowered to 0
    along a half cosine. Full: 10 epochs on all of Fashion-MNIST, target 0.90 test
    accuracy. Quick (``make test``): the same recipe for 2 epochs on the first 10,000
    training and 2,000 test images; its floor of 0.75 is far above chance (0.10), so
    broken training still fails. Two implementations of the same net (from-scratch and
    Gluon batch norm) must end within 0.01 test accuracy in the full run; after the
    quick run, on 2,000 test images (one image is 0.0005), within 0.03.
    """
    if quick is None:
        quick = quick_mode()
    common = dict(lr=0.05, momentum=0.9, lr_schedule="cosine", batch_size=128)
    if quick:
        return Settings(quick=True, num_epochs=2, train_limit=10_000, test_limit=2_000,
                        min_test_acc=0.75, acc_tolerance=0.03, **common)
    return Settings(quick=False, num_epochs=10, train_limit=None, test_limit=None,
                    min_test_acc=0.90, acc_tolerance=0.01, **common)


# ---- data ----------------------------------------------------------------------------

def _batch_size(loader: gluon.data.DataLoader) -> int:
    sampler = loader._batch_sampler
    return (sampler.batch_size if isinstance(sampler, TrainBatchSampler)
            else sampler._batch_size)


def subset(loader: gluon.data.DataLoader, n: Optional[int],
           shuffle: bool) -> gluon.data.DataLoader:
    """A ``DataLoader`` over the first ``n`` examples of ``loader``'s data set (all if
    ``n`` is None).

    With ``shuffle`` (training) a final batch of one example is dropped
    (:class:`TrainBatchSampler`).
    """
    if n is None:
        return loader
    n = check_int("the subset size", n)
    dataset = loader._dataset
    batch_size = _batch_size(loader)
    kwargs = {"batchify_fn": loader._batchify_fn}
    part = dataset.take(min(n, len(dataset)))
    if shuffle:
        return training_loader(part, batch_size, **kwargs)
    return gluon.data.DataLoader(part, batch_size, shuffle=False, **kwargs)


def fashion_mnist_iters(batch_size: int, train_limit: Optional[int] = None,
                        test_limit: Optional[int] = None, root=None
                        ) -> Tuple[gluon.data.DataLoader, gluon.data.DataLoader]:
    """Fashion-MNIST loaders (``d2lbn.data.load_fashion_mnist``), optionally cut to the
    first ``train_limit`` training and ``test_limit`` test examples (for quick runs and
    tests)."""
    from .data import load_fashion_mnist
    train_iter, test_iter = load_fashion_mnist(batch_size, root=root)
    return (subset(train_iter, train_limit, shuffle=True),
            subset(test_iter, test_limit, shuffle=False))

