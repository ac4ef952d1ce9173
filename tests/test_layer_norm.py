"""layer_norm / LayerNorm against a float64 NumPy reference, MXNet's own LayerNorm, and numerical gradients."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn.norm import LayerNorm, layer_norm


def numpy_layer_norm(x, gamma, beta, eps=1e-5):
    """Float64 layer norm from Ba et al. (2016): statistics of each example over all its values.

    x: (N, D) or (N, C, H, W); gamma, beta: one value per feature/channel (axis 1)."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(x.shape[0], -1)
    mean = flat.sum(axis=1) / flat.shape[1]
    var = ((flat - mean[:, None]) ** 2).sum(axis=1) / flat.shape[1]
    x_hat = ((flat - mean[:, None]) / np.sqrt(var[:, None] + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape)


@pytest.mark.parametrize("shape", [(7, 5), (1, 30), (4, 3, 5, 6), (2, 8, 1, 9)])
def test_matches_float64_reference(shape, rng):
    x = rng.normal(3.0, 5.0, size=shape) * rng.uniform(0.1, 10, size=(shape[0],) + (1,) * (len(shape) - 1))
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    ours = layer_norm(nd.array(x), nd.array(gamma), nd.array(beta)).asnumpy()
    np.testing.assert_allclose(ours, numpy_layer_norm(x, gamma, beta), rtol=1e-5, atol=1e-5)


def test_matches_mxnet_layer_norm_2d(rng):
    x = rng.normal(size=(6, 11))
    gamma, beta = rng.uniform(0.5, 2, 11), rng.normal(size=11)
    ours = layer_norm(nd.array(x), nd.array(gamma), nd.array(beta)).asnumpy()
    theirs = nd.LayerNorm(nd.array(x), nd.array(gamma), nd.array(beta), axis=-1, eps=1e-5).asnumpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_each_example_independent_of_the_batch(rng):
    """The output for example 0 is the same alone, in a batch of 5, or next to wildly different data."""
    x = rng.normal(size=(5, 3, 4, 4))
    gamma, beta = nd.array(rng.uniform(0.5, 2, 3)), nd.array(rng.normal(size=3))
    alone = layer_norm(nd.array(x[:1]), gamma, beta).asnumpy()
    other = np.concatenate([x[:1], 100 * x[1:] + 50])
    in_batch = layer_norm(nd.array(other), gamma, beta).asnumpy()[:1]
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-6)


def test_gradient_matches_numerical(rng):
    """d/dX and d/dgamma of sum(w * layer_norm(X)) against central differences in float64."""
    x = rng.normal(size=(3, 4))
    gamma, beta, w = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=(3, 4))

    def f(x_, gamma_):
        return float((w * numpy_layer_norm(x_, gamma_, beta)).sum())

    X, G = nd.array(x, dtype="float64"), nd.array(gamma, dtype="float64")
    X.attach_grad(); G.attach_grad()
    with autograd.record():
        loss = (nd.array(w, dtype="float64") * layer_norm(X, G, nd.array(beta, dtype="float64"))).sum()
    loss.backward()
    h = 1e-6
    num_dx = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x); d[idx] = h
        num_dx[idx] = (f(x + d, gamma) - f(x - d, gamma)) / (2 * h)
    num_dg = np.array([(f(x, gamma + h * e) - f(x, gamma - h * e)) / (2 * h) for e in np.eye(4)])
    np.testing.assert_allclose(X.grad.asnumpy(), num_dx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(G.grad.asnumpy(), num_dg, rtol=1e-5, atol=1e-7)


def test_layer_same_in_training_and_inference(rng):
    x = nd.array(rng.normal(size=(4, 6, 3, 3)))
    layer = LayerNorm(6, 4)
    layer.initialize(ctx=mx.cpu())
    layer.gamma.set_data(nd.array(rng.uniform(0.5, 2, 6)))
    with autograd.train_mode():
        train = layer(x).asnumpy()
    infer = layer(x).asnumpy()
    np.testing.assert_array_equal(train, infer)
    np.testing.assert_allclose(infer, numpy_layer_norm(x.asnumpy(), layer.gamma.data().asnumpy(),
                                                       np.zeros(6)), rtol=1e-5, atol=1e-5)


def test_layer_on_another_context(rng):
    ctx = mx.cpu(1)
    layer = LayerNorm(5, 2)
    layer.initialize(ctx=ctx)
    y = layer(nd.array(rng.normal(size=(3, 5)), ctx=ctx))
    assert y.context == ctx


@pytest.mark.parametrize("args, error, words", [
    ((0, 2), ValueError, "num_features"),
    ((4, 3), ValueError, "num_dims"),
    ((4, 2, 0.0), ValueError, "eps"),
])
def test_bad_layer_arguments(args, error, words):
    with pytest.raises(error, match=words):
        LayerNorm(*args)


def test_bad_inputs():
    with pytest.raises(ValueError, match="rank"):
        layer_norm(nd.ones((2, 3, 4)), nd.ones(3), nd.zeros(3))
    with pytest.raises(ValueError, match="gamma"):
        layer_norm(nd.ones((2, 3)), nd.ones(4), nd.zeros(3))
    layer = LayerNorm(3, 2)
    layer.initialize()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        layer(nd.ones((2, 4)))
