"""ch12: d2lbn.export, checked with onnx.checker and against MXNet's inference output run by
onnx.reference (ONNX's own NumPy implementation of the operators), and its errors."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from d2lbn import compress as C, export as E  # noqa: E402
from d2lbn.models import lenet_bn, lenet_bn_gluon  # noqa: E402
from d2lbn.moving_stats import batch_norm_layers  # noqa: E402
from d2lbn.resnet import small_resnet  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-5)


def trained(net, steps=2, shape=(4, 1, 28, 28)):
    mx.random.seed(0)
    np.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    X = nd.random.uniform(shape=shape)
    for _ in range(steps):
        with autograd.record():
            y = net(X)
        y.backward()
    return net, X


def test_lenet_export_matches_mxnet_inference(tmp_path):
    net, X = trained(lenet_bn_gluon())
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "lenet"))
    nodes = E.check_inference_graph(model)
    assert len(nodes) == 4 and all(n.training_mode == 0 for n in nodes)
    layers = batch_norm_layers(net)
    for node, layer in zip(nodes, layers):              # the statistics travel as initializers
        np.testing.assert_array_equal(node.mean, layer.running_mean.data().asnumpy())
        np.testing.assert_array_equal(node.var, layer.running_var.data().asnumpy())
        assert node.epsilon == pytest.approx(1e-5)
    assert E.initial_statistics(model) == []
    out = E.run_reference(model, X.asnumpy())
    np.testing.assert_allclose(out, net(X).asnumpy(), **TOL)
    with autograd.train_mode():                         # not the batch-statistics output
        assert np.abs(out - net(X).asnumpy()).max() > 1e-2


def test_resnet_export_matches_mxnet_inference(tmp_path):
    net, X = trained(small_resnet(widths=(4, 8, 8)))
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "resnet"))
    np.testing.assert_allclose(E.run_reference(model, X.asnumpy()), net(X).asnumpy(), **TOL)


def test_folded_export_matches(tmp_path):
    net, X = trained(lenet_bn_gluon())
    folded = C.fold_sequential(net)
    folded.hybridize()
    folded(X)
    model = E.load_onnx(E.export_onnx(folded, X, tmp_path / "folded"))
    assert E.batch_norm_nodes(model) == []
    np.testing.assert_allclose(E.run_reference(model, X.asnumpy()), net(X).asnumpy(), **TOL)


def test_initial_statistics_are_flagged(tmp_path):
    """On the CPU a training-mode forward pass without backward() leaves 0 and 1 stored."""
    net = lenet_bn_gluon()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    X = nd.random.uniform(shape=(4, 1, 28, 28))
    with autograd.record():
        net(X)
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "fresh"))
    assert len(E.initial_statistics(model)) == 4


def test_fix_gamma_exported_as_one(tmp_path):
    """mx.onnx 1.9.1 ignores fix_gamma; MXNet computes with gamma = 1 there."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(3, 3), gluon.nn.BatchNorm(scale=False))
    net.initialize()
    net.hybridize()
    X = nd.random.normal(shape=(2, 1, 6, 6))
    net(X)
    net[1].gamma.set_data(nd.array([2.0, 3.0, 4.0]))
    net[1].running_var.set_data(nd.array([0.5, 0.5, 0.5]))
    want = net(X).asnumpy()
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "fg"))
    np.testing.assert_allclose(E.run_reference(model, X.asnumpy()), want, **TOL)
    # the raw mx.onnx export of the same files uses the stored gamma
    import mxnet.onnx  # noqa: F401
    net.export(str(tmp_path / "raw"))
    raw = mx.onnx.export_model(str(tmp_path / "raw-symbol.json"), str(tmp_path / "raw-0000.params"),
                               [X.shape], np.float32, str(tmp_path / "raw.onnx"))
    assert np.abs(E.run_reference(E.load_onnx(raw), X.asnumpy()) - want).max() > 0.1


def test_training_mode_node_is_refused(tmp_path):
    net, X = trained(lenet_bn_gluon(), steps=1)
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "m"))
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    node.attribute.append(helper.make_attribute("training_mode", 1))
    with pytest.raises(E.ExportError, match="training semantics"):
        E.check_inference_graph(model)


def test_statistics_not_stored_is_refused(tmp_path):
    net, X = trained(lenet_bn_gluon(), steps=1)
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "m"))
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    keep = [t for t in model.graph.initializer if t.name != node.input[3]]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    with pytest.raises(E.ExportError, match="no stored mean"):
        E.check_inference_graph(model)


def test_export_errors(tmp_path):
    X = nd.ones((2, 1, 28, 28))
    scratch = lenet_bn()
    scratch.initialize()
    with pytest.raises(E.ExportError, match="HybridBlock"):
        E.export_onnx(scratch, X, tmp_path / "a")
    net = lenet_bn_gluon()
    net.initialize()
    with pytest.raises(E.ExportError, match="not hybridized"):
        E.export_onnx(net, X, tmp_path / "a")
    net.hybridize()
    with pytest.raises(E.ExportError, match="never run"):
        E.export_onnx(net, X, tmp_path / "a")
    net(X)
    with pytest.raises(E.ExportError, match="does not exist"):
        E.export_onnx(net, X, tmp_path / "missing" / "a")
    with pytest.raises(E.ExportError, match="example"):
        E.export_onnx(net, X.asnumpy(), tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        E.load_onnx(tmp_path / "nothing.onnx")
    model = E.load_onnx(E.export_onnx(net, X, tmp_path / "ok"))
    with pytest.raises(ValueError, match="input shape"):
        E.run_reference(model, np.ones((3, 1, 28, 28), np.float32))
