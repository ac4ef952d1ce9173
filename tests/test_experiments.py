"""Quick checks of d2lbn.experiments: loaders, training-mode evaluation, Figure 1's net and measures,
the sweep bookkeeping, and the batch-mean noise against its formula (small data, seconds each)."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import experiments as E


def test_array_loader_visits_every_example_once_per_pass():
    X = nd.arange(10).reshape((10, 1))
    y = nd.arange(10)
    d2lbn.set_seed(0)
    loader = E.ArrayLoader(X, y, 4, shuffle=True)
    assert len(loader) == 3
    seen = np.concatenate([yb.asnumpy() for _, yb in loader])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for Xb, yb in loader:
        np.testing.assert_array_equal(Xb.asnumpy()[:, 0], yb.asnumpy())   # rows stay paired
    with pytest.raises(ValueError, match="batch_size"):
        E.ArrayLoader(X, y, 0)


def _bn_mlp(rng):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(8, in_units=5), d2lbn.norm.BatchNorm(8, 2, impl="naive"), gluon.nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier())
    return net


def test_frozen_moving_statistics_restores(rng):
    net = _bn_mlp(rng)
    bn = net[1]
    before = bn.moving_mean.data().asnumpy().copy()
    with E.frozen_moving_statistics(net), autograd.train_mode():
        net(nd.array(rng.normal(5, 1, size=(16, 5))))
        assert not np.allclose(bn.moving_mean.data().asnumpy(), before)   # it did move inside
    np.testing.assert_array_equal(bn.moving_mean.data().asnumpy(), before)


def test_train_mode_accuracy_uses_batch_statistics(rng):
    """With moving statistics far from the data, inference and training mode disagree; for a net
    without batch norm they agree exactly."""
    X = nd.array(rng.normal(3, 2, size=(64, 5)))
    y = nd.array(rng.integers(0, 3, size=64))
    net = _bn_mlp(rng)
    loader = E.ArrayLoader(X, y, 16)
    train_scores = []
    with E.frozen_moving_statistics(net), autograd.train_mode():
        for Xb, _ in loader:
            train_scores.append(net(Xb).argmax(axis=1).asnumpy())
    expected = float((np.concatenate(train_scores) == y.asnumpy()).mean())
    assert E.train_mode_accuracy(net, loader, mx.cpu()) == pytest.approx(expected)
    plain = gluon.nn.Dense(3, in_units=5)
    plain.initialize()
    assert E.train_mode_accuracy(plain, loader, mx.cpu()) == E.accuracy(plain, loader, mx.cpu())


def test_sigmoid_mlp_shapes_and_sigmoid_inputs(rng):
    X = nd.array(rng.uniform(size=(50, 784)))
    for batch_norm in (False, True):
        d2lbn.set_seed(0)
        net = E.SigmoidMLP(batch_norm)
        net.initialize()
        assert net(X).shape == (50, 10)
        Z = net.sigmoid_inputs(X).asnumpy()
        assert Z.shape == (50, 100)
        if batch_norm:       # gamma = 1, beta = 0 at the start: every unit's input is standardised
            np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-4)
            np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-2)
            np.testing.assert_array_equal(net.norms[-1].moving_mean.data().asnumpy(), 0)   # untouched
        else:                # by hand: three dense layers, sigmoids between
            H = X
            for layer in net.dense[:-1]:
                H = nd.sigmoid(layer(H))
            np.testing.assert_allclose(Z, net.dense[-1](H).asnumpy(), rtol=1e-5, atol=1e-6)


def _result(accs, percentiles):
    r = E.Figure1Result(True, steps=[0, 10, 20, 30], test_acc=accs)
    r.percentiles = np.asarray(percentiles, dtype=float)
    return r


def test_steps_to_accuracy_and_drift():
    p = np.zeros((4, 3, 2))
    p[:, 1, 0] = [0.0, 1.0, 3.0, 2.0]                 # one curve moves by 3 over training
    r = _result([0.1, 0.5, 0.8, 0.7], p)
    assert E.steps_to_accuracy(r, 0.8) == 20
    assert E.steps_to_accuracy(r, 0.5) == 10
    assert E.steps_to_accuracy(r, 0.9) is None
    assert E.percentile_drift(r) == pytest.approx(3.0 / 6)    # mean over 3 percentiles x 2 units
    assert E.percentile_drift(r, start_step=20) == pytest.approx(1.0 / 6)


def test_batch_mean_noise_follows_one_over_sqrt_batch(rng):
    X = nd.array(rng.normal(0, 2, size=(5000, 3)))
    d2lbn.set_seed(0)
    for b in (4, 64):
        measured, predicted = E.batch_mean_noise(X, b, num_batches=400)
        assert predicted == pytest.approx(2 / np.sqrt(b), rel=0.05)
        assert measured == pytest.approx(predicted, rel=0.15)


def test_lenet_with_norm_variants():
    X = nd.random.uniform(shape=(2, 1, 28, 28))
    for norm in (None, "batch", "layer"):
        net = E.lenet_with_norm(norm)
        net.initialize()
        assert net(X).shape == (2, 10)
    assert any(isinstance(b, d2lbn.norm.LayerNorm) for b in E.lenet_with_norm("layer")._children.values())
    with pytest.raises(ValueError, match="norm"):
        E.lenet_with_norm("group")


def test_short_run_reports_divergence_and_failures():
    d2lbn.set_seed(0)
    X = nd.random.uniform(shape=(128, 1, 28, 28))
    y = nd.array(np.arange(128) % 10)
    data = (X, y, X[:64], y[:64])
    blown = E.short_run(None, 1e4, data, sigma=10.0)           # huge weights, huge steps
    ok = E.short_run(None, 0.05, data)
    assert blown.diverged and blown.final_acc == 0.1
    assert not ok.diverged and len(ok.test_acc) == 1
    assert E.failures([blown, ok], below=0.0) == [blown]


def test_settle_moving_statistics_reaches_the_current_statistics(rng):
    """After 50 training-mode passes (momentum 0.9) the moving mean is within 1% of the data's
    batch statistics, starting from 0; the weights do not change."""
    net = gluon.nn.Sequential()
    net.add(d2lbn.norm.BatchNorm(3, 2, impl="naive"))
    net.initialize()
    X = nd.array(rng.normal([5.0, -2.0, 10.0], 1.0, size=(640, 3)))
    E.settle_moving_statistics(net, E.ArrayLoader(X, nd.zeros(640), 64), 50, mx.cpu())
    np.testing.assert_allclose(net[0].moving_mean.data().asnumpy(), X.asnumpy().mean(axis=0), rtol=0.01, atol=0.05)
    np.testing.assert_array_equal(net[0].gamma.data().asnumpy(), 1)
