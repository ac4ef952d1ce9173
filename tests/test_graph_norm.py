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
                      mean_weights=(1, shape[0]), ones_n=(shape[0], 1))
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
