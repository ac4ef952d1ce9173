"""The networks of the LeNet chapters: LeNet with and without batch normalization (ch01, ch03-ch10).

All nets take Fashion-MNIST batches ``X: (N, 1, 28, 28)`` and return class scores ``(N, 10)``.
Layer by layer (the batch-norm layers are absent from plain ``lenet``):

=====================  ==========================  ======================================  ==================
layer                  output shape                parameters (shapes)                     batch norm over
=====================  ==========================  ======================================  ==================
Conv2D(6, 5x5)         (N, 6, 24, 24)              weight (6, 1, 5, 5), bias (6,)
BatchNorm(6)           (N, 6, 24, 24)              gamma, beta, moving_mean, moving_var (6,)  axes (0, 2, 3)
activation, MaxPool    (N, 6, 12, 12)
Conv2D(16, 5x5)        (N, 16, 8, 8)               weight (16, 6, 5, 5), bias (16,)
BatchNorm(16)          (N, 16, 8, 8)               gamma, ..., moving_var (16,)            axes (0, 2, 3)
activation, MaxPool    (N, 16, 4, 4)
Dense(120)             (N, 120)                    weight (120, 256), bias (120,)          (flattens 16*4*4)
BatchNorm(120)         (N, 120)                    gamma, ..., moving_var (120,)           axis 0
activation
Dense(84)              (N, 84)                     weight (84, 120), bias (84,)
BatchNorm(84)          (N, 84)                     gamma, ..., moving_var (84,)            axis 0
activation
Dense(10)              (N, 10)                     weight (10, 84), bias (10,)
=====================  ==========================  ======================================  ==================

Batch norm sits after each convolution and dense layer and *before* its activation, as in Ioffe &
Szegedy (2015). The convolutions and dense layers keep their bias so that the nets with and without
batch norm differ only by the normalization layers (with batch norm the bias is redundant: beta
takes over its role).

Names in :data:`MODELS` (use :func:`get_model`):

* ``'lenet'`` -- no batch norm (a ``HybridSequential``);
* ``'lenet-bn'`` -- the from-scratch :class:`d2lbn.norm.BatchNorm` (a ``Sequential``);
* ``'lenet-bn-gluon'`` -- MXNet's built-in ``gluon.nn.BatchNorm`` (a ``HybridSequential``; call
  ``net.hybridize()`` to compile it).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

from mxnet import gluon
from mxnet.gluon import nn

__all__ = ["ACTIVATIONS", "MODELS", "lenet", "lenet_bn", "lenet_bn_gluon", "get_model",
           "model_names", "batch_norm_layers"]

#: Activations the nets accept. ReLU is the default: with it the batch-norm LeNet passes 0.90 test
#: accuracy within 10 epochs; ``'sigmoid'`` is the activation of d2l's batch-norm LeNet (both
#: editions; they differ in learning rate and batch size, see the LeNet chapter's first exercise).
ACTIVATIONS = ("relu", "sigmoid", "tanh")

#: Convolutions (channels) and dense layers (units) of LeNet, in order.
CONV_CHANNELS = (6, 16)
DENSE_UNITS = (120, 84)
NUM_CLASSES = 10


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; "
                         f"got {activation!r}")


def _scratch_batch_norm(impl=None) -> Callable[[int, int], gluon.Block]:
    from .norm import BatchNorm

    def make(num_features: int, num_dims: int) -> gluon.Block:
        return BatchNorm(num_features, num_dims, impl=impl)
    return make


def _gluon_batch_norm(num_features: int, num_dims: int) -> gluon.Block:
    # infers num_features; normalises over axis 1 (channels or features)
    return nn.BatchNorm()


def _build(norm: Optional[Callable[[int, int], gluon.Block]],
           activation: str) -> gluon.Block:
    """LeNet with ``norm(num_features, num_dims)`` after every conv/dense layer but
    the last."""
    _check_activation(activation)
    hybrid = norm is None or norm is _gluon_batch_norm
    net = nn.HybridSequential() if hybrid else nn.Sequential()

    def block(layer: gluon.Block, num_features: int, num_dims: int) -> None:
        net.add(layer)
        if norm is not None:
            net.add(norm(num_features, num_dims))
        net.add(nn.Activation(activation))

    for channels in CONV_CHANNELS:
        block(nn.Conv2D(channels, kernel_size=5), channels, 4)
        net.add(nn.MaxPool2D(pool_size=2, strides=2))
    for units in DENSE_UNITS:
        # the first Dense flattens (N, 16, 4, 4) to (N, 256)
        block(nn.Dense(units), units, 2)
    net.add(nn.Dense(NUM_CLASSES))
    return net


def lenet(activation: str = "relu") -> nn.HybridSequential:
    """LeNet without batch normalization. X: (N, 1, 28, 28) -> scores (N, 10)."""
    return _build(None, activation)


def lenet_bn(activation: str = "relu", impl=None) -> nn.Sequential:
    """LeNet with the from-scratch ``d2lbn.norm.BatchNorm`` after each conv/dense layer, before the
    activation. X: (N, 1, 28, 28) -> scores (N, 10). ``impl`` picks the layer's implementation
    (``None``: ``d2lbn.norm.DEFAULT_IMPL``; see ``d2lbn.norm.IMPLEMENTATIONS``)."""
    return _build(_scratch_batch_norm(impl), activation)


def lenet_bn_gluon(activation: str = "relu") -> nn.HybridSequential:
    """LeNet with MXNet's ``gluon.nn.BatchNorm`` in the same places as :func:`lenet_bn`; hybridizable.
    X: (N, 1, 28, 28) -> scores (N, 10)."""
    return _build(_gluon_batch_norm, activation)


#: name -> constructor. Every constructor takes ``activation=``.
MODELS: Dict[str, Callable[..., gluon.Block]] = {
    "lenet": lenet,
    "lenet-bn": lenet_bn,
    "lenet-bn-gluon": lenet_bn_gluon,
}


def model_names() -> List[str]:
    """The names :func:`get_model` accepts."""
    return list(MODELS)


def get_model(name: str, activation: str = "relu", **kwargs) -> gluon.Block:
    """A new, uninitialised net by name (see :data:`MODELS`); ``ValueError`` for an unknown name.

    Extra keyword arguments go to the constructor (``impl=`` for ``'lenet-bn'``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(map(repr, MODELS))}")
    return MODELS[name](activation=activation, **kwargs)


def batch_norm_layers(net: gluon.Block) -> List[gluon.Block]:
    """The batch-norm layers of ``net`` (from-scratch or built-in), in order."""
    from . import norm
    kinds = tuple(k for k in (nn.BatchNorm, getattr(norm, "BatchNorm", None)) if k is not None)
    return [child for child in net._children.values() if isinstance(child, kinds)]
