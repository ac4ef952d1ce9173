"""d2lbn.porting: weights carried MXNet -> PyTorch -> MXNet on the LeNets of d2lbn.models, and Keras's
layouts read into MXNet's, with the real frameworks as the oracles.

Tolerances: fw_helpers (float32; RTOL = ATOL = 1e-4) wherever two frameworks compute; weights copied
back and forth must come back bit for bit (copies, no arithmetic).
"""
import subprocess
import sys

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, init, nd
import torch
import tensorflow as tf

from d2lbn import models, porting
from .fw_helpers import assert_close, fashion

NETS = ["lenet-bn", "lenet-bn-gluon", "lenet"]


def trained_net(name: str, activation: str = "relu", steps: int = 2, seed: int = 0):
    """An MXNet LeNet after ``steps`` SGD steps on real batches: moving statistics that are neither
    the initial 0 and 1 nor one batch's."""
    mx.random.seed(seed)
    np.random.seed(seed)
    net = models.get_model(name, activation=activation)
    net.initialize(init.Xavier(), ctx=mx.cpu())
    X, y = fashion(64)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for step in range(steps):
        xb, yb = nd.array(X[step * 32:(step + 1) * 32]), nd.array(y[step * 32:(step + 1) * 32])
        with autograd.record():
            ls = loss(net(xb), yb)
        ls.backward()
        trainer.step(xb.shape[0])
    return net


def params_numpy(net):
    return {name: p.data().asnumpy() for name, p in net.collect_params().items()}


@pytest.mark.parametrize("name", NETS)
def test_mxnet_to_torch_to_mxnet_same_predictions(name):
    net = trained_net(name)
    X, _ = fashion(64)
    test = X[32:64]
    scores = net(nd.array(test)).asnumpy()                       # inference mode
    module = porting.to_torch(net, input_shape=test.shape).eval()
    with torch.no_grad():
        t_scores = module(torch.from_numpy(test)).numpy()
    assert_close(t_scores, scores, f"{name}: PyTorch (eval) vs MXNet (inference) scores")
    assert (t_scores.argmax(1) == scores.argmax(1)).all()
    # back into a fresh MXNet net of the same kind
    back = models.get_model(name)
    back.initialize(ctx=mx.cpu())
    back(nd.array(test[:2]))                                     # infer the shapes
    porting.copy_to_mxnet(module, back)
    for (k1, v1), (k2, v2) in zip(params_numpy(net).items(), params_numpy(back).items()):
        np.testing.assert_array_equal(v1, v2, err_msg=f"{k1} -> torch -> {k2}: copied bit for bit")
    np.testing.assert_array_equal(back(nd.array(test)).asnumpy(), scores,
                                  err_msg="round trip: identical MXNet predictions")


@pytest.mark.parametrize("name", ["lenet-bn", "lenet-bn-gluon"])
def test_ported_net_trains_alike_in_training_mode(name):
    """Training mode too: the same scores with batch statistics, the same gradients, and the moving
    means after one step agree (momentum 0.9 carried as PyTorch's 0.1)."""
    net = trained_net(name)
    module = porting.to_torch(net).train()
    bns = [m for m in module if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert [m.momentum for m in bns] == pytest.approx([0.1] * 4)
    X, y = fashion(96)
    xb, yb = X[64:96], y[64:96]
    with autograd.record():
        scores = net(nd.array(xb))
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(scores, nd.array(yb)).sum()
    loss.backward()
    t_scores = module(torch.from_numpy(xb))
    torch.nn.functional.cross_entropy(t_scores, torch.from_numpy(yb), reduction="sum").backward()
    assert_close(t_scores, scores, "training-mode scores")
    mx_layers = porting.mxnet_layers(net)
    t_layers = porting.torch_layers(module)
    for block, mod in zip(mx_layers, t_layers):
        assert_close(mod.weight.grad, (block.gamma if hasattr(block, "gamma") else block.weight).grad(),
                     f"{block.name}: weight/gamma gradient", atol=1e-3)
    for block, mod in zip(mx_layers, t_layers):
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            moving = block.moving_mean if hasattr(block, "moving_mean") else block.running_mean
            assert_close(mod.running_mean, moving.data(), f"{block.name}: moving mean after a step")


def test_porting_errors_name_the_problem():
    net = models.lenet_bn()
    with pytest.raises(ValueError, match="no value yet"):
        porting.to_torch(net)
    net = trained_net("lenet-bn", steps=1)
    module = porting.to_torch(net)
    with pytest.raises(ValueError, match="layers with weights"):
        porting.copy_to_mxnet(module[:-1], net)
    other = torch.nn.Sequential(*[m for m in module])
    other[0] = torch.nn.Conv2d(1, 7, 5)
    with pytest.raises(ValueError, match="does not match"):
        porting.copy_to_mxnet(other, net)
    bad_eps = porting.to_torch(net)
    bad_eps[1].eps = 1e-3
    with pytest.raises(ValueError, match="eps"):
        porting.copy_to_mxnet(bad_eps, net)
    odd = gluon.nn.Sequential()
    odd.add(gluon.nn.Dense(3), gluon.nn.Dropout(0.5))
    odd.initialize()
    odd(nd.ones((2, 4)))
    with pytest.raises(TypeError, match="Dropout"):
        porting.to_torch(odd)


def test_porting_module_imports_without_torch():
    """d2lbn.porting imports torch only inside its functions: with torch made unimportable, the
    module still imports, and a function that needs torch says so."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import d2lbn.porting as p\n"
            "try:\n    p.torch_layers(None)\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "needs PyTorch" in out.stdout


def test_keras_layouts_read_into_mxnet():
    """A Keras Conv2D -> Flatten -> Dense on channels-last images equals the MXNet Conv2D -> Dense on
    channels-first ones, with conv_kernel_from_keras and dense_kernel_from_keras (the Flatten orders
    differ: H, W, C against C, H, W)."""
    X, _ = fashion(8)
    tf.keras.utils.set_random_seed(3)
    knet = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Conv2D(4, 5),
                                tf.keras.layers.MaxPool2D(4), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(6)])
    k_out = knet(np.moveaxis(X, 1, -1)).numpy()
    conv_k, conv_b = knet.layers[0].get_weights()
    dense_k, dense_b = knet.layers[3].get_weights()
    mnet = gluon.nn.Sequential()
    mnet.add(gluon.nn.Conv2D(4, 5), gluon.nn.MaxPool2D(4), gluon.nn.Dense(6))
    mnet.initialize()
    mnet(nd.array(X[:1]))
    mnet[0].weight.set_data(nd.array(porting.conv_kernel_from_keras(conv_k)))
    mnet[0].bias.set_data(nd.array(conv_b))
    mnet[2].weight.set_data(nd.array(porting.dense_kernel_from_keras(dense_k, (6, 6, 4))))
    mnet[2].bias.set_data(nd.array(dense_b))
    assert_close(mnet(nd.array(X)), k_out, "Keras net == MXNet net with the read layouts")
    wrong = porting.dense_kernel_from_keras(dense_k)          # flatten order ignored
    mnet[2].weight.set_data(nd.array(wrong))
    assert not np.allclose(mnet(nd.array(X)).asnumpy(), k_out, atol=1e-3), \
        "ignoring the flatten order must give other outputs"
    with pytest.raises(ValueError, match="inputs"):
        porting.dense_kernel_from_keras(dense_k, (5, 5, 4))
