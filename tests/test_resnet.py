"""d2lbn.resnet: shapes, parameter count (against a count written out by hand from the layer list),
the zero-gamma initialiser and what it implies (each residual branch outputs 0 at initialisation)."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn import resnet as R


def expected_parameters(widths, blocks_per_stage, trainable_only=False):
    """Parameter count of SmallResNet from its layer list (module docstring), independently of Gluon.
    A batch-norm layer of c channels holds gamma, beta (trained) and a moving mean and variance."""
    bn = (lambda c: 2 * c) if trainable_only else (lambda c: 4 * c)
    total = 3 * 3 * 1 * widths[0] + bn(widths[0])                       # stem conv (no bias) + BN
    c_in = widths[0]
    for stage, c in enumerate(widths):
        for i in range(blocks_per_stage):
            total += 3 * 3 * c_in * c + bn(c) + 3 * 3 * c * c + bn(c)    # conv1, bn1, conv2, bn2
            if c_in != c or (stage > 0 and i == 0):
                total += c_in * c + bn(c)                                # 1x1 projection + BN
            c_in = c
    return total + c_in * 10 + 10                                      # Dense(10)


@pytest.mark.parametrize("widths, blocks", [((16, 32, 64), 1), ((4, 8, 8), 2)])
def test_shapes_and_parameter_count(widths, blocks):
    net = R.small_resnet(widths=widths, blocks_per_stage=blocks)
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(3, 1, 28, 28))
    assert net(X).shape == (3, 10)
    assert len(net.blocks()) == 3 * blocks
    assert R.count_parameters(net) == expected_parameters(widths, blocks)
    assert R.count_parameters(net, trainable_only=True) == expected_parameters(widths, blocks, True)
    # the stages' outputs: 14x14, 7x7, 4x4
    h = X
    sizes = []
    for child in net._children.values():
        h = child(h)
        if isinstance(child, R.BasicBlock):
            sizes.append(h.shape[1:])
    assert sizes[blocks - 1] == (widths[0], 14, 14)
    assert sizes[2 * blocks - 1] == (widths[1], 7, 7)
    assert sizes[-1] == (widths[2], 4, 4)


def test_zero_gamma_initialiser_sets_only_the_last_gamma_of_each_branch():
    for zero in (False, True):
        net = R.small_resnet(zero_gamma=zero, widths=(4, 8, 8), blocks_per_stage=2)
        net.initialize(mx.init.Xavier())
        net(nd.zeros((1, 1, 28, 28)))
        last = R.residual_gammas(net)
        assert len(last) == 6
        for p in last:
            np.testing.assert_array_equal(p.data().asnumpy(), 0.0 if zero else 1.0)
        others = [p for name, p in net.collect_params().items()
                  if name.endswith("gamma") and all(p is not q for q in last)]
        assert len(others) == 1 + 6 + 2          # stem, bn1 of each block, two projection BNs
        for p in others:
            np.testing.assert_array_equal(p.data().asnumpy(), 1.0)
        # re-initialising with force_reinit keeps the parameter's own initialiser
        net.initialize(mx.init.Xavier(), force_reinit=True)
        np.testing.assert_array_equal(last[0].data().asnumpy(), 0.0 if zero else 1.0)


@pytest.mark.parametrize("training", [False, True])
def test_zero_gamma_block_is_the_identity_at_initialisation(training):
    """With gamma = 0 the branch outputs beta = 0, so relu(x + 0) = x for x >= 0; with gamma = 1 not."""
    rng = np.random.default_rng(0)
    x = nd.array(np.maximum(rng.normal(size=(4, 8, 7, 7)), 0))   # a ReLU output, as blocks receive
    for zero in (True, False):
        block = R.BasicBlock(8, 8, stride=1, zero_gamma=zero)
        block.initialize(mx.init.Xavier())
        with autograd.train_mode() if training else autograd.predict_mode():
            y = block(x)
        if zero:
            np.testing.assert_allclose(y.asnumpy(), x.asnumpy(), rtol=0, atol=1e-6)
        else:
            assert np.abs(y.asnumpy() - x.asnumpy()).max() > 0.1


def test_projection_block_shape_and_bad_input():
    block = R.BasicBlock(8, 4, stride=2)
    block.initialize()
    assert block.projection and block(nd.ones((2, 4, 7, 7))).shape == (2, 8, 4, 4)
    assert not R.BasicBlock(4, 4).projection
    with pytest.raises(ValueError, match="stride"):
        R.BasicBlock(8, 4, stride=3)
    with pytest.raises(ValueError, match="channels"):
        R.BasicBlock(0, 4)
    with pytest.raises(ValueError, match="widths"):
        R.small_resnet(widths=(8, 16))
    with pytest.raises(ValueError, match="blocks_per_stage"):
        R.small_resnet(blocks_per_stage=0)
    with pytest.raises(TypeError, match="net"):
        R.residual_gammas(mx.gluon.nn.Dense(3))
