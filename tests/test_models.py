"""The LeNet variants: layer order, parameter shapes (written out by hand from LeNet's arithmetic), the
registry, and agreement of the from-scratch and built-in batch-norm nets given the same weights."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from d2lbn import models, norm

# 28 -conv5-> 24 -pool2-> 12 -conv5-> 8 -pool2-> 4, so the first dense layer sees 16*4*4 = 256 inputs.
PLAIN_SHAPES = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 256), (120,), (84, 120), (84,), (10, 84), (10,)]
BN_SHAPES = [(6, 1, 5, 5), (6,)] + [(6,)] * 4 + [(16, 6, 5, 5), (16,)] + [(16,)] * 4 + \
            [(120, 256), (120,)] + [(120,)] * 4 + [(84, 120), (84,)] + [(84,)] * 4 + [(10, 84), (10,)]


def initialised(name, **kwargs):
    net = models.get_model(name, **kwargs)
    net.initialize(mx.init.Xavier())
    net(nd.zeros((2, 1, 28, 28)))          # resolve deferred shapes
    return net


@pytest.mark.parametrize("name, shapes", [("lenet", PLAIN_SHAPES), ("lenet-bn", BN_SHAPES),
                                          ("lenet-bn-gluon", BN_SHAPES)])
def test_parameter_shapes(name, shapes):
    net = initialised(name)
    assert [p.shape for p in net.collect_params().values()] == shapes
    assert net(nd.zeros((3, 1, 28, 28))).shape == (3, 10)


def test_layer_order_bn_before_activation():
    kinds = [type(layer).__name__ for layer in models.get_model("lenet-bn")]
    assert kinds == ["Conv2D", "BatchNorm", "Activation", "MaxPool2D",
                     "Conv2D", "BatchNorm", "Activation", "MaxPool2D",
                     "Dense", "BatchNorm", "Activation", "Dense", "BatchNorm", "Activation", "Dense"]
    plain = [type(layer).__name__ for layer in models.get_model("lenet")]
    assert plain == [k for k in kinds if k != "BatchNorm"]


def test_which_batch_norm():
    scratch = models.batch_norm_layers(models.get_model("lenet-bn"))
    builtin = models.batch_norm_layers(models.get_model("lenet-bn-gluon"))
    assert len(scratch) == 4 and all(isinstance(b, norm.BatchNorm) for b in scratch)
    assert [(b.num_features, b.num_dims) for b in scratch] == [(6, 4), (16, 4), (120, 2), (84, 2)]
    assert len(builtin) == 4 and all(isinstance(b, gluon.nn.BatchNorm) for b in builtin)
    assert models.batch_norm_layers(models.get_model("lenet")) == []
    assert isinstance(models.get_model("lenet-bn-gluon"), gluon.HybridBlock)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'lenet-nb'; choose one of 'lenet', 'lenet-bn'"):
        models.get_model("lenet-nb")


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation must be one of 'relu', 'sigmoid', 'tanh'; got 'gelu'"):
        models.get_model("lenet", activation="gelu")


@pytest.mark.parametrize("impl, path", [(impl, None) for impl in sorted(norm.IMPLEMENTATIONS)
                                         if impl != "fast"]
                         + [("fast", "graph"), ("fast", "function")])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_scratch_equals_builtin_with_same_weights(activation, impl, path, monkeypatch):
    """The from-scratch net (each implementation of the layer, and both training paths of the fast
    one) and the Gluon net, given identical weights, agree in both modes: outputs, the gradient of
    every parameter under a softmax cross-entropy loss, and the moving statistics after a training
    step (Gluon updates them in backward). The second convolution has 16 channels, a multiple of 8,
    where oneDNN may pick a blocked memory layout (the graph path's depthwise convolutions too)."""
    from d2lbn import graph_norm
    if path is not None:
        monkeypatch.setattr(graph_norm, "GRAPH_MAX_SIZE", 10 ** 12 if path == "graph" else 0)
    mx.random.seed(3)
    ours = initialised("lenet-bn", activation=activation, impl=impl)
    theirs = initialised("lenet-bn-gluon", activation=activation)
    for p, q in zip(ours.collect_params().values(), theirs.collect_params().values()):
        q.set_data(p.data())
    X = nd.random.normal(0.5, 1.0, shape=(16, 1, 28, 28))
    y = nd.array(np.arange(16) % 10)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for net in (ours, theirs):
        with autograd.record():
            out = net(X)
            l = loss(out, y)
        l.backward()
        net.out_train = out.asnumpy()
        net.out_infer = net(X).asnumpy()
    np.testing.assert_allclose(ours.out_train, theirs.out_train, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.out_infer, theirs.out_infer, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(ours.collect_params().items(), theirs.collect_params().values()):
        np.testing.assert_allclose(p.data().asnumpy(), q.data().asnumpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
        if p.grad_req != "null" and not name.endswith("_bias"):
            # (biases before batch norm have gradient ~0 up to rounding, so only their size is checked)
            np.testing.assert_allclose(p.grad().asnumpy(), q.grad().asnumpy(), rtol=1e-3, atol=1e-4,
                                       err_msg=f"gradient of {name}")
        elif p.grad_req != "null":
            assert np.abs(p.grad().asnumpy() - q.grad().asnumpy()).max() < 1e-3, f"gradient of {name}"


@pytest.mark.parametrize("impl, batch, expected", [
    (None, 128, "graph"),       # the chapters' batch: every input well under the graph's limit
    ("naive", 128, "naive"),
    (None, 512, None),          # the first conv-BN input, 512*6*24*24 values, exceeds the limit
])
def test_which_code_lenet_bn_trains_through(impl, batch, expected):
    # oracle: the size rule, applied by hand to LeNet's four batch-norm inputs
    from d2lbn.graph_norm import GRAPH_MAX_SIZE
    from d2lbn.paths import record_paths
    sizes = [batch * 6 * 24 * 24, batch * 16 * 8 * 8, batch * 120, batch * 84]
    net = initialised("lenet-bn", impl=impl)
    X, y = nd.random.uniform(shape=(batch, 1, 28, 28)), nd.zeros(batch)
    with record_paths() as taken:
        with autograd.record():
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(X), y)
        loss.backward()
    if expected is None:
        expected_paths = {}
        for size in sizes:
            path = "graph" if size <= GRAPH_MAX_SIZE else "closed-form"
            expected_paths[path] = expected_paths.get(path, 0) + 1
        assert expected_paths == {"closed-form": 1, "graph": 3}
        assert dict(taken) == expected_paths
    else:
        assert dict(taken) == {expected: 4}
    with record_paths() as taken:                 # inference: one scale-and-shift per layer
        net(X[:8])
    assert dict(taken) == {("naive-inference" if impl == "naive" else "fast-inference"): 4}
