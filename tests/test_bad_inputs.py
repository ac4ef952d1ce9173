"""One table of bad inputs to every public d2lbn function and the error each must raise.

Each row: (id, call, exception type, regex the message must match). The regexes ask for the argument's
name and what was given, so a bare ``assert`` or a stack trace from deep inside MXNet fails the row.
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import nd

import d2lbn
from d2lbn import data, device, models, plot, training
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
    ("train: lr string", lambda: training.train(models.lenet(), [], [], 1, "0.1", mx.cpu(), plot=False),
     TypeError, r"lr must be a positive finite number; got '0.1' \(str\)"),
    ("train: num_epochs float", lambda: training.train(models.lenet(), [], [], np.float64(2), 0.1, mx.cpu(), plot=False),
     TypeError, r"num_epochs must be a positive int; got 2.0"),
    ("train: check_every 0", lambda: training.train(models.lenet(), [], [], 1, 0.1, mx.cpu(), plot=False, check_every=0),
     ValueError, r"check_every must be a positive int; got 0"),
    ("subset: size string", lambda: training.subset(data.training_loader(
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
    assert issubclass(training.NonFiniteLossError, training.NonFiniteError)
    assert issubclass(training.NonFiniteError, FloatingPointError)


# --- NumPy integers as counts (issue 25): accepted wherever a Python int is -------------------------
# Each row calls a helper twice, once with Python ints and once with the same counts as NumPy
# integers (np.int64, np.int32, an element of an array); both must succeed and agree. The Python-int
# call is the oracle: a NumPy integer is the same number.

def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    X = nd.array(rng.uniform(size=(n, 1, 28, 28)), dtype="float32")
    y = nd.array(rng.integers(0, 10, size=n), dtype="float32")
    return X, y


def _gluon_lenet():
    from d2lbn import practice
    d2lbn.set_seed(0)
    net = practice.lenet_variant()
    net.initialize(mx.init.Xavier())
    net(_images(2)[0])
    return net


def _practice_fit(count):
    from d2lbn import practice
    X, y = _images(24)
    net = practice.lenet_variant()
    net.initialize()
    net(X[:2])
    result = practice.fit(net, (X, y, X[:8], y[:8]), count(1), 0.05, batch_size=count(8),
                          trace={"w": net[0].weight}, trace_every=count(1), cosine=False)
    return result.loss + result.test_acc + result.norms["w"]


def _practice_stats(count):
    from d2lbn import practice
    from d2lbn.moving_stats import batch_norm_layers
    net = _gluon_lenet()
    X, _ = _images(12)
    stats = practice.layer_input_stats(net, X, batch_norm_layers(net)[:2], batch_size=count(5))
    shift = practice.variance_shift(net, X, batch_norm_layers(net)[0], batch_size=count(5))
    practice.recalibrate_bn(net, X, batch_size=count(5))
    acc = practice.evaluate(net, X, _images(12)[1], batch_size=count(5))
    return [s for pair in stats for s in pair] + [shift, acc]


def _resnet(count):
    from d2lbn import resnet
    net = resnet.small_resnet(widths=np.array([count(4), count(4), count(8)]) if count is np.int64
                              else (4, 4, 8), blocks_per_stage=count(1))
    block = resnet.BasicBlock(count(8), count(4), stride=count(2))
    net.initialize()
    block.initialize()
    out = net(_images(2)[0]).shape + block(nd.ones((2, 4, 6, 6))).shape
    return [out, resnet.count_parameters(net), resnet.count_parameters(block)]


def _landscape(count):
    from d2lbn import landscape
    run = landscape.centering_run(np.arange(4.0), np.ones(4), 0.1, count(3), False)
    d2lbn.set_seed(0)
    net = landscape.make_net("bn")
    net.initialize(mx.init.Xavier())
    X, y = _images(8)
    acts = landscape.activation_inputs(net, X, count(1)).asnumpy()
    ics = landscape.internal_covariate_shift(net, gluon_loss(), X, y, count(1), 0.1)
    why = landscape.why_run("bn", (X, y, X, y), count(2), 0.05, batch_size=count(4),
                            measure_every=count(1), measure=False, probe_activation=count(2),
                            probe_size=count(4), test_limit=count(4), seed=count(0))
    return [run.b, acts, ics, why.train_loss, why.test_acc, why.percentiles]


def gluon_loss():
    return mx.gluon.loss.SoftmaxCrossEntropyLoss()


def _diagnose(count):
    from d2lbn import diagnose
    net = _gluon_lenet()
    X, y = _images(8)
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    checks = diagnose.compare_statistics(net, X, batch_size=count(4))
    stats = diagnose.input_statistics(net, batches, mx.cpu(), num_batches=count(1))
    used = diagnose.recompute_statistics(net, batches, mx.cpu(), num_batches=count(2))
    grad = diagnose.accumulated_gradient(net, X, y, count(4))
    other = diagnose.lenet_gluon_bn()
    diagnose.train_accumulated(other, batches, count(2), count(1), 0.01, mx.cpu(), seed=count(0))
    rows = diagnose.freeze_table(seed=count(0))
    return [[c.mean_shift for c in checks], stats, used, grad,
            diagnose.snapshot(other)[next(iter(other.collect_params()))], rows]


def _experiments(count):
    from d2lbn import experiments as E
    from d2lbn import data as DATA, moving_stats as MS
    arrays = DATA.fashion_arrays(train_limit=count(16), test_limit=count(8), flatten=True)
    fig = E.figure1_run(True, count(2), batch_size=count(4), eval_every=count(1),
                        test_limit=count(4), probe_size=count(4), seed=count(0), data=arrays,
                        record_unit=count(3))
    d2lbn.set_seed(0)
    net = E.lenet_with_norm("batch")
    net.initialize(mx.init.Xavier())
    X, y = _images(8)
    loader = DATA.ArrayLoader(X, y, count(4))
    MS.settle_moving_statistics(net, loader, count(2), mx.cpu())
    precise = MS.precise_statistics(net, loader, count(3), mx.cpu())
    np.random.seed(0)
    noise = E.batch_mean_noise(nd.ones((6, 3)), count(2), num_batches=count(4))
    mlp = E.SigmoidMLP(True, hidden=count(5), num_layers=count(2))
    mlp.initialize()
    return [[a.asnumpy() for a in arrays], fig.test_acc, fig.percentiles, fig.inputs,
            MS.moving_statistics(net), precise, noise, mlp(nd.ones((3, 784))).shape]


NUMPY_COUNT_CASES = [("practice.fit", _practice_fit), ("practice statistics", _practice_stats),
                     ("resnet", _resnet), ("landscape", _landscape), ("diagnose", _diagnose),
                     ("experiments", _experiments)]


def _same(a, b):
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, z in zip(a, b):
            _same(x, z)
    elif isinstance(a, nd.NDArray):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    elif hasattr(a, "__dataclass_fields__"):
        assert a == b
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("helper", [c[1] for c in NUMPY_COUNT_CASES],
                         ids=[c[0] for c in NUMPY_COUNT_CASES])
def test_numpy_integers_are_counts(helper):
    """np.int64 / np.int32 counts (and array elements) give what Python ints give."""
    expected = helper(int)
    _same(helper(np.int64), expected)
    _same(helper(lambda v: np.array([v], dtype=np.int32)[0]), expected)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: __import__("d2lbn.resnet").resnet.small_resnet(blocks_per_stage=1.0),
     TypeError, r"blocks_per_stage must be a positive int; got 1.0 \(float\)"),
    (lambda: __import__("d2lbn.resnet").resnet.small_resnet(blocks_per_stage=np.int64(0)),
     ValueError, r"blocks_per_stage must be a positive int; got 0"),
    (lambda: __import__("d2lbn.resnet").resnet.small_resnet(blocks_per_stage=True),
     TypeError, r"blocks_per_stage must be a positive int; got True \(bool\)"),
    (lambda: __import__("d2lbn.landscape").landscape.centering_run(
        np.arange(3.0), np.ones(3), 0.1, 2.0, False),
     TypeError, r"num_steps must be an int >= 0; got 2.0 \(float\)"),
    (lambda: __import__("d2lbn.diagnose").diagnose.compare_statistics(
        _gluon_lenet(), _images(4)[0], batch_size=np.float64(4)),
     TypeError, r"batch_size must be a positive int; got 4.0 \(float64\)"),
    (lambda: __import__("d2lbn.moving_stats").moving_stats.precise_statistics(
        None, [], np.int64(-2), mx.cpu()),
     ValueError, r"num_batches must be a positive int; got -2"),
], ids=["resnet float", "resnet np zero", "resnet bool", "landscape float", "diagnose np float",
        "moving_stats np negative"])
def test_non_integer_counts_say_what_they_got(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
