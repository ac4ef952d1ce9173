"""ch13: test-time adaptation by entropy minimisation (TENT, Wang et al., 2021).

TENT adapts a trained net to unlabelled test batches as they arrive: every batch-norm layer
normalises with the *test batch's* statistics (training mode), and one gradient step on the
mean prediction entropy updates only the layers' scale ``gamma`` and shift ``beta``; every
other weight stays fixed (Wang et al., 2021). As in the authors' code (``tent.py``,
``forward_and_adapt``), a batch's predictions are those of the forward pass that precedes
its last update.

* :func:`entropy` -- per-example Shannon entropy of the softmax of scores (N, K) -> (N,);
* :func:`norm_affine_params` -- the gamma and beta parameters of a net's batch-norm layers;
* :func:`tent_step` -- one forward, entropy, backward and update on one batch;
* :func:`tent` -- :func:`tent_step` over a stream of batches, ``steps`` updates per batch.

The moving statistics are not used by TENT's predictions; MXNet's ``gluon.nn.BatchNorm`` on the
CPU still updates them during each backward pass (ch02), so adapt a copy of a net.
"""
from __future__ import annotations

from typing import Iterable, List

import numpy as np
from mxnet import autograd, gluon, nd

from .checks import check_int, check_real
from .moving_stats import batch_norm_layers

__all__ = ["entropy", "norm_affine_params", "make_tent_trainer", "tent_step", "tent"]


def entropy(scores: nd.NDArray) -> nd.NDArray:
    """``H_i = -sum_k p_ik log p_ik`` with ``p_i = softmax(scores_i)``: scores (N, K) -> (N,),
    in nats (computed from ``log_softmax``, so no ``log 0``)."""
    if not isinstance(scores, nd.NDArray) or scores.ndim != 2:
        raise ValueError("scores must be an NDArray of shape (N, K); got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    log_p = nd.log_softmax(scores, axis=1)
    return -(nd.exp(log_p) * log_p).sum(axis=1)


def norm_affine_params(net: gluon.Block) -> List[gluon.Parameter]:
    """The ``gamma`` and ``beta`` of every batch-norm layer of ``net``, in the layers' order.
    A net without batch-norm layers is a ``ValueError`` (TENT has nothing to adapt)."""
    layers = batch_norm_layers(net)
    if not layers:
        raise ValueError("net has no batch-norm layers: TENT adapts their gamma and beta")
    return [p for layer in layers for p in (layer.gamma, layer.beta)]


def make_tent_trainer(net: gluon.Block, lr: float, optimizer: str = "sgd",
                      momentum: float = 0.9) -> gluon.Trainer:
    """A ``gluon.Trainer`` over the batch-norm gammas and betas of ``net`` only.
    ``optimizer``: ``'sgd'`` (with ``momentum``) or ``'adam'``."""
    lr = check_real("lr", lr, positive=True)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {optimizer!r}")
    params = {p.name: p for p in norm_affine_params(net)}
    options = {"learning_rate": lr}
    if optimizer == "sgd":
        options["momentum"] = check_real("momentum", momentum)
    return gluon.Trainer(params, optimizer, options)


def tent_step(net: gluon.Block, X: nd.NDArray, trainer: gluon.Trainer) -> nd.NDArray:
    """One TENT update on the batch X (N, ...): forward in training mode (batch
    statistics), loss = mean entropy, backward, ``trainer.step(1)``. Returns the scores
    (N, K) of the forward pass, computed before the update. A batch of one is refused
    (batch statistics need two)."""
    if X.shape[0] < 2:
        raise ValueError(f"TENT needs a test batch of at least 2 examples (it "
                         f"normalises with the batch's statistics); got {X.shape[0]}")
    with autograd.record(train_mode=True):
        scores = net(X)
        loss = entropy(scores).mean()
    loss.backward()
    trainer.step(1)
    return scores.detach()


def tent(net: gluon.Block, batches: Iterable[nd.NDArray], lr: float, steps: int = 1,
         optimizer: str = "sgd", momentum: float = 0.9) -> nd.NDArray:
    """Adapt ``net`` in place on a stream of test batches (each (n, ...)), ``steps`` TENT
    updates per batch; return the scores of every example, in stream order, (N, K): for
    each batch those of the forward pass of its last step (after ``steps - 1`` updates on
    it), as the authors' code returns. ``steps`` >= 1."""
    steps = check_int("steps", steps)
    trainer = make_tent_trainer(net, lr, optimizer, momentum)
    out = []
    for X in batches:
        for _ in range(steps):
            scores = tent_step(net, X, trainer)
        if not np.isfinite(scores.asnumpy()).all():
            raise FloatingPointError("TENT's scores became non-finite: lower lr")
        out.append(scores)
    if not out:
        raise ValueError("batches is empty")
    return nd.concat(*out, dim=0)
