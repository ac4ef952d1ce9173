"""Tests of d2lbn.cond_norm (ch13) against float64 NumPy written from the formulas and
numerical gradients."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn.cond_norm import (ConditionalBatchNorm, cross_example_share, gradient_penalty,
                             input_gradients)
from d2lbn.norm import LayerNorm, BatchNorm

EPS = 1e-5


def numpy_cbn(X, y, gamma, beta, mean=None, var=None):
    axes = (0,) if X.ndim == 2 else (0, 2, 3)
    if mean is None:
        mean, var = X.mean(axis=axes), X.var(axis=axes)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    X_hat = (X - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS)
    shape_n = (X.shape[0], -1) + (1,) * (X.ndim - 2)
    return gamma[y].reshape(shape_n) * X_hat + beta[y].reshape(shape_n), mean, var


def make_layer(C, K, dims, rng):
    layer = ConditionalBatchNorm(C, K, num_dims=dims, eps=EPS, momentum=0.8)
    layer.initialize()
    layer.cast("float64")
    layer(nd.zeros((2, C) + (3, 3) * (dims == 4), dtype="float64"), [0, 1])  # materialise
    gamma = rng.normal(1, 0.5, (K, C))
    beta = rng.normal(0, 0.5, (K, C))
    layer.gamma.set_data(nd.array(gamma, dtype="float64"))
    layer.beta.set_data(nd.array(beta, dtype="float64"))
    layer.moving_mean.set_data(nd.zeros(C, dtype="float64"))
    layer.moving_var.set_data(nd.ones(C, dtype="float64"))
    return layer, gamma, beta


@pytest.mark.parametrize("dims", [2, 4])
def test_conditional_bn_matches_numpy(dims):
    rng = np.random.default_rng(0)
    C, K, N = 3, 4, 10
    layer, gamma, beta = make_layer(C, K, dims, rng)
    X = rng.normal(2, 3, (N, C) if dims == 2 else (N, C, 3, 3))
    y = rng.integers(0, K, N)
    with autograd.record():
        out = layer(nd.array(X, dtype="float64"), nd.array(y))
    expected, mean, var = numpy_cbn(X, y, gamma, beta)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-10, atol=1e-10)
    # moving statistics in MXNet's convention (biased variance)
    np.testing.assert_allclose(layer.moving_mean.data().asnumpy(), 0.2 * mean, rtol=1e-10)
    np.testing.assert_allclose(layer.moving_var.data().asnumpy(), 0.8 + 0.2 * var, rtol=1e-10)
    # inference mode: the moving statistics, each example alone
    m, v = layer.moving_mean.data().asnumpy(), layer.moving_var.data().asnumpy()
    out = layer(nd.array(X[:1], dtype="float64"), [int(y[0])])
    np.testing.assert_allclose(out.asnumpy(), numpy_cbn(X[:1], y[:1], gamma, beta, m, v)[0],
                               rtol=1e-10, atol=1e-10)


def test_conditional_bn_gamma_gradient():
    """d loss / d gamma[c] = sum over examples of class c of dY * X_hat (NumPy), and a class
    absent from the batch gets no gradient."""
    rng = np.random.default_rng(1)
    C, K, N = 3, 5, 12
    layer, gamma, beta = make_layer(C, K, 2, rng)
    X = rng.normal(0, 1, (N, C))
    y = rng.integers(0, K - 1, N)                 # class K-1 absent
    W = rng.normal(0, 1, (N, C))
    with autograd.record():
        loss = (layer(nd.array(X, dtype="float64"), y) * nd.array(W, dtype="float64")).sum()
    loss.backward()
    X_hat = (X - X.mean(0)) / np.sqrt(X.var(0) + EPS)
    expected = np.zeros((K, C))
    np.add.at(expected, y, W * X_hat)
    np.testing.assert_allclose(layer.gamma.grad().asnumpy(), expected, rtol=1e-9, atol=1e-12)
    assert not layer.gamma.grad().asnumpy()[K - 1].any()


def test_conditional_bn_bad_labels():
    layer = ConditionalBatchNorm(3, 4)
    layer.initialize()
    X = nd.ones((5, 3))
    with pytest.raises(ValueError, match="class index out of range: y\\[2\\] = 4"):
        layer(X, [0, 1, 4, 0, 0])
    with pytest.raises(ValueError, match="out of range"):
        layer(X, [0, 1, -1, 0, 0])
    with pytest.raises(ValueError, match="shape \\(5,\\)"):
        layer(X, [0, 1])
    with pytest.raises(TypeError, match="integer class labels"):
        layer(X, [0, 1, 0.5, 0, 0])
    with pytest.raises(ValueError, match="num_classes"):
        ConditionalBatchNorm(3, 0)


def test_input_gradients_bn_against_numerical_jacobian():
    """f_i = sum_d c_d * BN(X)_id (training mode): G against central differences in NumPy."""
    rng = np.random.default_rng(2)
    N, D = 5, 3
    X = rng.normal(0, 1, (N, D))
    c = rng.normal(0, 1, D)

    def f_np(X):
        Xh = (X - X.mean(0)) / np.sqrt(X.var(0) + EPS)
        return np.tanh(Xh) @ c

    def f_mx(x):
        mean = x.mean(axis=0, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=0, keepdims=True)
        return nd.dot(nd.tanh((x - mean) / nd.sqrt(var + EPS)), nd.array(c, dtype="float64"))

    G = input_gradients(f_mx, nd.array(X, dtype="float64"))
    J = np.zeros((N, N, D))
    h = 1e-6
    for j in range(N):
        for d in range(D):
            Xp, Xm = X.copy(), X.copy()
            Xp[j, d] += h
            Xm[j, d] -= h
            J[:, j, d] = (f_np(Xp) - f_np(Xm)) / (2 * h)
    np.testing.assert_allclose(G, np.sqrt((J ** 2).sum(2)), rtol=1e-6, atol=1e-8)
    assert cross_example_share(G) > 0.01


def test_input_gradients_per_example_layers_do_not_couple():
    """Layer norm (and batch norm in inference mode) map each example alone: G is diagonal."""
    mx.random.seed(0)
    X = nd.random.normal(shape=(6, 4), dtype="float64")
    ln = LayerNorm(4, 2)
    bn = BatchNorm(4, 2)
    for layer in (ln, bn):
        layer.initialize()
        layer.cast("float64")
    G = input_gradients(lambda x: (ln(x) ** 3).sum(axis=1), X)
    assert np.all(G[~np.eye(6, dtype=bool)] == 0) and np.all(np.diag(G) > 0)
    G = input_gradients(lambda x: (bn(x) ** 3).sum(axis=1), X, train_mode=False)
    assert np.all(G[~np.eye(6, dtype=bool)] == 0)
    assert cross_example_share(np.eye(3)) == 0.0
    assert cross_example_share(np.ones((2, 2))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        input_gradients(lambda x: x.sum(axis=1), X[:1])
    with pytest.raises(ValueError, match="one number per example"):
        input_gradients(lambda x: x, X)


def test_gradient_penalty_linear_critic():
    """A linear critic D(x) = w.x has input gradient w for every example: (||w|| - 1)^2."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, 7)
    X = nd.array(rng.normal(0, 1, (4, 7)), dtype="float64")
    gp = gradient_penalty(lambda x: nd.dot(x, nd.array(w, dtype="float64")), X)
    np.testing.assert_allclose(gp, (np.linalg.norm(w) - 1) ** 2 * np.ones(4), rtol=1e-12)
    with pytest.raises(ValueError, match="one score per example"):
        gradient_penalty(lambda x: x, X)
