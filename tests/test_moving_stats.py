"""d2lbn.moving_stats: freezing, settling, precise statistics, per-layer batch moments and the
removal of the initial values, each against a float64 NumPy computation (small nets, seconds each);
the layer finders and per-layer get/set are tested in test_diagnose.py and test_practice.py, where
the chapters' nets use them."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import data as DATA, moving_stats as MS
from d2lbn import experiments as E
from d2lbn.training import evaluate_accuracy


def _bn_mlp(rng):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(8, in_units=5), d2lbn.norm.BatchNorm(8, 2, impl="naive"), gluon.nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier())
    return net

def test_frozen_moving_statistics_restores(rng):
    net = _bn_mlp(rng)
    bn = net[1]
    before = bn.moving_mean.data().asnumpy().copy()
    with MS.frozen_moving_statistics(net), autograd.train_mode():
        net(nd.array(rng.normal(5, 1, size=(16, 5))))
        assert not np.allclose(bn.moving_mean.data().asnumpy(), before)   # it did move inside
    np.testing.assert_array_equal(bn.moving_mean.data().asnumpy(), before)

def test_train_mode_accuracy_uses_batch_statistics(rng):
    """With moving statistics far from the data, inference and training mode disagree; for a net
    without batch norm they agree exactly."""
    X = nd.array(rng.normal(3, 2, size=(64, 5)))
    y = nd.array(rng.integers(0, 3, size=64))
    net = _bn_mlp(rng)
    loader = DATA.ArrayLoader(X, y, 16)
    train_scores = []
    with MS.frozen_moving_statistics(net), autograd.train_mode():
        for Xb, _ in loader:
            train_scores.append(net(Xb).argmax(axis=1).asnumpy())
    expected = float((np.concatenate(train_scores) == y.asnumpy()).mean())
    assert MS.train_mode_accuracy(net, loader, mx.cpu()) == pytest.approx(expected)
    plain = gluon.nn.Dense(3, in_units=5)
    plain.initialize()
    assert MS.train_mode_accuracy(plain, loader, mx.cpu()) == evaluate_accuracy(plain, loader, mx.cpu())

def _dense_bn(rng, units=4, in_units=3):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(units, in_units=in_units), d2lbn.norm.BatchNorm(units, 2, impl="naive"),
            gluon.nn.Dense(3, in_units=units))
    net.initialize(mx.init.Normal(1.0))
    return net

def test_settle_moving_statistics_reaches_the_current_statistics(rng):
    """After 50 training-mode passes (momentum 0.9) the moving mean is within 1% of the data's
    batch statistics, starting from 0; the weights do not change."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize()
    X = nd.array(rng.normal([5.0, -2.0, 10.0], 1.0, size=(640, 3)))
    MS.settle_moving_statistics(net, DATA.ArrayLoader(X, nd.zeros(640), 64), 50, mx.cpu())
    np.testing.assert_allclose(net[0].moving_mean.data().asnumpy(), X.asnumpy().mean(axis=0), rtol=0.01, atol=0.05)
    np.testing.assert_array_equal(net[0].gamma.data().asnumpy(), 1)

def test_precise_statistics_is_the_equal_weight_average_of_batch_statistics(rng):
    """NumPy oracle in float64: per-batch mean and biased variance of the dense layer's output,
    combined as E[mu], E[var + mu^2] - E[mu]^2; with 7 batches from a loader of 5 the pass wraps."""
    net = _dense_bn(rng)
    X = nd.array(rng.normal(2.0, 3.0, size=(40, 3)))
    loader = DATA.ArrayLoader(X, nd.zeros(40), 8)
    W = net[0].weight.data().asnumpy().astype(np.float64)
    b = net[0].bias.data().asnumpy().astype(np.float64)
    Z = X.asnumpy().astype(np.float64) @ W.T + b
    batches = [Z[i * 8:(i + 1) * 8] for i in list(range(5)) + [0, 1]]
    mu = np.stack([z.mean(axis=0) for z in batches])
    var = np.stack([z.var(axis=0) for z in batches])
    want_mean = mu.mean(axis=0)
    want_var = (var + mu ** 2).mean(axis=0) - want_mean ** 2
    before = MS.moving_statistics(net)
    (mean, v), = MS.precise_statistics(net, loader, 7, mx.cpu())
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, want_var, rtol=1e-4, atol=1e-5)
    # five equal batches, once each: the pooled mean and variance of all 40 rows
    (mean5, v5), = MS.precise_statistics(net, loader, 5, mx.cpu())
    np.testing.assert_allclose(mean5, Z.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v5, Z.var(axis=0), rtol=1e-4, atol=1e-5)
    # the net is unchanged: moving statistics and momentum
    for (m0, v0), (m1, v1) in zip(before, MS.moving_statistics(net)):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)
    assert net[1].momentum == 0.9
    with pytest.raises(ValueError, match="num_batches"):
        MS.precise_statistics(net, loader, 0, mx.cpu())
    plain = gluon.nn.Dense(3, in_units=3)
    plain.initialize()
    with pytest.raises(ValueError, match="BatchNorm"):
        MS.precise_statistics(plain, loader, 1, mx.cpu())

def test_precise_statistics_differ_from_a_moving_average(rng):
    """A moving average after training-mode passes weighs the last batches most; with a drifting
    input the two estimates differ, and set_moving_statistics stores the precise one."""
    net = _dense_bn(rng)
    X = nd.array(np.concatenate([rng.normal(0, 1, size=(32, 3)), rng.normal(5, 1, size=(32, 3))]))
    loader = DATA.ArrayLoader(X, nd.zeros(64), 8)
    precise = MS.precise_statistics(net, loader, 8, mx.cpu())
    MS.settle_moving_statistics(net, loader, 8, mx.cpu())
    moving = MS.moving_statistics(net)
    assert np.abs(moving[0][0] - precise[0][0]).max() > 0.1
    MS.set_moving_statistics(net, precise)
    np.testing.assert_allclose(MS.moving_statistics(net)[0][0], precise[0][0], rtol=1e-6)
    with pytest.raises(ValueError, match="one .mean, var. pair"):
        MS.set_moving_statistics(net, [])
    with pytest.raises(ValueError, match="shape"):
        MS.set_moving_statistics(net, [(np.zeros(2), np.ones(2))])

def _two_bn_mlp():
    """Dense(4) -> BN -> ReLU -> Dense(3) -> BN: the second BN's input depends, in training
    mode, on the first BN's batch statistics."""
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(4, in_units=3), d2lbn.norm.BatchNorm(4, 2, impl="naive"),
            gluon.nn.Activation("relu"), gluon.nn.Dense(3, in_units=4),
            d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize(mx.init.Normal(1.0))
    return net

def _numpy_forward_to_second_bn(net, X, first_stats=None):
    """float64 oracle: the input of the second BN for the rows of X, the first BN normalising
    with the batch's own statistics (first_stats None) or with the given (mean, var)."""
    from conftest import numpy_batch_norm
    W1, b1 = net[0].weight.data().asnumpy().astype(np.float64), net[0].bias.data().asnumpy()
    W2, b2 = net[3].weight.data().asnumpy().astype(np.float64), net[3].bias.data().asnumpy()
    g1 = net[1].gamma.data().asnumpy().astype(np.float64)
    be1 = net[1].beta.data().asnumpy().astype(np.float64)
    Z1 = X @ W1.T + b1
    if first_stats is None:
        Y1 = numpy_batch_norm(Z1, g1, be1)[0]
    else:
        mean, var = first_stats
        Y1 = g1 * (Z1 - mean) / np.sqrt(var + 1e-5) + be1
    return Z1, np.maximum(Y1, 0) @ W2.T + b2

def test_layer_batch_moments_against_a_numpy_forward_pass(rng):
    """Per-batch mean and biased variance of each BN layer's input, in float64: training mode
    couples the rows of a batch through the first BN, inference mode does not."""
    net = _two_bn_mlp()
    X = rng.normal(1.0, 2.0, size=(24, 3))
    loader = DATA.ArrayLoader(nd.array(X), nd.zeros(24), 6)
    stored = [(np.array([0.5, -0.2, 0.1, 0.3]), np.array([2.0, 1.0, 3.0, 0.5])),
              (np.zeros(3), np.ones(3))]
    MS.set_moving_statistics(net, stored)
    for training in (True, False):
        got = MS.layer_batch_moments(net, loader, 4, mx.cpu(), training=training)
        firsts, seconds = [], []
        for i in range(4):
            xb = X[i * 6:(i + 1) * 6]
            z1, z2 = _numpy_forward_to_second_bn(net, xb, None if training else stored[0])
            firsts.append(z1)
            seconds.append(z2)
        for k, zs in zip(got, (firsts, seconds)):
            mu = np.stack([z.mean(axis=0) for z in zs])
            var = np.stack([z.var(axis=0) for z in zs])
            np.testing.assert_allclose(k.mean, mu.mean(axis=0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.batch_var, var.mean(axis=0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.pooled_var, np.concatenate(zs).var(axis=0),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(k.within_share, k.batch_var / k.pooled_var)
            assert k.values == 6
    for (m0, v0), (m1, v1) in zip(stored, MS.moving_statistics(net)):     # untouched
        np.testing.assert_allclose(m1, m0, rtol=1e-6)
        np.testing.assert_allclose(v1, v0, rtol=1e-6)
    assert not net[1]._forward_pre_hooks                                   # hooks removed
    with pytest.raises(ValueError, match="num_batches"):
        MS.layer_batch_moments(net, loader, 0, mx.cpu())

def test_within_batch_share_of_independent_values_is_n_minus_one_over_n(rng):
    """For independent examples the batch variance averages (m - 1) / m of the pooled one."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(50, 2, impl="naive"))
    net.initialize()
    X = nd.array(rng.normal(3.0, 2.0, size=(4000, 50)))
    (k,) = MS.layer_batch_moments(net, DATA.ArrayLoader(X, nd.zeros(4000), 4), 1000, mx.cpu())
    assert k.values == 4
    assert k.within_share.mean() == pytest.approx(0.75, abs=0.01)

def test_remove_initial_values_recovers_the_weighted_batch_average(rng):
    """t training-mode passes from (0, 1): the result equals the batches' own statistics with
    weights (1 - mom) mom^(t - k), normalised to sum to one (NumPy oracle)."""
    layer = d2lbn.norm.BatchNorm(3, 2, impl="naive")
    layer.initialize()
    batches = [rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 2), size=(5, 3)) for _ in range(7)]
    with autograd.train_mode():
        for xb in batches:
            layer(nd.array(xb))
    (mean, var), = MS.remove_initial_values(MS.moving_statistics(layer), 7, 0.9)
    w = 0.1 * 0.9 ** np.arange(6, -1, -1)
    w /= w.sum()
    np.testing.assert_allclose(mean, sum(wk * b.mean(axis=0) for wk, b in zip(w, batches)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, sum(wk * b.var(axis=0) for wk, b in zip(w, batches)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="momentum"):
        MS.remove_initial_values([(mean, var)], 3, 1.0)
    with pytest.raises(ValueError, match="num_updates"):
        MS.remove_initial_values([(mean, var)], 0)
