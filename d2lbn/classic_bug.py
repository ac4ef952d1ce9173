"""WRONG ON PURPOSE: a copied tutorial's moving-average update, kept for teaching (appendix of classic bugs).

!!! Do not use ``buggy_batch_norm`` in a model you care about. !!!

A transcript of the 2017 MXNet "from scratch" tutorial (``bntranscript`` in the book's
references; the tutorial itself updates correctly) updated its moving statistics with

    moving_mean[:] = moving_momentum + moving_mean + (1.0 * -moving_momentum) * variance

which has three mistakes at once: ``+`` where ``*`` was meant (``momentum + moving_mean`` instead of
``momentum * moving_mean``), ``1.0 * -momentum`` instead of ``1.0 - momentum``, and the batch
*variance* where the batch *mean* belongs. Its moving variance was started at 0 (under a misspelled
name) and never updated. Each training step therefore adds roughly ``momentum * (1 - variance)`` to
the moving mean, so it drifts without bound, while prediction divides by ``sqrt(0 + eps)``. Its
LeNet reached 88.5% training accuracy while its printed test accuracy stayed at 0.100060 for all
five epochs.

The correct version is :func:`d2lbn.norm.batch_norm`; this module mirrors its signature so the two
can be swapped in :class:`d2lbn.norm.BatchNorm` (``impl=buggy_batch_norm``) and compared.
"""
from __future__ import annotations

from typing import Tuple

from mxnet import nd

from .checks import check_momentum, check_norm_inputs

__all__ = ["buggy_batch_norm", "CLASSIC_INITIAL_MOVING_VAR"]

#: The classic tutorial started its moving variance at 0 (the correct start is 1, as in MXNet).
CLASSIC_INITIAL_MOVING_VAR = 0.0


def buggy_batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                     moving_mean: nd.NDArray, moving_var: nd.NDArray, *, training: bool,
                     eps: float = 1e-5, momentum: float = 0.9
                     ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """WRONG ON PURPOSE -- the classic tutorial's update, reproduced to show it fails.

    Same signature and shapes as :func:`d2lbn.norm.batch_norm` (X: (N, D) or
    (N, C, H, W); the vectors: (D,) or (C,)). The normalisation itself is right; the
    moving statistics are not:

    * ``new_moving_mean = momentum + moving_mean + (1.0 * -momentum) * batch_var``
      (WRONG)
    * ``new_moving_var = moving_var``  (WRONG: never updated)
    """
    axes, param_shape = check_norm_inputs(X, eps, gamma=gamma, beta=beta,
                                          moving_mean=moving_mean,
                                          moving_var=moving_var)
    check_momentum(momentum)
    if training:
        mean = X.mean(axis=axes, keepdims=True)
        var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
        X_hat = (X - mean) / nd.sqrt(var + eps)
        batch_var = var.detach().reshape((X.shape[1],))
        old_mean = moving_mean.detach()
        new_moving_mean = momentum + old_mean + (1.0 * -momentum) * batch_var  # WRONG
        new_moving_var = moving_var.detach()                                   # WRONG
    else:
        mean = moving_mean.reshape(param_shape)
        X_hat = (X - mean) / nd.sqrt(moving_var.reshape(param_shape) + eps)
        new_moving_mean, new_moving_var = moving_mean.detach(), moving_var.detach()
    Y = gamma.reshape(param_shape) * X_hat + beta.reshape(param_shape)
    return Y, new_moving_mean, new_moving_var
