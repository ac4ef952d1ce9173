"""Tests of d2lbn.adapt (ch13, TENT) against NumPy and a numerical gradient of the entropy."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon, nd
from mxnet.gluon import nn

from d2lbn.adapt import entropy, make_tent_trainer, norm_affine_params, tent, tent_step

EPS = 1e-5


def test_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    S = rng.normal(0, 3, (6, 4))
    p = np.exp(S - S.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(entropy(nd.array(S, dtype="float64")).asnumpy(),
                               -(p * np.log(p)).sum(1), rtol=1e-12)
    uniform = entropy(nd.zeros((2, 5), dtype="float64")).asnumpy()
    np.testing.assert_allclose(uniform, np.log(5), rtol=1e-12)
    with pytest.raises(ValueError, match="shape \\(N, K\\)"):
        entropy(nd.zeros(3))


def small_net(seed=0):
    mx.random.seed(seed)
    net = nn.Sequential()
    net.add(nn.Dense(6, in_units=4), nn.BatchNorm(in_channels=6, epsilon=EPS),
            nn.Activation("tanh"), nn.Dense(3, in_units=6))
    net.initialize(mx.init.Normal(0.7))
    net.cast("float64")
    bn = net[1]
    rng = np.random.default_rng(seed)
    bn.gamma.set_data(nd.array(rng.normal(1, 0.3, 6), dtype="float64"))
    bn.beta.set_data(nd.array(rng.normal(0, 0.3, 6), dtype="float64"))
    return net


def numpy_mean_entropy(net, X, gamma, beta):
    W1, b1 = net[0].weight.data().asnumpy(), net[0].bias.data().asnumpy()
    W2, b2 = net[3].weight.data().asnumpy(), net[3].bias.data().asnumpy()
    H = X @ W1.T + b1
    H = gamma * (H - H.mean(0)) / np.sqrt(H.var(0) + EPS) + beta     # test-batch statistics
    S = np.tanh(H) @ W2.T + b2
    S = S - S.max(1, keepdims=True)
    log_p = S - np.log(np.exp(S).sum(1, keepdims=True))
    return float(-(np.exp(log_p) * log_p).sum(1).mean())


def test_tent_gradient_against_numerical_gradient():
    """TENT's gradient of the mean entropy on gamma and beta, with the test batch's
    statistics, equals central differences of a float64 NumPy forward pass; the SGD step
    moves gamma and beta by -lr * that gradient and leaves every other weight alone."""
    net = small_net()
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (8, 4))
    gamma, beta = (p.data().asnumpy().copy() for p in norm_affine_params(net))
    others = {n: p.data().asnumpy().copy() for n, p in net.collect_params().items()
              if not n.endswith(("gamma", "beta", "running_mean", "running_var"))}
    lr = 0.1
    trainer = make_tent_trainer(net, lr, momentum=0.0)
    tent_step(net, nd.array(X, dtype="float64"), trainer)
    h = 1e-6
    for which, base in (("gamma", gamma), ("beta", beta)):
        num = np.zeros(6)
        for k in range(6):
            up, down = base.copy(), base.copy()
            up[k] += h
            down[k] -= h
            args = {"gamma": gamma, "beta": beta}
            args_up, args_down = dict(args), dict(args)
            args_up[which], args_down[which] = up, down
            num[k] = (numpy_mean_entropy(net, X, **args_up)
                      - numpy_mean_entropy(net, X, **args_down)) / (2 * h)
        param = getattr(net[1], which)
        np.testing.assert_allclose(param.grad().asnumpy(), num, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(param.data().asnumpy(), base - lr * num, rtol=1e-6,
                                   atol=1e-9)
    for n, p in net.collect_params().items():
        if n in others:
            np.testing.assert_array_equal(p.data().asnumpy(), others[n])


def test_tent_lowers_entropy_and_returns_stream_scores():
    net = small_net(2)
    X = nd.array(np.random.default_rng(3).normal(0, 1, (32, 4)), dtype="float64")
    from mxnet import autograd
    with autograd.train_mode():                 # test-batch statistics, as TENT uses
        before = float(entropy(net(X)).mean().asscalar())
    scores = tent(net, [X[:16], X[16:]], lr=0.5, steps=5, momentum=0.0)
    assert scores.shape == (32, 3)
    with autograd.train_mode():
        after = float(entropy(net(X)).mean().asscalar())
    assert after < before


def test_tent_bad_arguments():
    net = small_net()
    X = nd.ones((4, 4), dtype="float64")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        tent(net, [X], lr=0.1, steps=0)
    with pytest.raises(ValueError, match="lr must be"):
        tent(net, [X], lr=0.0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        tent(net, [X[:1]], lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        make_tent_trainer(net, 0.1, optimizer="rmsprop")
    plain = nn.Dense(3, in_units=4)
    plain.initialize()
    with pytest.raises(ValueError, match="no batch-norm layers"):
        norm_affine_params(plain)
