"""ch13: federated averaging of Gluon nets, with batch norm shared (FedAvg) or kept local (FedBN).

FedAvg (McMahan et al., 2017) replaces every parameter of every client by the average over
clients weighted by their numbers of examples; FedBN (Li et al., 2021) does the same except for
the batch-norm layers, whose gamma, beta and moving statistics each client keeps.

* :func:`weighted_average` -- ``sum_k w_k A_k / sum_k w_k`` of same-shaped arrays;
* :func:`is_norm_param` -- whether a structural parameter name belongs to a batch-norm layer;
* :func:`aggregate` -- one server round over client nets, in place: ``keep_norm_local=False``
  is FedAvg, ``True`` is FedBN.

Clients are nets of the same structure (parameters matched by their structural names, such as
``'1.gamma'``, from ``_collect_params_with_prefix``); weights are positive numbers, one per
client.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Sequence

import numpy as np
from mxnet import gluon, nd

__all__ = ["NORM_PARAM_SUFFIXES", "weighted_average", "is_norm_param", "check_client_weights",
           "aggregate"]

#: The last part of a batch-norm parameter's structural name in Gluon's ``nn.BatchNorm``
#: (``gamma``, ``beta``, ``running_mean``, ``running_var``) and ``d2lbn.norm.BatchNorm``.
NORM_PARAM_SUFFIXES = ("gamma", "beta", "running_mean", "running_var", "moving_mean",
                       "moving_var")


def check_client_weights(weights, num_clients: int) -> np.ndarray:
    """Return ``weights`` as float64 (K,) if it holds ``num_clients`` positive finite numbers;
    otherwise a ``ValueError`` naming the bad entry."""
    values = list(weights)
    if len(values) != num_clients:
        raise ValueError(f"weights must hold one number per client ({num_clients}); "
                         f"got {len(values)}")
    for k, w in enumerate(values):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise TypeError(f"weights[{k}] must be a number; got {w!r}")
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ValueError(f"client weights must be positive and finite (a client's number "
                             f"of examples); weights[{k}] = {w!r}")
    return np.asarray(values, dtype=np.float64)


def weighted_average(arrays: Sequence[np.ndarray], weights) -> np.ndarray:
    """``sum_k w_k A_k / sum_k w_k`` in float64: arrays, K of one shape; weights (K,) > 0."""
    if len(arrays) == 0:
        raise ValueError("arrays is empty: nothing to average")
    w = check_client_weights(weights, len(arrays))
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    return np.tensordot(w / w.sum(), stack, axes=1)


def is_norm_param(name: str) -> bool:
    """True if the structural parameter name (``'1.gamma'``, ``'3.running_var'``) belongs to a
    batch-norm layer (its last part is in :data:`NORM_PARAM_SUFFIXES`)."""
    return name.rsplit(".", 1)[-1] in NORM_PARAM_SUFFIXES


def _params(net: gluon.Block) -> Dict[str, gluon.Parameter]:
    if not isinstance(net, gluon.Block):
        raise TypeError(f"clients must be gluon Blocks; got {type(net).__name__}")
    return net._collect_params_with_prefix()


def aggregate(nets: Sequence[gluon.Block], weights, keep_norm_local: bool = False
              ) -> List[str]:
    """One server round, in place: every parameter of every client net becomes the
    weighted average over clients, except, with ``keep_norm_local=True`` (FedBN), the
    batch-norm parameters and statistics (:func:`is_norm_param`), which stay each
    client's own. Returns the structural names that were averaged."""
    if len(nets) < 1:
        raise ValueError("aggregate needs at least one client net")
    w = check_client_weights(weights, len(nets))
    params = [_params(net) for net in nets]
    names = list(params[0])
    for k, p in enumerate(params[1:], 1):
        if list(p) != names:
            raise ValueError(f"client {k} has other parameters than client 0: "
                             f"{sorted(set(p) ^ set(names))[:4]}")
    shared = [n for n in names if not (keep_norm_local and is_norm_param(n))]
    for name in shared:
        values = [p[name].data().asnumpy() for p in params]
        mean = weighted_average(values, w)
        for p in params:
            p[name].set_data(nd.array(mean, dtype=p[name].dtype))
    return shared
