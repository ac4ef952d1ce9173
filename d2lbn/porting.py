"""Weights carried between MXNet and PyTorch, Keras layouts read (the frameworks appendix, tests).

The porting recipe: the LeNets of :mod:`d2lbn.models` (and any ``Sequential`` of the layers below)
map layer for layer:

==================================  ===============================  ===================================
MXNet (Gluon / d2lbn)               PyTorch                          what is carried
==================================  ===============================  ===================================
``nn.Conv2D``                       ``nn.Conv2d``                    weight (O, I, kh, kw), bias (O,)
``nn.Dense`` (flattens its input)   ``nn.Flatten`` + ``nn.Linear``   weight (out, in), bias (out,)
``d2lbn.norm.BatchNorm``,           ``nn.BatchNorm1d`` (2-D input),  gamma -> weight, beta -> bias,
``nn.BatchNorm`` (axis 1)           ``nn.BatchNorm2d`` (4-D input)   moving_mean/var -> running_mean/var
``nn.Activation``                   ``nn.ReLU`` / ``Sigmoid`` / ``Tanh``
``nn.MaxPool2D``, ``nn.AvgPool2D``  ``nn.MaxPool2d``, ``nn.AvgPool2d``
==================================  ===============================  ===================================

Both frameworks store convolution and dense weights output-channel first and flatten (N, C, H, W) in
C, H, W order, so the arrays are copied unchanged. Two conventions differ and are converted or stated:

* momentum: MXNet's ``moving = momentum * moving + (1 - momentum) * batch`` (0.9) is PyTorch's
  ``momentum = 1 - 0.9 = 0.1`` (``running = (1 - momentum) * running + momentum * batch``);
  :func:`to_torch` sets it.
* the stored variance: MXNet on the CPU (and d2lbn) averages the *biased* batch variance, PyTorch the
  *unbiased* one (x m/(m-1)). The moving statistics are copied as they are, so inference predictions
  agree to float32 rounding (the way back, PyTorch -> MXNet, copies every value bit for bit); a net
  trained on in the other framework then mixes the two conventions.
* eps is copied (d2lbn and Gluon default to 1e-5, as PyTorch does).

Keras stores a Conv2D kernel as (kh, kw, I, O) and a Dense kernel as (in, out), and flattens
(N, H, W, C) in H, W, C order: :func:`conv_kernel_from_keras` and :func:`dense_kernel_from_keras`
give MXNet's layouts.

PyTorch is imported inside the functions that need it, never at module level: d2lbn stays importable
without it (the frameworks tier, ``make test-frameworks``, installs it).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from .norm import BatchNorm

__all__ = ["to_torch", "copy_to_torch", "copy_to_mxnet", "layer_pairs", "mxnet_layers",
           "torch_layers", "conv_kernel_from_keras", "dense_kernel_from_keras"]

_ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("d2lbn.porting needs PyTorch for this; install it "
                          "(make test-frameworks builds .venv-frameworks with it)"
                          ) from err
    return torch


def _is_batch_norm(block) -> bool:
    return isinstance(block, (BatchNorm, nn.BatchNorm))


def _children(net: gluon.Block) -> List[gluon.Block]:
    return list(net._children.values())


def mxnet_layers(net: gluon.Block) -> List[gluon.Block]:
    """The layers of ``net`` that carry weights (Conv2D, Dense, batch norm), in
    order, nested Sequentials included."""
    found: List[gluon.Block] = []
    for child in _children(net):
        if isinstance(child, (nn.Conv2D, nn.Dense)) or _is_batch_norm(child):
            found.append(child)
        elif _children(child):
            found.extend(mxnet_layers(child))
    return found


def torch_layers(module) -> list:
    """The modules of ``module`` that carry weights (Conv2d, Linear, BatchNorm*),
    in order."""
    torch = _torch()
    kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm)
    return [m for m in module.modules() if isinstance(m, kinds)]


def _check_initialized(net: gluon.Block) -> None:
    for name, param in net.collect_params().items():
        if param._data is None:
            raise ValueError(f"{name} has no value yet: initialize the net and run "
                             "one batch through it first (Gluon infers the input "
                             "sizes then)")


def _bn_params(bn) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray, nd.NDArray]:
    """(gamma, beta, moving mean, moving variance) of a d2lbn or Gluon layer."""
    if isinstance(bn, BatchNorm):
        return (bn.gamma.data(), bn.beta.data(), bn.moving_mean.data(),
                bn.moving_var.data())
    kw = bn._kwargs
    if kw.get("axis", 1) != 1:
        raise ValueError(f"{bn.name} normalises axis {kw['axis']}; only axis 1 "
                         "(channels first, as in PyTorch) is ported")
    if kw.get("use_global_stats", False):
        raise ValueError(f"{bn.name} has use_global_stats=True (moving statistics "
                         "in training mode too), which PyTorch's BatchNorm has no "
                         "switch for; not ported")
    if kw.get("fix_gamma", False):
        raise ValueError(f"{bn.name} has fix_gamma=True (gamma fixed at 1): build "
                         "it with fix_gamma=False, or set gamma to ones, first")
    return (bn.gamma.data(), bn.beta.data(), bn.running_mean.data(),
            bn.running_var.data())


def _bn_settings(bn) -> Tuple[float, float]:
    """(eps, MXNet momentum) of a d2lbn or Gluon batch-norm layer."""
    if isinstance(bn, BatchNorm):
        return bn.eps, bn.momentum
    return float(bn._kwargs["eps"]), float(bn._kwargs["momentum"])


def _names(layers) -> str:
    return ", ".join(type(layer).__name__ for layer in layers)


def layer_pairs(net: gluon.Block, module) -> list:
    """``[(mxnet_layer, torch_module), ...]`` for the weight-carrying layers of
    both nets, in order; ``ValueError`` naming the first pair whose kinds or
    weight shapes differ."""
    torch = _torch()
    ours, theirs = mxnet_layers(net), torch_layers(module)
    if len(ours) != len(theirs):
        raise ValueError(f"the MXNet net has {len(ours)} layers with weights "
                         f"({_names(ours)}) but the PyTorch module has "
                         f"{len(theirs)} ({_names(theirs)})")
    _check_initialized(net)
    bn_kind = torch.nn.modules.batchnorm._BatchNorm
    pairs = []
    for i, (block, mod) in enumerate(zip(ours, theirs)):
        if isinstance(block, (nn.Conv2D, nn.Dense)):
            kind = torch.nn.Conv2d if isinstance(block, nn.Conv2D) else torch.nn.Linear
            ok = isinstance(mod, kind)
            mine = block.weight.shape
        else:
            ok = (isinstance(mod, bn_kind) and mod.affine
                  and mod.track_running_stats)
            mine = _bn_params(block)[0].shape
        yours = tuple(mod.weight.shape) if getattr(mod, "weight", None) is not None \
            else None
        if not ok or mine != yours:
            raise ValueError(f"layer {i}: {type(block).__name__} {mine} does not "
                             f"match {mod!r} {yours} (batch norm needs affine=True "
                             "and track_running_stats=True)")
        pairs.append((block, mod))
    return pairs


def _set_torch(tensor, array: nd.NDArray) -> None:
    torch = _torch()
    value = torch.from_numpy(np.ascontiguousarray(array.asnumpy()))
    with torch.no_grad():
        tensor.copy_(value.to(tensor.dtype))


def _set_mxnet(param: gluon.Parameter, tensor) -> None:
    value = tensor.detach().cpu().numpy()
    if param.shape != value.shape:
        raise ValueError(f"{param.name}: shape {param.shape}, PyTorch gives "
                         f"{value.shape}")
    param.set_data(nd.array(value, dtype=param.dtype))


def _no_bias(block, mod) -> ValueError:
    return ValueError(f"{block.name} has a bias but {mod!r} has none")


def copy_to_torch(net: gluon.Block, module) -> None:
    """Copy every weight, bias and moving statistic of the MXNet ``net`` into
    the PyTorch ``module`` (the same layers in the same order: see
    :func:`layer_pairs`). Moving statistics are copied as stored (MXNet's
    biased variance stays biased). The batch-norm eps is set from MXNet's;
    the momentum is left alone (:func:`to_torch` converts it)."""
    for block, mod in layer_pairs(net, module):
        if _is_batch_norm(block):
            gamma, beta, mean, var = _bn_params(block)
            _set_torch(mod.weight, gamma)
            _set_torch(mod.bias, beta)
            _set_torch(mod.running_mean, mean)
            _set_torch(mod.running_var, var)
            mod.eps = _bn_settings(block)[0]
            continue
        _set_torch(mod.weight, block.weight.data())
        if block.bias is not None:
            if mod.bias is None:
                raise _no_bias(block, mod)
            _set_torch(mod.bias, block.bias.data())
        elif mod.bias is not None:
            with _torch().no_grad():
                mod.bias.zero_()


def copy_to_mxnet(module, net: gluon.Block) -> None:
    """Copy every weight, bias and running statistic of the PyTorch ``module``
    into the MXNet ``net`` (initialised; the same layers in the same order);
    the inverse of :func:`copy_to_torch`."""
    for block, mod in layer_pairs(net, module):
        if _is_batch_norm(block):
            if isinstance(block, BatchNorm):
                moving = (block.moving_mean, block.moving_var)
            else:
                moving = (block.running_mean, block.running_var)
            params = (block.gamma, block.beta) + moving
            values = (mod.weight, mod.bias, mod.running_mean, mod.running_var)
            for param, tensor in zip(params, values):
                _set_mxnet(param, tensor)
            eps = _bn_settings(block)[0]
            if abs(eps - mod.eps) > 1e-12:
                raise ValueError(f"{block.name} has eps={eps:g} but {mod!r} has "
                                 f"eps={mod.eps:g}; build the MXNet layer with "
                                 "the same eps")
            continue
        _set_mxnet(block.weight, mod.weight)
        if block.bias is not None:
            if mod.bias is None:
                raise _no_bias(block, mod)
            _set_mxnet(block.bias, mod.bias)


def _activation(name: str):
    torch = _torch()
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} has no PyTorch twin here; one of "
                         f"{sorted(_ACTIVATIONS)}")
    return getattr(torch.nn, _ACTIVATIONS[name])()


def _pool(block):
    torch = _torch()
    kw = block._kwargs
    if (kw.get("global_pool") or kw.get("layout", "NCHW") != "NCHW"
            or kw.get("pooling_convention", "valid") != "valid"):
        raise ValueError(f"{block.name}: only plain NCHW pooling with "
                         "pooling_convention='valid' (PyTorch's floor mode) "
                         "is ported")
    size = dict(stride=tuple(kw["stride"]), padding=tuple(kw["pad"]))
    if kw["pool_type"] == "max":
        return torch.nn.MaxPool2d(tuple(kw["kernel"]), **size)
    if kw["pool_type"] == "avg":
        return torch.nn.AvgPool2d(tuple(kw["kernel"]), **size,
                                  count_include_pad=kw.get("count_include_pad", True))
    raise ValueError(f"{block.name}: pool type {kw['pool_type']!r} is not ported")


def _conv(block):
    torch = _torch()
    kw = block._kwargs
    if kw.get("layout", "NCHW") != "NCHW" or kw.get("num_group", 1) != 1:
        raise ValueError(f"{block.name}: only NCHW convolutions without groups "
                         "are ported")
    out_ch, in_ch = block.weight.shape[:2]
    return torch.nn.Conv2d(in_ch, out_ch, tuple(kw["kernel"]),
                           stride=tuple(kw["stride"]), padding=tuple(kw["pad"]),
                           dilation=tuple(kw["dilate"]),
                           bias=block.bias is not None)


def to_torch(net: gluon.Block, input_shape: Optional[Sequence[int]] = None):
    """A ``torch.nn.Sequential`` equal to the MXNet ``net``, weights and moving
    statistics copied (:func:`copy_to_torch`), the batch-norm momentum converted
    (PyTorch's = 1 - MXNet's).

    ``net``: a ``Sequential``/``HybridSequential`` of the layers in this module's
    table (any LeNet of :mod:`d2lbn.models`), initialised with its input sizes
    known (run one batch through it first). ``input_shape`` (e.g.
    ``(N, 1, 28, 28)``) only sets the rank the first layer sees; by default a net
    starting with a convolution sees 4-D input, one starting with a Dense 2-D
    input. The module comes back in training mode, as a new module is.
    """
    torch = _torch()
    _check_initialized(net)
    blocks = _children(net)
    if not blocks:
        raise ValueError(f"{net.name} has no layers to port")
    if input_shape is not None:
        rank = len(input_shape)
    else:
        rank = 4 if isinstance(blocks[0], nn.Conv2D) else 2
    layers = []
    for block in blocks:
        if isinstance(block, nn.Conv2D):
            layers.append(_conv(block))
            rank = 4
        elif isinstance(block, nn.Dense):
            if rank != 2:
                if not block._flatten:
                    raise ValueError(f"{block.name} has flatten=False on "
                                     f"{rank}-D input; not ported")
                layers.append(torch.nn.Flatten())
                rank = 2
            out_units, in_units = block.weight.shape
            layers.append(torch.nn.Linear(in_units, out_units,
                                          bias=block.bias is not None))
        elif _is_batch_norm(block):
            eps, momentum = _bn_settings(block)
            size = _bn_params(block)[0].shape[0]
            kind = torch.nn.BatchNorm2d if rank == 4 else torch.nn.BatchNorm1d
            layers.append(kind(size, eps=eps, momentum=round(1.0 - momentum, 12)))
        elif isinstance(block, nn.Activation):
            layers.append(_activation(block._act_type))
        elif isinstance(block, (nn.MaxPool2D, nn.AvgPool2D)):
            layers.append(_pool(block))
        elif isinstance(block, nn.Flatten):
            layers.append(torch.nn.Flatten())
            rank = 2
        else:
            raise TypeError(f"{type(block).__name__} ({block.name}) has no PyTorch "
                            "twin in d2lbn.porting; supported: Conv2D, Dense, "
                            "BatchNorm (d2lbn or Gluon), Activation, MaxPool2D, "
                            "AvgPool2D, Flatten")
        if isinstance(block, (nn.Conv2D, nn.Dense)) and block.act is not None:
            layers.append(_activation(block.act._act_type))
    module = torch.nn.Sequential(*layers)
    copy_to_torch(net, module)
    return module


def conv_kernel_from_keras(kernel) -> np.ndarray:
    """A Keras ``Conv2D`` kernel (kh, kw, I, O) in MXNet's and PyTorch's layout
    (O, I, kh, kw)."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError("a Keras Conv2D kernel is (kh, kw, in, out); got shape "
                         f"{kernel.shape}")
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def dense_kernel_from_keras(kernel,
                            flattened_from: Optional[Sequence[int]] = None
                            ) -> np.ndarray:
    """A Keras ``Dense`` kernel (in, out) in MXNet's and PyTorch's layout
    (out, in).

    ``flattened_from=(H, W, C)``: the Dense follows a ``Flatten`` of
    channels-last (N, H, W, C) maps, whose order H, W, C differs from MXNet's
    C, H, W; the input rows are reordered so that the MXNet Dense, fed the
    flattened (N, C, H, W) maps, computes the same outputs."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError("a Keras Dense kernel is (in, out); got shape "
                         f"{kernel.shape}")
    if flattened_from is not None:
        h, w, c = flattened_from
        if h * w * c != kernel.shape[0]:
            raise ValueError(f"flattened_from={tuple(flattened_from)} gives "
                             f"{h * w * c} inputs; the kernel has {kernel.shape[0]}")
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3)
        kernel = kernel.reshape(h * w * c, -1)
    return np.ascontiguousarray(kernel.T)
