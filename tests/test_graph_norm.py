"""d2lbn.graph_norm: the compiled graph's structure and cache (its numbers are tested against the
naive layer, MXNet's BatchNorm and float64 NumPy in test_fast_norm.py, which runs every test through
both training paths)."""
import json

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn import graph_norm
from d2lbn.graph_norm import batch_norm_graph, graph_train


@pytest.mark.parametrize("shape", [(256, 128), (32, 6, 12, 12)])
def test_no_full_size_reshape_or_broadcast(shape):
    """A reshape inside a graph may copy its data and a broadcasting operator's backward pass is a slow
    reduction: the graph reshapes only per-channel-sized arrays and broadcasts nothing (4-D input
    meets its per-channel scale and shift in a depthwise 1x1 convolution)."""
    graph = batch_norm_graph(shape, 1e-5, 0.9, for_layer=True)
    internals = graph.get_internals()
    C = shape[1]
    arg_shapes = dict(X=shape, gamma=(C,), beta=(C,), moving_mean=(C,), moving_var=(C,),
                      ones_row=(1, shape[0]), ones_n=(shape[0], 1))
    arg_shapes = {k: v for k, v in arg_shapes.items() if k in graph.list_arguments()}
    _, out_shapes, _ = internals.infer_shape(**arg_shapes)
    sizes = dict(zip(internals.list_outputs(), (int(np.prod(s)) for s in out_shapes)))
    nodes = json.loads(graph.tojson())["nodes"]
    reshapes = [n["name"] for n in nodes if n["op"] == "Reshape"]
    assert reshapes, "expected the per-channel reshapes"
    for name in reshapes:
        assert sizes[name + "_output"] < int(np.prod(shape)) // 2, (name, sizes[name + "_output"])
    assert not [n["op"] for n in nodes if n["op"].startswith("broadcast_")]
    convolutions = [n for n in nodes if n["op"] == "Convolution"]
    assert len(convolutions) == (2 if len(shape) == 4 else 0)
    assert all(n["attrs"]["num_group"] == str(C) for n in convolutions)


def test_compiled_graphs_are_cached_per_dtype_and_bounded(monkeypatch):
    monkeypatch.setattr(graph_norm, "_COMPILED", type(graph_norm._COMPILED)())
    monkeypatch.setattr(graph_norm, "_MAX_COMPILED", 3)
    for dtype in ("float32", "float64"):
        X = nd.ones((4, 3), dtype=dtype) * nd.arange(4, dtype=dtype).reshape((4, 1))
        v = nd.ones(3, dtype=dtype)
        Y, mean, var = graph_train(X, v, v * 0, v * 0, v, 1e-5, 0.9, X.shape)
        assert Y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(mean.asnumpy(), 0.1 * 1.5)          # 0.9 * 0 + 0.1 * mean
    assert len(graph_norm._COMPILED) == 2
    for N in (5, 6, 7):
        X = nd.ones((N, 3)) * nd.arange(N).reshape((N, 1))
        graph_train(X, nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3), 1e-5, 0.9, X.shape)
    assert len(graph_norm._COMPILED) == 3
    assert [key[0] for key in graph_norm._COMPILED] == [(5, 3), (6, 3), (7, 3)]


def test_moving_statistics_are_detached_and_gradients_flow():
    X = nd.array(np.random.default_rng(0).normal(size=(6, 3)))
    gamma, beta = nd.ones(3), nd.zeros(3)
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y, mean, var = graph_train(X, gamma, beta, nd.zeros(3), nd.ones(3), 1e-5, 0.9, X.shape)
    with pytest.raises(mx.base.MXNetError):
        mean.backward()
    Y.backward(nd.ones_like(Y) * nd.arange(6).reshape((6, 1)))
    # dbeta = column sums of the head gradient: 0 + 1 + ... + 5
    np.testing.assert_allclose(beta.grad.asnumpy(), 15.0, rtol=1e-6)


def test_graph_path_forces_either_path_and_restores_the_limit(monkeypatch):
    from d2lbn import fast_norm
    taken = []
    real_graph_train = graph_norm.graph_train
    monkeypatch.setattr(graph_norm, "graph_train",
                        lambda *a, **k: taken.append("graph") or real_graph_train(*a, **k))
    X, v = nd.array(np.random.default_rng(1).normal(size=(4, 3))), nd.ones(3)
    limit = graph_norm.GRAPH_MAX_SIZE
    with graph_norm.graph_path(False):
        fast_norm.fast_batch_norm(X, v, v, v, v, training=True)          # 12 values, yet the Function
    assert taken == []
    with pytest.raises(RuntimeError):
        with graph_norm.graph_path(True):
            fast_norm.fast_batch_norm(nd.ones((4000, 300)), nd.ones(300), nd.ones(300),
                                      nd.ones(300), nd.ones(300), training=True)
            raise RuntimeError("leave the block")
    assert taken == ["graph"] and graph_norm.GRAPH_MAX_SIZE == limit


# ---- a constant channel (variance 0): a dead or padded channel must not leak gradient (issue 25) -----

def _graph_grads(x, dy, gamma, beta, dtype, update=False):
    C = x.shape[1]
    X, g, b = (nd.array(v, dtype=dtype) for v in (x, gamma, beta))
    for a in (X, g, b):
        a.attach_grad()
    with autograd.record():
        Y, _, _ = graph_train(X, g, b, nd.zeros(C, dtype=dtype), nd.ones(C, dtype=dtype), 1e-5, 0.9,
                              X.shape, update)
    Y.backward(nd.array(dy, dtype=dtype))
    return Y.asnumpy(), X.grad.asnumpy(), g.grad.asnumpy(), b.grad.asnumpy()


def _mxnet_grads(x, dy, gamma, beta, dtype):
    C = x.shape[1]
    X, g, b = (nd.array(v, dtype=dtype) for v in (x, gamma, beta))
    for a in (X, g, b):
        a.attach_grad()
    with autograd.record():
        Y = nd.BatchNorm(X, g, b, nd.zeros(C, dtype=dtype), nd.ones(C, dtype=dtype), eps=1e-5,
                         momentum=0.9, fix_gamma=False)
    Y.backward(nd.array(dy, dtype=dtype))
    return Y.asnumpy(), X.grad.asnumpy(), g.grad.asnumpy(), b.grad.asnumpy()


def _with_constant_channel(shape, value, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    bshape = (1, C) + (1,) * (len(shape) - 2)
    x = rng.normal(size=shape) * rng.uniform(0.5, 4, C).reshape(bshape) + rng.uniform(-3, 3, C).reshape(bshape)
    x[:, 0] = value                   # channel 0: dead (0) or padded (1); either has variance 0
    return x, rng.uniform(0.5, 2, C), rng.normal(size=C), rng.normal(size=shape)


CONSTANT_SHAPES = [(256, 120), (256, 84), (7, 3), (6, 3, 5, 4), (100, 3, 3, 3), (256, 16, 8, 8),
                   (256, 6, 24, 24)]


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", CONSTANT_SHAPES)
def test_a_constant_channel_gets_exactly_zero_data_gradient(shape, dtype, value, update):
    """loss = sum(Y): on a channel whose values are all equal, Y is beta whatever X does nearby,
    so dloss/dX is exactly 0 there; MXNet's BatchNorm (the reference) gives exactly 0, and so must
    the graph (it gave up to 0.2 per element on (256, 6, 24, 24), the k * dy terms of about 316 each
    cancelling in another order). The other channels keep the float64 closed form's gradient."""
    from d2lbn.backward import backward_closed_form
    x, gamma, beta, _ = _with_constant_channel(shape, value)
    ones = np.ones(shape)
    Y, dX, dgamma, dbeta = _graph_grads(x, ones, gamma, beta, dtype, update)
    assert np.count_nonzero(dX[:, 0]) == 0, np.abs(dX[:, 0]).max()
    assert np.all(Y[:, 0] == np.asarray(beta[0], dtype=dtype))
    assert np.count_nonzero(_mxnet_grads(x, ones, gamma, beta, dtype)[1][:, 0]) == 0
    dx, dg, db = backward_closed_form(ones, x, gamma)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert np.abs(dX - dx).max() <= tol * np.abs(k_dy := gamma.max() / np.sqrt(1e-5)), k_dy
    np.testing.assert_allclose(dbeta, db, rtol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", CONSTANT_SHAPES)
def test_constant_channel_and_random_head_gradient_match_float64_and_mxnet(shape, dtype):
    """With a random head gradient the exact dX of a constant channel is k * (dy - mean(dy)), not 0:
    every channel, the constant one included, matches float64 NumPy (the forward pass of
    conftest.numpy_batch_norm, the closed-form backward) and MXNet's BatchNorm. Max error relative
    to the largest value: against float64, 3e-5 in float32 (dbeta alone, a float32 sum of 147,456
    values, is off by 1e-5 on (256, 6, 24, 24), in MXNet too) and 1e-12 in float64; against MXNet,
    whose own float32 error reaches 2e-5 there, 1e-4 and 1e-10."""
    from d2lbn.backward import backward_closed_form
    from conftest import numpy_batch_norm
    x, gamma, beta, dy = _with_constant_channel(shape, 1.0, seed=1)
    ours = _graph_grads(x, dy, gamma, beta, dtype)
    mxnet = _mxnet_grads(x, dy, gamma, beta, dtype)
    oracle = (numpy_batch_norm(x, gamma, beta)[0],) + backward_closed_form(dy, x, gamma)
    tol, mxnet_tol = (3e-5, 1e-4) if dtype == "float32" else (1e-12, 1e-10)
    for name, o, t in zip(["Y", "dX", "dgamma", "dbeta"], ours, oracle):
        assert np.abs(o - t).max() <= tol * np.abs(t).max(), name
    for name, o, t in zip(["Y", "dX", "dgamma", "dbeta"], ours, mxnet):
        assert np.abs(o - t).max() <= mxnet_tol * np.abs(t).max(), name
