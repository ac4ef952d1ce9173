"""A small residual network with batch normalization for Fashion-MNIST ("Using Batch Norm Well", ch09).

``X: (N, 1, 28, 28)`` -> scores ``(N, 10)``. Layout, for ``widths=(c1, c2, c3)`` and
``blocks_per_stage=b``:

======================================  ================  ===========================
layer                                   output shape      note
======================================  ================  ===========================
Conv2D(c1, 3x3, stride 2, pad 1), BN,   (N, c1, 14, 14)   the stem
ReLU
b basic blocks of width c1              (N, c1, 14, 14)   identity shortcuts
b basic blocks of width c2              (N, c2, 7, 7)     the first has stride 2 and
                                                          a 1x1 projection shortcut
                                                          (+ BN)
b basic blocks of width c3              (N, c3, 4, 4)     likewise
global average pooling, Dense(10)       (N, 10)
======================================  ================  ===========================

A basic block (He et al., 2016) computes
``relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))))`` with 3x3 convolutions without
bias (batch norm's beta takes its role). With ``zero_gamma=True`` the gamma of ``bn2``,
the last batch-norm layer of each residual branch, starts at 0 instead of 1 (Goyal et
al., 2017): every branch then outputs 0 at initialisation, so a block with an identity
shortcut computes ``relu(x) = x`` (its input is already the output of a ReLU) and the
network starts as a shallow one.
"""
from __future__ import annotations

from typing import List, Sequence

from mxnet import gluon
from mxnet.gluon import nn

from .checks import check_int

__all__ = ["BasicBlock", "SmallResNet", "small_resnet", "residual_gammas",
           "count_parameters"]


class BasicBlock(nn.HybridBlock):
    """A residual basic block: two 3x3 convolutions with batch norm, and a shortcut.

    X: (N, in_channels, H, W) -> (N, channels, ceil(H / stride), ceil(W / stride)).
    The shortcut is the identity when ``stride == 1`` and ``in_channels == channels``,
    otherwise a 1x1 convolution of stride ``stride`` followed by batch norm.
    ``zero_gamma``: initialise the gamma of the branch's last batch-norm layer (``bn2``)
    to 0 rather than 1.
    """

    def __init__(self, channels: int, in_channels: int, stride: int = 1,
                 zero_gamma: bool = False, **kwargs):
        super().__init__(**kwargs)
        channels = check_int("channels", channels)
        in_channels = check_int("in_channels", in_channels)
        stride = check_int("stride", stride, what="1 or 2")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride!r}")
        self.projection = stride != 1 or in_channels != channels
        with self.name_scope():
            self.conv1 = nn.Conv2D(channels, 3, strides=stride, padding=1,
                                   use_bias=False, in_channels=in_channels)
            self.bn1 = nn.BatchNorm(in_channels=channels)
            self.conv2 = nn.Conv2D(channels, 3, padding=1, use_bias=False,
                                   in_channels=channels)
            self.bn2 = nn.BatchNorm(in_channels=channels,
                                    gamma_initializer="zeros" if zero_gamma else "ones")
            if self.projection:
                self.short_conv = nn.Conv2D(channels, 1, strides=stride, use_bias=False,
                                            in_channels=in_channels)
                self.short_bn = nn.BatchNorm(in_channels=channels)

    def branch(self, F, x):
        """The residual branch alone: bn2(conv2(relu(bn1(conv1(x)))))."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def hybrid_forward(self, F, x):
        shortcut = self.short_bn(self.short_conv(x)) if self.projection else x
        return F.relu(self.branch(F, x) + shortcut)


class SmallResNet(nn.HybridSequential):
    """The network of the module docstring: a stem, three stages of basic blocks,
    pooling, Dense(10).

    widths: the channels of the three stages; blocks_per_stage: basic blocks in each
    stage; zero_gamma: passed to every :class:`BasicBlock`. X: (N, 1, 28, 28) -> (N,
    10).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1,
                 zero_gamma: bool = False, **kwargs):
        super().__init__(**kwargs)
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError("widths must name the channels of 3 stages; "
                             f"got {widths!r}")
        widths = tuple(check_int("each of widths", w) for w in widths)
        blocks_per_stage = check_int("blocks_per_stage", blocks_per_stage)
        self.widths, self.blocks_per_stage, self.zero_gamma = (
            widths, blocks_per_stage, bool(zero_gamma))
        with self.name_scope():
            self.add(nn.Conv2D(widths[0], 3, strides=2, padding=1, use_bias=False,
                               in_channels=1),
                     nn.BatchNorm(in_channels=widths[0]), nn.Activation("relu"))
            in_channels = widths[0]
            for stage, channels in enumerate(widths):
                for i in range(blocks_per_stage):
                    stride = 2 if stage > 0 and i == 0 else 1
                    self.add(BasicBlock(channels, in_channels, stride, zero_gamma))
                    in_channels = channels
            self.add(nn.GlobalAvgPool2D(), nn.Dense(10, in_units=in_channels))

    def blocks(self) -> List[BasicBlock]:
        """The basic blocks, in order."""
        return [child for child in self._children.values()
                if isinstance(child, BasicBlock)]


def small_resnet(zero_gamma: bool = False, widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int = 1) -> SmallResNet:
    """A new, uninitialised :class:`SmallResNet`. X: (N, 1, 28, 28) -> (N, 10)."""
    return SmallResNet(widths, blocks_per_stage, zero_gamma)


def residual_gammas(net: SmallResNet) -> List[gluon.Parameter]:
    """The gamma of the last batch-norm layer of every residual branch (what
    ``zero_gamma`` sets)."""
    if not isinstance(net, SmallResNet):
        raise TypeError(f"net must be a SmallResNet; got {type(net).__name__}")
    return [block.bn2.gamma for block in net.blocks()]


def count_parameters(net: gluon.Block, trainable_only: bool = False) -> int:
    """Number of scalar parameters of an initialised ``net`` (all, or those with a
    gradient)."""
    total = 0
    for p in net.collect_params().values():
        if trainable_only and p.grad_req == "null":
            continue
        size = 1
        for d in p.shape:
            size *= d
        total += size
    return total
