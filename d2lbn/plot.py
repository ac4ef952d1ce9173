"""Plotting helpers, matplotlib (ch01, ch04, ch05, ch06, ch08, ch09)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import MaxNLocator
from mxnet import nd

__all__ = ["set_figsize", "show_images", "TrainingPlot", "plot_curves"]


def set_figsize(figsize: Tuple[float, float] = (5.0, 3.5)) -> None:
    """Set matplotlib's default figure size (inches)."""
    plt.rcParams["figure.figsize"] = figsize


def show_images(images, num_rows: int, num_cols: int, titles: Optional[Sequence[str]] = None,
                scale: float = 1.5):
    """Show ``images`` in a ``num_rows`` x ``num_cols`` grid and return the axes.

    images: (n, H, W) or (n, 1, H, W), an NDArray or NumPy array, n <= num_rows * num_cols.
    titles: one caption per image (for example ``get_fashion_mnist_labels(y)``).
    """
    if isinstance(images, nd.NDArray):
        images = images.asnumpy()
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W) or (n, 1, H, W); got {images.shape}")
    if len(images) > num_rows * num_cols:
        raise ValueError(f"{len(images)} images do not fit a {num_rows}x{num_cols} grid")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    _, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale),
                           squeeze=False)
    axes = axes.flatten()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray_r")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    return axes


class TrainingPlot:
    """A figure of training loss, training accuracy and test accuracy against epochs, filled in
    during training (``add_train`` per batch, ``add_test`` per epoch). ``fig`` is the matplotlib figure.
    """

    def __init__(self, num_epochs: int, figsize: Tuple[float, float] = (5.0, 3.2)):
        self.fig, self.ax = plt.subplots(figsize=figsize)
        self.train_x: list = []
        self.train_loss: list = []
        self.train_acc: list = []
        self.test_x: list = []
        self.test_acc: list = []
        self.ax.set_xlabel("epoch")
        self.ax.set_xlim(0, num_epochs)
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax.grid(True, alpha=0.3)
        (self._loss_line,) = self.ax.plot([], [], "-", color="tab:blue", label="train loss")
        (self._train_line,) = self.ax.plot([], [], "--", color="tab:purple", label="train acc")
        (self._test_line,) = self.ax.plot([], [], "o-", color="tab:green", label="test acc")
        self.ax.legend(loc="center right")

    def _rescale(self) -> None:
        top = max([1.0] + self.train_loss)
        self.ax.set_ylim(0, min(top * 1.05, 3.0))

    def add_train(self, epoch_fraction: float, loss: float, acc: float) -> None:
        """Add the running training loss and accuracy at ``epoch_fraction`` (e.g. 2.5 = mid epoch 3)."""
        self.train_x.append(epoch_fraction)
        self.train_loss.append(loss)
        self.train_acc.append(acc)
        self._loss_line.set_data(self.train_x, self.train_loss)
        self._train_line.set_data(self.train_x, self.train_acc)
        self._rescale()

    def add_test(self, epoch: float, acc: float) -> None:
        """Add the test accuracy measured at the end of ``epoch``."""
        self.test_x.append(epoch)
        self.test_acc.append(acc)
        self._test_line.set_data(self.test_x, self.test_acc)


def plot_curves(curves, ylabel: str, xlabel: str = "epoch", ax=None, ylim=None, markers: bool = True):
    """Plot several named curves on one axis and return it.

    curves: ``{label: values}`` with values indexed by epoch 1, 2, ... (for example
    ``{'with batch norm': history.test_acc, ...}``).
    """
    if not curves:
        raise ValueError("curves must name at least one curve")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    for label, values in curves.items():
        values = list(values)
        ax.plot(range(1, len(values) + 1), values, "o-" if markers else "-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def plot_seeds(ax, x, runs, label: str, style: str = "o-", color=None):
    """Plot the mean over seeds of ``runs`` (one sequence of values per seed, each as long as ``x``)
    against ``x`` with a band from the smallest to the largest seed's value; return the mean line.

    The band shows the spread: with one seed it has no width."""
    values = np.asarray([list(r) for r in runs], dtype=float)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != len(x):
        raise ValueError(f"runs must hold one sequence of {len(x)} values per seed; "
                         f"got shape {values.shape}")
    line, = ax.plot(x, values.mean(axis=0), style, label=label, color=color)
    ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2,
                    linewidth=0)
    return line
