"""The backward pass of batch normalization, derived by hand, in float64 NumPy (ch03).

Teaching code and test oracle for chapter 3. Training mode only (batch statistics), shapes as in
``d2lbn.norm``: x: (N, D), statistics over axis 0, or x: (N, C, H, W), statistics over axes
(0, 2, 3); gamma, beta: (D,) or (C,). ``m`` is the number of values per feature: N or N*H*W.

* :func:`forward_staged` evaluates the computational graph one node at a time and keeps every
  intermediate value; :func:`backward_staged` walks the same graph backwards, one local derivative
  per node (the chain rule, mechanically).
* :func:`backward_closed_form` is the compact result of that walk,
  ``dx = gamma / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))``.
* :func:`numerical_gradient` and :func:`gradient_check` compare either with central differences.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from .checks import check_eps

__all__ = ["stat_axes", "forward_staged", "backward_staged", "backward_closed_form",
           "numerical_gradient", "relative_error", "gradient_check", "draw_graph"]


def stat_axes(x: np.ndarray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(axes, param_shape)``: ``((0,), (1, D))`` for x: (N, D), ``((0, 2, 3), (1, C, 1, 1))`` for 4-D."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array, got {type(x).__name__}")
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    if x.ndim == 4:
        return (0, 2, 3), (1, x.shape[1], 1, 1)
    raise ValueError(f"x must have rank 2 (N, D) or rank 4 (N, C, H, W); got shape {x.shape}")


def _check(x: np.ndarray, gamma: np.ndarray, eps: float) -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    axes, param_shape = stat_axes(x)
    gamma = np.asarray(gamma)
    if gamma.shape != (x.shape[1],):
        raise ValueError(f"gamma must have shape ({x.shape[1]},) to match x of shape {x.shape}; "
                         f"got shape {gamma.shape}")
    check_eps(eps)
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise TypeError(f"x must hold numbers; got dtype {x.dtype}")
    m = x.size // x.shape[1]
    if m < 2:
        raise ValueError(f"x of shape {x.shape} has one value per feature; batch statistics need two or more")
    return axes, param_shape, m


def forward_staged(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   eps: float = 1e-5) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Training-mode batch norm, one graph node per line; returns ``(y, cache)``.

    ``cache`` holds every node (statistics keep their broadcast shape (1, C) or
    (1, C, 1, 1)) and what the backward pass needs: ``gamma``, ``eps``, ``axes``, ``m``.
    """
    axes, shape, m = _check(x, gamma, eps)
    mu = x.mean(axis=axes, keepdims=True)             # 1. batch mean
    xmu = x - mu                                      # 2. centred input
    sq = xmu ** 2                                     # 3. squares
    var = sq.mean(axis=axes, keepdims=True)           # 4. biased batch variance
    std = np.sqrt(var + eps)                          # 5. standard deviation (with eps)
    inv_std = 1.0 / std                               # 6. its inverse
    x_hat = xmu * inv_std                             # 7. normalised input
    y = gamma.reshape(shape) * x_hat + beta.reshape(shape)   # 8. scale and shift
    cache = dict(x=x, mu=mu, xmu=xmu, sq=sq, var=var, std=std, inv_std=inv_std,
                 x_hat=x_hat, gamma=gamma.reshape(shape), eps=eps, axes=axes, m=m)
    return y, cache


def backward_staged(dy: np.ndarray, cache: Dict[str, np.ndarray]
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chain rule through :func:`forward_staged`'s graph, node 8 back to node 1.

    dy: the gradient of the loss with respect to y (shaped like x).
    Returns ``(dx, dgamma, dbeta)``. A node used twice (``xmu`` feeds ``sq`` and
    ``x_hat``; ``x`` feeds ``mu`` and ``xmu``) adds the gradients arriving along each
    path; a mean over m values sends ``1/m`` of its gradient to each.
    """
    axes, m = cache["axes"], cache["m"]
    xmu, std, inv_std = cache["xmu"], cache["std"], cache["inv_std"]
    x_hat, gamma = cache["x_hat"], cache["gamma"]
    dbeta = dy.sum(axis=axes)                           # 8. y = gamma * x_hat + beta
    dgamma = (dy * x_hat).sum(axis=axes)
    dx_hat = dy * gamma
    dinv_std = (dx_hat * xmu).sum(axis=axes, keepdims=True)  # 7. x_hat = xmu * inv_std
    dxmu = dx_hat * inv_std                             #    (first path into xmu)
    dstd = -dinv_std / std ** 2                         # 6. inv_std = 1 / std
    dvar = dstd * 0.5 / std                             # 5. std = sqrt(var + eps)
    dsq = np.broadcast_to(dvar / m, xmu.shape)          # 4. var = mean(sq)
    dxmu = dxmu + 2.0 * xmu * dsq                       # 3. sq = xmu ** 2 (2nd path)
    dmu = -dxmu.sum(axis=axes, keepdims=True)           # 2. xmu = x - mu
    dx = dxmu + np.broadcast_to(dmu / m, xmu.shape)     # 1. mu = mean(x) (both paths)
    return dx, dgamma, dbeta


def backward_closed_form(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                         eps: float = 1e-5
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compact backward pass: ``(dx, dgamma, dbeta)`` from dy, x and gamma alone.

    With m values per feature, x_hat = (x - mean) / sqrt(var + eps):
    ``dbeta = sum(dy)``, ``dgamma = sum(dy * x_hat)`` and
    ``dx = gamma / sqrt(var + eps) * (dy - dbeta / m - x_hat * dgamma / m)``,
    sums over axis 0 (x: (N, D)) or axes (0, 2, 3) (x: (N, C, H, W)).
    """
    axes, shape, m = _check(x, gamma, eps)
    if dy.shape != x.shape:
        raise ValueError(f"dy must be shaped like x {x.shape}; got {dy.shape}")
    mu = x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    x_hat = (x - mu) * inv_std
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx = gamma.reshape(shape) * inv_std * (dy - dbeta.reshape(shape) / m
                                           - x_hat * dgamma.reshape(shape) / m)
    return dx, dgamma, dbeta


def numerical_gradient(f: Callable[[np.ndarray], float], a: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences ``(f(a + h e_i) - f(a - h e_i)) / (2 h)`` for every element i of ``a``.

    ``f`` maps an array shaped like ``a`` (float64) to a scalar; ``a`` itself is left unchanged. The
    error is O(h^2) from truncation plus O(machine epsilon * |f| / h) from rounding.
    """
    a = np.array(a, dtype=np.float64)          # a private copy, perturbed in place
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f(a)
        flat[i] = old - h
        down = f(a)
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / max(||a||, ||b||)`` (Euclidean norms over all elements; 0 if both are zero).

    A norm-wise ratio: elementwise ratios are meaningless for gradient entries that are (nearly) 0,
    which batch norm produces (each feature's dx sums to zero).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape; got {a.shape} and {b.shape}")
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def gradient_check(backward: Callable[..., Tuple[np.ndarray, np.ndarray, np.ndarray]],
                   x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dy: np.ndarray,
                   eps: float = 1e-5, h: float = 1e-5) -> Dict[str, float]:
    """Relative errors of ``backward(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``
    against central differences of the loss ``L = sum(dy * y)`` (whose gradient with
    respect to y is exactly dy).

    Everything in float64. Returns ``{'dx': ..., 'dgamma': ..., 'dbeta': ...}``.
    """
    x, gamma, beta, dy = (np.asarray(v, dtype=np.float64) for v in (x, gamma, beta, dy))

    def loss(x_, gamma_, beta_):
        return float((dy * forward_staged(x_, gamma_, beta_, eps)[0]).sum())

    dx, dgamma, dbeta = backward(dy, x, gamma, eps)
    numerical = {
        "dx": numerical_gradient(lambda v: loss(v, gamma, beta), x, h),
        "dgamma": numerical_gradient(lambda v: loss(x, v, beta), gamma, h),
        "dbeta": numerical_gradient(lambda v: loss(x, gamma, v), beta, h),
    }
    ours = {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    return {name: relative_error(ours[name], numerical[name]) for name in ours}


#: The nodes of :func:`forward_staged`'s graph: (name, label, column, row) for :func:`draw_graph`.
#: Each label is the node's value: node 6 is ``r = 1/s``, the reciprocal of node 5.
GRAPH_NODES = [
    ("x", r"$x$", 0, 1), ("mu", r"$\mu$", 1, 2), ("xmu", r"$x-\mu$", 2, 1),
    ("sq", r"$(x-\mu)^2$", 3, 2), ("var", r"$\sigma^2$", 4.2, 2),
    ("std", r"$\sqrt{\sigma^2+\epsilon}$", 5.5, 2), ("inv_std", r"$1/\cdot$", 6.8, 2),
    ("x_hat", r"$\hat{x}$", 7.5, 1), ("gamma", r"$\gamma$", 7.5, 0),
    ("beta", r"$\beta$", 8.4, 0), ("y", r"$y$", 9.2, 1),
]
#: Step number (1-8 of ``forward_staged`` and Eq. eq-bn-graph) of each computed node; the input
#: x and the parameters gamma and beta are leaves and carry none.
GRAPH_STEPS = {"mu": 1, "xmu": 2, "sq": 3, "var": 4, "std": 5, "inv_std": 6, "x_hat": 7, "y": 8}
#: Edges (from, to) of the same graph; x feeds mu and xmu, xmu feeds sq and x_hat.
GRAPH_EDGES = [("x", "mu"), ("x", "xmu"), ("mu", "xmu"), ("xmu", "sq"), ("sq", "var"),
               ("var", "std"), ("std", "inv_std"), ("inv_std", "x_hat"), ("xmu", "x_hat"),
               ("x_hat", "y"), ("gamma", "y"), ("beta", "y")]


def draw_graph(ax=None):
    """Draw the computational graph of :func:`forward_staged` with matplotlib; returns ax.

    Each node is a boxed label; the computed nodes carry their step number (1-8,
    :data:`GRAPH_STEPS`) above the box, and every edge is an arrow clipped to the two
    boxes, so that its head is drawn whatever the distance between them."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 2.8))
    boxes = {}
    for name, label, col, row in GRAPH_NODES:
        param = name in ("gamma", "beta")
        boxes[name] = ax.text(col, row, label, ha="center", va="center", fontsize=12,
                              bbox=dict(boxstyle="round,pad=0.4",
                                        fc="#fde9c9" if param else "#dbe9f6",
                                        ec="#c77c02" if param else "#2c6aa0"))
        if name in GRAPH_STEPS:
            ax.annotate(str(GRAPH_STEPS[name]), (col, row), xytext=(0, 16),
                        textcoords="offset points", ha="center", va="bottom",
                        fontsize=9, color="#2c6aa0", fontweight="bold")
    pos = {name: (col, row) for name, _, col, row in GRAPH_NODES}
    for a, b in GRAPH_EDGES:
        # patchA/patchB clip the arrow at the edges of the two boxes
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.2, shrinkA=2,
                                    shrinkB=2, patchA=boxes[a].get_bbox_patch(),
                                    patchB=boxes[b].get_bbox_patch()))
    ax.set_xlim(-0.6, 9.8)
    ax.set_ylim(-0.6, 2.75)
    ax.axis("off")
    return ax
