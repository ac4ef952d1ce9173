"""Folding inference-mode batch norm into the preceding dense or convolutional layer (ch02).

At inference batch norm uses fixed statistics, so per output channel ``c`` it is the affine map

    y = gamma_c * (z - mean_c) / sqrt(var_c + eps) + beta_c = s_c * z + (beta_c - s_c * mean_c),

with ``s_c = gamma_c / sqrt(var_c + eps)``. If ``z = W x + b`` comes from a ``Dense`` or ``Conv2D``
layer (no activation in between), the two maps compose into one layer with weights ``s_c * W_c``
and bias ``s_c * (b_c - mean_c) + beta_c``: one layer fewer to run at prediction time.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from mxnet import gluon, nd

from .checks import check_eps, check_float_array
from .norm import BatchNorm

__all__ = ["fold_batch_norm", "batch_norm_inference_params", "fold_layer_and_batch_norm"]


def _need(name: str, value, shape: Tuple[int, ...], weight: nd.NDArray) -> None:
    if not isinstance(value, nd.NDArray):
        raise TypeError(f"{name} must be an mxnet NDArray of shape {shape}, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one value per output channel); "
                         f"got shape {value.shape}")
    if value.dtype != weight.dtype:
        mine, theirs = np.dtype(value.dtype).name, np.dtype(weight.dtype).name
        raise TypeError(f"{name} has dtype {mine} but weight has dtype {theirs}; use one dtype for all: "
                        f"{name}.astype('{theirs}')")


def fold_batch_norm(weight: nd.NDArray, bias: Optional[nd.NDArray], gamma: nd.NDArray,
                    beta: nd.NDArray, moving_mean: nd.NDArray, moving_var: nd.NDArray,
                    eps: float = 1e-5) -> Tuple[nd.NDArray, nd.NDArray]:
    """``(folded_weight, folded_bias)`` of one layer equal to layer, then inference BN.

    weight: (C_out, C_in) for ``gluon.nn.Dense`` or (C_out, C_in, kh, kw) for
    ``gluon.nn.Conv2D`` (Gluon's layouts: output channels first); bias: (C_out,) or None
    (a layer with use_bias=False); gamma, beta, moving_mean, moving_var: (C_out,).
    The folded bias is always returned, (C_out,).
    """
    if not isinstance(weight, nd.NDArray) or weight.ndim < 2:
        got = getattr(weight, 'shape', type(weight).__name__)
        raise ValueError("weight must be an NDArray with output channels first, "
                         f"(C_out, C_in) or (C_out, C_in, kh, kw); got {got}")
    check_float_array("weight", weight)
    eps = check_eps(eps)
    c_out = weight.shape[0]
    vectors = [("gamma", gamma), ("beta", beta), ("moving_mean", moving_mean),
               ("moving_var", moving_var)]
    if bias is not None:
        vectors.append(("bias", bias))
    for name, value in vectors:
        _need(name, value, (c_out,), weight)
    scale = gamma / nd.sqrt(moving_var + eps)                       # (C_out,)
    folded_weight = weight * scale.reshape((c_out,) + (1,) * (weight.ndim - 1))
    z_bias = bias if bias is not None else nd.zeros_like(moving_mean)
    folded_bias = scale * (z_bias - moving_mean) + beta
    return folded_weight, folded_bias


def batch_norm_inference_params(bn) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray, nd.NDArray, float]:
    """``(gamma, beta, moving_mean, moving_var, eps)`` of a ``d2lbn.norm.BatchNorm`` or a
    ``gluon.nn.BatchNorm`` (whose ``scale=False`` means gamma is fixed at 1), on their first context."""
    if isinstance(bn, BatchNorm):
        return (bn.gamma.data(), bn.beta.data(), bn.moving_mean.data(), bn.moving_var.data(), bn.eps)
    if isinstance(bn, gluon.nn.BatchNorm):
        kwargs = bn._kwargs
        if kwargs.get("axis", 1) != 1:
            raise ValueError(f"only channel axis 1 can be folded; this BatchNorm uses axis={kwargs['axis']}")
        gamma = bn.gamma.data()
        if kwargs.get("fix_gamma", False):
            gamma = nd.ones_like(gamma)
        return gamma, bn.beta.data(), bn.running_mean.data(), bn.running_var.data(), kwargs["eps"]
    raise TypeError(f"bn must be a d2lbn.norm.BatchNorm or a gluon.nn.BatchNorm; got {type(bn).__name__}")


def fold_layer_and_batch_norm(layer, bn) -> Tuple[nd.NDArray, nd.NDArray]:
    """Fold ``bn`` into ``layer`` (a ``gluon.nn.Dense`` or ``gluon.nn.Conv2D`` without activation that
    feeds it directly); return ``(weight, bias)`` for an otherwise identical layer with ``use_bias=True``."""
    if not isinstance(layer, (gluon.nn.Dense, gluon.nn.Conv2D)):
        raise TypeError(f"layer must be a gluon.nn.Dense or gluon.nn.Conv2D; got {type(layer).__name__}")
    if getattr(layer, "act", None) is not None:
        raise ValueError(f"{layer.name} has an activation between it and the batch norm; only an affine "
                         "layer followed directly by batch norm can be folded")
    bias = layer.bias.data() if layer.bias is not None else None
    gamma, beta, mean, var, eps = batch_norm_inference_params(bn)
    return fold_batch_norm(layer.weight.data(), bias, gamma, beta, mean, var, eps=eps)
