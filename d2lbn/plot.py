"""Plotting helpers (matplotlib)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib import pyplot as plt
from mxnet import nd

__all__ = ["set_figsize", "show_images"]


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
