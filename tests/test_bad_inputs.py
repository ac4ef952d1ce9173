"""One table of bad inputs to every public d2lbn function and the error each must raise.

Each row: (id, call, exception type, regex the message must match). The regexes ask for the argument's
name and what was given, so a bare ``assert`` or a stack trace from deep inside MXNet fails the row.
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import nd

import d2lbn
from d2lbn import data, device, models, plot, train
from d2lbn.norm import BatchNorm, batch_norm, pure_batch_norm


def ones(*shape, ctx=None):
    return nd.ones(shape, ctx=ctx or mx.cpu())


def bn(X, C=3, training=True, **kwargs):
    """batch_norm with valid statistics of length C unless kwargs override them."""
    args = dict(gamma=ones(C), beta=nd.zeros(C), moving_mean=nd.zeros(C), moving_var=ones(C))
    args.update(kwargs)
    return batch_norm(X, training=training, **args)


def layer_call(layer, X, training=False):
    layer.initialize()
    with mx.autograd.record(train_mode=training):
        return layer(X)


CASES = [
    # --- pure_batch_norm -------------------------------------------------------------------------
    ("pure: rank 1", lambda: pure_batch_norm(ones(5), ones(5), ones(5)),
     ValueError, r"X must have rank 2 .* got rank 1 with shape \(5,\)"),
    ("pure: rank 3", lambda: pure_batch_norm(ones(2, 3, 4), ones(3), ones(3)),
     ValueError, r"X must have rank 2 .* got rank 3"),
    ("pure: rank 5", lambda: pure_batch_norm(ones(2, 3, 4, 4, 4), ones(3), ones(3)),
     ValueError, r"got rank 5"),
    ("pure: numpy X", lambda: pure_batch_norm(np.ones((2, 3)), ones(3), ones(3)),
     TypeError, r"X must be an mxnet NDArray, got ndarray"),
    ("pure: list gamma", lambda: pure_batch_norm(ones(2, 3), [1, 1, 1], ones(3)),
     TypeError, r"gamma must be an mxnet NDArray of shape \(3,\), got list"),
    ("pure: short gamma", lambda: pure_batch_norm(ones(2, 3), ones(2), ones(3)),
     ValueError, r"gamma must have shape \(3,\) .* got shape \(2,\)"),
    ("pure: long beta", lambda: pure_batch_norm(ones(2, 3, 2, 2), ones(3), ones(4)),
     ValueError, r"beta must have shape \(3,\) .* got shape \(4,\)"),
    ("pure: 2-D gamma", lambda: pure_batch_norm(ones(2, 3), ones(1, 3), ones(3)),
     ValueError, r"gamma must have shape \(3,\) .* got shape \(1, 3\)"),
    ("pure: gamma on cpu(1)", lambda: pure_batch_norm(ones(2, 3), ones(3, ctx=mx.cpu(1)), ones(3)),
     ValueError, r"gamma lives on cpu\(1\) but X lives on cpu\(0\)"),
    ("pure: empty batch", lambda: pure_batch_norm(nd.array(np.zeros((0, 3))), ones(3), ones(3)),
     ValueError, r"X must not be empty; got shape \(0, 3\)"),
    ("pure: eps 0", lambda: pure_batch_norm(ones(2, 3), ones(3), ones(3), eps=0.0),
     ValueError, r"eps must be > 0 .* got 0.0"),
    ("pure: eps negative", lambda: pure_batch_norm(ones(2, 3), ones(3), ones(3), eps=-1.0),
     ValueError, r"eps must be > 0 .* got -1.0"),
    # --- batch_norm ------------------------------------------------------------------------------
    ("bn: rank 3", lambda: bn(ones(2, 3, 4)), ValueError, r"X must have rank 2 .* got rank 3"),
    ("bn: short moving_mean", lambda: bn(ones(4, 3), moving_mean=nd.zeros(2)),
     ValueError, r"moving_mean must have shape \(3,\) .* got shape \(2,\)"),
    ("bn: long moving_var", lambda: bn(ones(4, 3, 2, 2), moving_var=ones(5)),
     ValueError, r"moving_var must have shape \(3,\) .* got shape \(5,\)"),
    ("bn: moving_var on cpu(1)", lambda: bn(ones(4, 3), moving_var=ones(3, ctx=mx.cpu(1))),
     ValueError, r"moving_var lives on cpu\(1\) but X lives on cpu\(0\)"),
    ("bn: numpy moving_mean", lambda: bn(ones(4, 3), moving_mean=np.zeros(3)),
     TypeError, r"moving_mean must be an mxnet NDArray .* got ndarray"),
    ("bn: batch of one (2-D)", lambda: bn(ones(1, 3)),
     ValueError, r"more than one value per feature/channel .* shape \(1, 3\)"),
    ("bn: batch of one pixel (4-D)", lambda: bn(ones(1, 3, 1, 1)),
     ValueError, r"more than one value per feature/channel .* shape \(1, 3, 1, 1\)"),
    ("bn: empty batch", lambda: bn(nd.array(np.zeros((0, 3)))),
     ValueError, r"X must not be empty; got shape \(0, 3\)"),
    ("bn: eps 0", lambda: bn(ones(4, 3), eps=0), ValueError, r"eps must be > 0 .* got 0"),
    ("bn: momentum 1", lambda: bn(ones(4, 3), momentum=1.0),
     ValueError, r"momentum must be in \[0, 1\).* got 1.0"),
    ("bn: momentum negative", lambda: bn(ones(4, 3), momentum=-0.1),
     ValueError, r"momentum must be in \[0, 1\).* got -0.1"),
    ("bn: momentum string", lambda: bn(ones(4, 3), momentum="0.9"),
     TypeError, r"momentum must be a real number in \[0, 1\), got str"),
    ("bn: training None", lambda: bn(ones(4, 3), training=None),
     TypeError, r"training must be True or False, got None"),
    # --- BatchNorm layer ---------------------------------------------------------------------------
    ("layer: num_features 0", lambda: BatchNorm(0, 2), ValueError, r"num_features must be a positive int; got 0"),
    ("layer: num_dims 3", lambda: BatchNorm(3, 3), ValueError, r"num_dims must be 2 .* or 4 .*; got 3"),
    ("layer: eps negative", lambda: BatchNorm(3, 2, eps=-1), ValueError, r"eps must be > 0 .* got -1"),
    ("layer: momentum 1.5", lambda: BatchNorm(3, 2, momentum=1.5), ValueError, r"momentum must be in \[0, 1\)"),
    ("layer: unknown impl", lambda: BatchNorm(3, 2, impl="cudnn"),
     ValueError, r"impl must be one of \[.*'naive'.*\] .* got 'cudnn'"),
    ("layer: wrong rank input", lambda: layer_call(BatchNorm(3, 4), ones(2, 3)),
     ValueError, r"expects X of shape \(N, 3, H, W\); got shape \(2, 3\)"),
    ("layer: wrong channel count", lambda: layer_call(BatchNorm(3, 2), ones(2, 4)),
     ValueError, r"expects X of shape \(N, 3\); got shape \(2, 4\)"),
    ("layer: numpy input", lambda: layer_call(BatchNorm(3, 2), np.ones((2, 3))),
     TypeError, r"X must be an mxnet NDArray, got ndarray"),
    ("layer: training batch of one", lambda: layer_call(BatchNorm(3, 2), ones(1, 3), training=True),
     ValueError, r"more than one value per feature/channel .* shape \(1, 3\)"),
    # --- dtypes and numbers (issue 16; integer/bool X is in test_reliability.py's crash-isolated matrix) --
    ("pure: float64 X, float32 gamma", lambda: pure_batch_norm(nd.ones((2, 3), dtype="float64"), ones(3),
                                                               nd.zeros(3, dtype="float64")),
     TypeError, r"gamma has dtype float32 but X has dtype float64; .* gamma\.astype\('float64'\)"),
    ("bn: float64 moving_var", lambda: bn(ones(4, 3), moving_var=nd.ones(3, dtype="float64")),
     TypeError, r"moving_var has dtype float64 but X has dtype float32; .*moving_var\.astype\('float32'\)"),
    ("pure: eps string", lambda: pure_batch_norm(ones(2, 3), ones(3), ones(3), eps="1e-5"),
     TypeError, r"eps must be > 0 .* got '1e-5' \(str\)"),
    ("bn: eps None", lambda: bn(ones(4, 3), eps=None), TypeError, r"eps must be > 0 .* got None"),
    ("bn: eps nan", lambda: bn(ones(4, 3), eps=float("nan")), ValueError, r"eps must be > 0 .* got nan"),
    ("layer: float64 input", lambda: layer_call(BatchNorm(3, 2), nd.ones((2, 3), dtype="float64")),
     TypeError, r"holds float32 parameters but X is float64; cast the net \(net\.cast\('float64'\)\)"),
    ("layer: num_features string", lambda: BatchNorm("3", 2),
     TypeError, r"num_features must be a positive int; got '3' \(str\)"),
    ("layer: num_features 3.0", lambda: BatchNorm(3.0, 2),
     TypeError, r"num_features must be a positive int; got 3.0 \(float\)"),
    ("layer: eps string", lambda: BatchNorm(3, 2, eps="1e-5"), TypeError, r"eps must be > 0 .* got '1e-5'"),
    ("layer: num_dims string", lambda: BatchNorm(3, "2"), TypeError, r"num_dims must be 2 .* or 4 .*; got '2'"),
    ("data: batch_size string", lambda: data.load_fashion_mnist("64"),
     TypeError, r"batch_size must be a positive int; got '64' \(str\)"),
    ("data: resize past 2^31", lambda: data.load_fashion_mnist(256, resize=4096),
     ValueError, r"batch_size 256 with resize=4096 gives batches of 4294967296 values, more than MXNet's 2\^31"),
    ("data: num_workers negative", lambda: data.load_fashion_mnist(8, num_workers=-1),
     ValueError, r"num_workers must be an int >= 0; got -1"),
    ("seed: string", lambda: d2lbn.set_seed("0"), TypeError, r"seed must be an int >= 0; got '0' \(str\)"),
    ("device: float index", lambda: device.try_gpu(0.0), TypeError, r"i must be a GPU index, an int >= 0; got 0.0"),
    ("train: lr string", lambda: train.train(models.lenet(), [], [], 1, "0.1", mx.cpu(), plot=False),
     TypeError, r"lr must be a positive finite number; got '0.1' \(str\)"),
    ("train: num_epochs float", lambda: train.train(models.lenet(), [], [], np.float64(2), 0.1, mx.cpu(), plot=False),
     TypeError, r"num_epochs must be a positive int; got 2.0"),
    ("train: check_every 0", lambda: train.train(models.lenet(), [], [], 1, 0.1, mx.cpu(), plot=False, check_every=0),
     ValueError, r"check_every must be a positive int; got 0"),
    ("subset: size string", lambda: train.subset(data.training_loader(
        mx.gluon.data.ArrayDataset(nd.ones((4, 2))), 2), "3", shuffle=True),
     TypeError, r"the subset size must be a positive int; got '3' \(str\)"),
    ("sampler: batch_size 0", lambda: data.TrainBatchSampler(10, 0),
     ValueError, r"batch_size must be a positive int; got 0"),
    # --- data -------------------------------------------------------------------------------------
    ("data: batch_size 0", lambda: data.load_fashion_mnist(0),
     ValueError, r"batch_size must be a positive int; got 0"),
    ("data: batch_size negative", lambda: data.load_fashion_mnist(-5),
     ValueError, r"batch_size must be a positive int; got -5"),
    ("data: batch_size float", lambda: data.load_fashion_mnist(2.5),
     ValueError, r"batch_size must be a positive int; got 2.5"),
    ("data: resize 0", lambda: data.load_fashion_mnist(8, resize=0),
     ValueError, r"resize must be None or a positive int; got 0"),
    ("data: label 10", lambda: data.get_fashion_mnist_labels([3, 10]),
     ValueError, r"labels must be integers in 0..9; got 10"),
    ("data: label 1.5", lambda: data.get_fashion_mnist_labels([1.5]),
     ValueError, r"labels must be integers in 0..9; got 1.5"),
    ("data: missing file", lambda: data.read_idx("/nonexistent/x-idx1-ubyte.gz", 1),
     data.DataNotFoundError, r"/nonexistent/x-idx1-ubyte.gz: no such file"),
    # --- device -----------------------------------------------------------------------------------
    ("device: negative index", lambda: device.try_gpu(-1),
     ValueError, r"i must be a GPU index, an int >= 0; got -1"),
    ("device: string index", lambda: device.try_gpu("gpu0"),
     ValueError, r"i must be a GPU index, an int >= 0; got 'gpu0'"),
    # --- repro / plot -----------------------------------------------------------------------------
    ("seed: negative", lambda: d2lbn.set_seed(-1),
     ValueError, r"seed must be an int >= 0; got -1"),
    ("seed: float", lambda: d2lbn.set_seed(1.0),
     ValueError, r"seed must be an int >= 0; got 1.0"),
    ("plot: rank 2 images", lambda: plot.show_images(np.zeros((28, 28)), 1, 1),
     ValueError, r"images must have shape \(n, H, W\) or \(n, 1, H, W\); got \(28, 28\)"),
    ("plot: too many images", lambda: plot.show_images(np.zeros((5, 4, 4)), 2, 2),
     ValueError, r"5 images do not fit a 2x2 grid"),
    ("plot: titles mismatch", lambda: plot.show_images(np.zeros((2, 4, 4)), 1, 2, titles=["a"]),
     ValueError, r"got 1 titles for 2 images"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_error_types_are_documented():
    """d2lbn's own error classes subclass the built-in ones callers already catch."""
    assert issubclass(data.DataFileError, ValueError)
    assert issubclass(data.DataNotFoundError, FileNotFoundError)
    # a string where a number belongs is a TypeError, and still the ValueError d2lbn raised before
    assert issubclass(d2lbn.checks.ArgumentTypeError, TypeError)
    assert issubclass(d2lbn.checks.ArgumentTypeError, ValueError)
    assert issubclass(train.NonFiniteLossError, train.NonFiniteError)
    assert issubclass(train.NonFiniteError, FloatingPointError)
