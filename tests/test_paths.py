"""d2lbn.paths: each batch-norm call is counted under the path that actually ran.

The oracle is the code's structure, observed independently: the closed-form Function is the only
path whose backward pass runs a Python callback (counted here by wrapping BatchNormTrain.backward),
and the compiled graph the only one that builds a CachedOp (graph_norm._compiled's cache grows).
"""
from __future__ import annotations

import pytest
from mxnet import autograd, nd

from d2lbn import fast_norm, graph_norm
from d2lbn.fast_norm import fast_batch_norm
from d2lbn.graph_norm import graph_path
from d2lbn.norm import BatchNorm, batch_norm
from d2lbn.paths import PATHS, note_path, record_paths


def _vectors(c):
    return nd.ones(c), nd.zeros(c), nd.zeros(c), nd.ones(c)


def test_layer_training_small_input_takes_the_graph_and_runs_no_callback(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_norm.BatchNormTrain, "backward",
                        lambda self, dY: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    layer = BatchNorm(4, 4)
    layer.initialize()
    X = nd.random.normal(shape=(8, 4, 3, 3))
    X.attach_grad()
    with record_paths() as taken:
        with autograd.record():
            Y = layer(X)
        Y.backward()
    nd.waitall()
    assert taken == {"graph": 1}
    assert calls == []                       # no closed-form backward ran


def test_closed_form_is_counted_when_the_graph_is_off_and_its_backward_runs(monkeypatch):
    calls = []
    original = fast_norm.BatchNormTrain.backward

    def spy(self, dY):
        calls.append(dY.shape)
        return original(self, dY)

    monkeypatch.setattr(fast_norm.BatchNormTrain, "backward", spy)
    X = nd.random.normal(shape=(6, 3, 2, 2))
    X.attach_grad()
    with graph_path(False), record_paths() as taken:
        with autograd.record():
            Y, _, _ = fast_batch_norm(X, *_vectors(3), training=True)
        Y.backward()
    nd.waitall()                             # the callback runs on an engine thread
    assert taken == {"closed-form": 1}
    assert calls == [(6, 3, 2, 2)]


def test_large_input_takes_the_closed_form_by_default():
    X = nd.zeros((1, 1, 1, graph_norm.GRAPH_MAX_SIZE + 1)) + nd.arange(
        graph_norm.GRAPH_MAX_SIZE + 1).reshape((1, 1, 1, -1))
    with record_paths() as taken:
        fast_batch_norm(X, *_vectors(1), training=True)
    assert taken == {"closed-form": 1}


def test_inference_and_naive_paths():
    X = nd.random.normal(shape=(5, 2))
    with record_paths() as taken:
        fast_batch_norm(X, *_vectors(2), training=False)
        batch_norm(X, *_vectors(2), training=True)
        batch_norm(X, *_vectors(2), training=False)
        layer = BatchNorm(2, 2, impl="naive")
        layer.initialize()
        with autograd.record():
            layer(X)
        layer(X)                              # inference mode
    assert taken == {"fast-inference": 1, "naive": 2, "naive-inference": 2}


def test_blocks_nest_and_count_nothing_outside():
    X = nd.random.normal(shape=(5, 2))
    batch_norm(X, *_vectors(2), training=True)          # outside: not counted anywhere
    with record_paths() as outer:
        with record_paths() as inner:
            batch_norm(X, *_vectors(2), training=True)
        batch_norm(X, *_vectors(2), training=False)
    assert inner == {"naive": 1}
    assert outer == {"naive": 1, "naive-inference": 1}


def test_an_unknown_path_name_is_refused():
    with pytest.raises(ValueError, match="path must be one of"):
        note_path("closed_form")
    assert "closed-form" in PATHS
