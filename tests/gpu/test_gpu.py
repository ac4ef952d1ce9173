"""The GPU tier (``make test-gpu``, tools/gpu_tier.py): d2lbn's layers and LeNets on ``mx.gpu(0)``.

Every test is marked ``gpu`` and skipped, with the reason, when MXNet sees no GPU (always so with the
CPU wheel of ``make test``, where these tests are collected and skipped). What runs on a GPU:

* each from-scratch layer implementation, float32 and float64, 2-D and 4-D, on the GPU: output,
  input/parameter gradients and moving statistics all on ``gpu(0)`` and equal to the float64 NumPy
  reference (tests/conftest.py, d2lbn.backward.backward_closed_form);
* which variance MXNet's GPU BatchNorm (cuDNN, and MXNet's own CUDA kernel with ``cudnn_off=True``)
  stores in its moving variance: the biased one (divide by m, as d2lbn and MXNet's CPU kernel do)
  or the unbiased one (divide by m - 1). Both hypotheses are tested against float64 NumPy; exactly one
  must match, and the output says which;
* the from-scratch layer against ``gluon.nn.BatchNorm`` on the GPU, and the from-scratch LeNet-BN
  against the Gluon one with the same weights (moving variance compared under the convention found);
* every LeNet trained on ``gpu(0)`` by ``d2lbn.training.train``: parameters, gradients, moving
  statistics and every layer's output on the GPU;
* one LeNet-BN epoch with each layer (from-scratch; Gluon, hybridized) and the ratio of their times
  (printed; not asserted).

Tolerances (float32 on the GPU, where cuDNN may sum in another order than NumPy): outputs rtol 1e-4,
atol 1e-4; gradients rtol 1e-3, atol 1e-4; float64 outputs and gradients rtol 1e-9, atol 1e-9.
These tests have not yet run on a GPU: if a tolerance proves too tight there, widen it here and say
why.

``D2LBN_GPU_TESTS_ON_CPU=1`` runs the same tests on ``mx.cpu(1)`` (no skip): a check of the tests'
own logic on a machine without a GPU, not a GPU result.
"""
import os
import time

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

from d2lbn import device, models, norm, training as T
from d2lbn.backward import backward_closed_form
from d2lbn.data import find_data_dir
from conftest import numpy_batch_norm
from test_training import fake_batches, misplaced, moving_statistics, record_output_contexts

ON_CPU = os.environ.get("D2LBN_GPU_TESTS_ON_CPU", "") not in ("", "0")
# Set by tools/gpu_tier.py: nvidia-smi showed a GPU, so MXNet not seeing one is a failure, not a skip.
REQUIRE_GPU = os.environ.get("D2LBN_REQUIRE_GPU", "") not in ("", "0")
CTX = mx.cpu(1) if ON_CPU else mx.gpu(0)


def _mxnet_gpus() -> int:
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError as err:           # a CUDA wheel that cannot talk to the driver
        if REQUIRE_GPU:
            pytest.fail(f"MXNet could not count the GPUs: {err}", pytrace=False)
        return 0


NUM_GPUS = _mxnet_gpus()
if REQUIRE_GPU and not ON_CPU and NUM_GPUS == 0:
    pytest.fail("D2LBN_REQUIRE_GPU is set (nvidia-smi lists a GPU) but MXNet sees none: is the "
                f"installed mxnet a CUDA build? ({mx.__file__}, mxnet {mx.__version__})",
                pytrace=False)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not ON_CPU and NUM_GPUS == 0,
                       reason="no GPU visible to MXNet (mx.context.num_gpus() == 0: no GPU here, "
                              "or the CPU wheel of mxnet); run `make test-gpu` on a machine with an "
                              "NVIDIA GPU"),
]

TOL = {"float32": dict(rtol=1e-4, atol=1e-4), "float64": dict(rtol=1e-9, atol=1e-9)}
GRAD_TOL = {"float32": dict(rtol=1e-3, atol=1e-4), "float64": dict(rtol=1e-9, atol=1e-9)}
# float64 moving statistics: the fast path's are off by up to 1.5e-8 relative on the CPU (float32-
# level; the naive path's by 4e-16), so they are held to rtol 1e-7
STAT_TOL = {"float32": TOL["float32"], "float64": dict(rtol=1e-7, atol=1e-9)}
MOMENTUM = 0.9


def on_ctx(*arrays):
    """The contexts of ``arrays`` that are not CTX (empty when all are on it)."""
    return [str(a.context) for a in arrays if a.context != CTX]


def test_device_helpers_pick_the_gpu():
    """d2lbn.device, which every chapter uses to choose where to run, finds the GPU."""
    if ON_CPU:
        pytest.skip("D2LBN_GPU_TESTS_ON_CPU: there is no GPU for d2lbn.device to find")
    assert device.num_gpus() == NUM_GPUS >= 1
    assert device.try_gpu() == mx.gpu(0)
    assert device.try_all_gpus() == [mx.gpu(i) for i in range(NUM_GPUS)]


# ---- the from-scratch layer on the GPU -------------------------------------------------------------

def _train_step_on_ctx(layer, x, gamma, beta, dtype, dy=None):
    """Put ``layer`` on CTX in ``dtype`` with the given gamma and beta, run one recorded forward
    pass on ``x`` and a backward pass (head gradient ``dy``, or ones); return ``(X, Y)``."""
    layer.initialize(ctx=CTX)
    layer.cast(dtype)
    layer.gamma.set_data(nd.array(gamma, ctx=CTX, dtype=dtype))
    layer.beta.set_data(nd.array(beta, ctx=CTX, dtype=dtype))
    X = nd.array(x, ctx=CTX, dtype=dtype)
    X.attach_grad()
    with autograd.record():
        Y = layer(X)
    Y.backward(None if dy is None else nd.array(dy, ctx=CTX, dtype=dtype))
    return X, Y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 5), (8, 3, 6, 6), (4, 16, 5, 5)])
@pytest.mark.parametrize("impl", sorted(norm.IMPLEMENTATIONS))
def test_layer_on_gpu_matches_numpy(impl, shape, dtype, rng):
    C = shape[1]
    x = rng.normal(2.0, 3.0, size=shape)
    dy = rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.normal(size=C)
    layer = norm.BatchNorm(C, len(shape), impl=impl)
    X, Y = _train_step_on_ctx(layer, x, gamma, beta, dtype, dy)
    params = layer.collect_params()
    assert all(p.list_ctx() == [CTX] for p in params.values())
    mm, mv = layer.moving_mean.data(CTX), layer.moving_var.data(CTX)
    assert on_ctx(Y, X.grad, layer.gamma.data(CTX), layer.beta.data(CTX), layer.gamma.grad(CTX),
                  layer.beta.grad(CTX), mm, mv) == []
    assert Y.dtype == np.dtype(dtype) and mv.dtype == np.dtype(dtype)

    y_ref, mean, var = numpy_batch_norm(x, gamma, beta)
    dx, dgamma, dbeta = backward_closed_form(dy, x, gamma)
    np.testing.assert_allclose(Y.asnumpy(), y_ref, **TOL[dtype], err_msg="output")
    np.testing.assert_allclose(X.grad.asnumpy(), dx, **GRAD_TOL[dtype], err_msg="dX")
    np.testing.assert_allclose(layer.gamma.grad(CTX).asnumpy(), dgamma, **GRAD_TOL[dtype])
    np.testing.assert_allclose(layer.beta.grad(CTX).asnumpy(), dbeta, **GRAD_TOL[dtype])
    # moving statistics from their initial 0 and 1, biased batch variance (d2lbn's convention)
    np.testing.assert_allclose(mm.asnumpy(), (1 - MOMENTUM) * mean, **STAT_TOL[dtype])
    np.testing.assert_allclose(mv.asnumpy(), MOMENTUM + (1 - MOMENTUM) * var, **STAT_TOL[dtype])
    # inference: normalised with the moving statistics it holds (checked above), still on the GPU
    Y_inf = layer(X)
    assert on_ctx(Y_inf) == []
    axes_shape = (1, C) + (1,) * (len(shape) - 2)
    m_, v_ = mm.asnumpy().astype(np.float64), mv.asnumpy().astype(np.float64)
    expected = (gamma.reshape(axes_shape) * (x - m_.reshape(axes_shape))
                / np.sqrt(v_.reshape(axes_shape) + 1e-5) + beta.reshape(axes_shape))
    np.testing.assert_allclose(Y_inf.asnumpy(), expected, **TOL[dtype], err_msg="inference")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 6)])
def test_layer_norm_on_gpu_matches_numpy(shape, dtype, rng):
    """d2lbn.norm.LayerNorm on the GPU: statistics per example, against float64 NumPy."""
    C = shape[1]
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.normal(size=C)
    layer = norm.LayerNorm(C, len(shape))
    X, Y = _train_step_on_ctx(layer, x, gamma, beta, dtype)
    assert on_ctx(Y, X.grad, layer.gamma.grad(CTX), layer.beta.grad(CTX)) == []
    axes = tuple(range(1, len(shape)))
    pshape = (1, C) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    expected = gamma.reshape(pshape) * (x - mean) / np.sqrt(var + 1e-5) + beta.reshape(pshape)
    np.testing.assert_allclose(Y.asnumpy(), expected, **TOL[dtype])
    # with a head gradient of ones, d beta is the count of values per feature/channel
    np.testing.assert_allclose(layer.beta.grad(CTX).asnumpy(), np.full(C, x.size / C), **TOL[dtype])


# ---- which variance MXNet's GPU kernels keep --------------------------------------------------------

def mxnet_moving_var(x: np.ndarray, cudnn_off: bool) -> np.ndarray:
    """The moving variance ``nd.BatchNorm`` on CTX stores after one training step (forward and
    backward, whichever of them updates it) from moving_var = 1 with momentum 0, i.e. its batch
    variance as it stores it. x: (N, C) or (N, C, H, W) float64 data, computed in float32."""
    C = x.shape[1]
    X = nd.array(x, ctx=CTX)
    gamma, beta = nd.ones(C, ctx=CTX), nd.zeros(C, ctx=CTX)
    moving_mean, moving_var = nd.zeros(C, ctx=CTX), nd.ones(C, ctx=CTX)
    for a in (X, gamma, beta):
        a.attach_grad()
    with autograd.record(train_mode=True):
        Y = nd.BatchNorm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.0,
                         fix_gamma=False, cudnn_off=cudnn_off)
    Y.backward()
    assert on_ctx(Y, moving_var) == []
    return moving_var.asnumpy().astype(np.float64)


def variance_convention(x: np.ndarray, stored: np.ndarray) -> str:
    """'biased' or 'unbiased': the one hypothesis ``stored`` matches (rtol 1e-4); an AssertionError
    naming both deviations when none or both match."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    m = x.size // x.shape[1]
    biased = x.var(axis=axes)                     # float64 NumPy, divide by m
    unbiased = biased * m / (m - 1)               # divide by m - 1
    dev = {name: float(np.max(np.abs(stored - ref) / ref))
           for name, ref in (("biased", biased), ("unbiased", unbiased))}
    matches = [name for name, d in dev.items() if d < 1e-4]
    assert len(matches) == 1, (f"moving variance matches {matches or 'neither'} of the hypotheses "
                               f"(m = {m}; max relative deviation {dev})")
    return matches[0]


@pytest.fixture(scope="module")
def gluon_convention():
    """The convention of ``gluon.nn.BatchNorm``'s moving variance on CTX (cuDNN where MXNet uses it),
    per input rank: {2: 'biased' | 'unbiased', 4: ...}."""
    rng = np.random.default_rng(7)
    return {ndim: variance_convention(x, mxnet_moving_var(x, cudnn_off=False))
            for ndim, x in ((2, rng.normal(1.0, 2.0, size=(6, 5))),
                            (4, rng.normal(1.0, 2.0, size=(4, 3, 2, 2))))}


@pytest.mark.parametrize("cudnn_off", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2, 2), (2, 8, 3, 3)])
def test_which_variance_the_moving_variance_holds(shape, cudnn_off, rng):
    """m = 6, 16 or 18 values per channel: the unbiased variance is m / (m - 1), 6 to 20 per cent,
    above the biased one, far outside rtol 1e-4."""
    x = rng.normal(1.0, 2.0, size=shape)
    found = variance_convention(x, mxnet_moving_var(x, cudnn_off))
    kernel = ("MXNet's own CUDA kernel (cudnn_off=True)" if cudnn_off else "cuDNN (cudnn_off=False)")
    if ON_CPU:
        kernel = f"CPU kernel (a CPU check of this test, cudnn_off={cudnn_off} ignored)"
    print(f"\n[gpu tier] {CTX} BatchNorm, {kernel}, input {shape}: moving variance is the "
          f"{found.upper()} batch variance")


# ---- the from-scratch layer against gluon.nn.BatchNorm on the GPU ----------------------------------

def expected_gluon_moving_var(ours: np.ndarray, m: int, convention: str) -> np.ndarray:
    """Gluon's moving variance after one step from 1, predicted from ours (biased, same momentum)."""
    batch_var = (ours - MOMENTUM) / (1 - MOMENTUM)
    if convention == "unbiased":
        batch_var = batch_var * m / (m - 1)
    return MOMENTUM + (1 - MOMENTUM) * batch_var


@pytest.mark.parametrize("shape", [(32, 7), (8, 16, 5, 5)])
@pytest.mark.parametrize("impl", sorted(norm.IMPLEMENTATIONS))
def test_layer_equals_gluon_on_gpu(impl, shape, rng, gluon_convention):
    C, ndim = shape[1], len(shape)
    ours, theirs = norm.BatchNorm(C, ndim, impl=impl), gluon.nn.BatchNorm(in_channels=C)
    for layer in (ours, theirs):
        layer.initialize(ctx=CTX)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.normal(size=C)
    x, dy = rng.normal(1.0, 3.0, size=shape), rng.normal(size=shape)
    results = []
    for layer in (ours, theirs):
        layer.gamma.set_data(nd.array(gamma, ctx=CTX))
        layer.beta.set_data(nd.array(beta, ctx=CTX))
        X = nd.array(x, ctx=CTX)
        X.attach_grad()
        with autograd.record():
            Y = layer(X)
        Y.backward(nd.array(dy, ctx=CTX))
        stats = [p.data(CTX) for p in moving_statistics_of(layer)]
        assert on_ctx(Y, X.grad, *stats) == []
        results.append((Y.asnumpy(), X.grad.asnumpy(), layer.gamma.grad(CTX).asnumpy(),
                        layer.beta.grad(CTX).asnumpy(), *(s.asnumpy() for s in stats)))
    (y1, dx1, dg1, db1, mm1, mv1), (y2, dx2, dg2, db2, mm2, mv2) = results
    np.testing.assert_allclose(y1, y2, **TOL["float32"], err_msg="training output")
    np.testing.assert_allclose(dx1, dx2, **GRAD_TOL["float32"], err_msg="dX")
    np.testing.assert_allclose(dg1, dg2, **GRAD_TOL["float32"], err_msg="dgamma")
    np.testing.assert_allclose(db1, db2, **GRAD_TOL["float32"], err_msg="dbeta")
    np.testing.assert_allclose(mm1, mm2, **TOL["float32"], err_msg="moving mean")
    m = x.size // C
    convention = gluon_convention[ndim]
    np.testing.assert_allclose(mv2, expected_gluon_moving_var(mv1, m, convention), **TOL["float32"],
                               err_msg=f"Gluon's moving variance, taken as the {convention} one")
    # inference with the same moving statistics in both
    ours.moving_var.set_data(nd.array(mv2, ctx=CTX))
    np.testing.assert_allclose(ours(nd.array(x, ctx=CTX)).asnumpy(),
                               theirs(nd.array(x, ctx=CTX)).asnumpy(), **TOL["float32"],
                               err_msg="inference output")


def moving_statistics_of(layer):
    """[moving mean, moving variance] of a from-scratch or Gluon batch-norm layer."""
    params = sorted(layer.collect_params().items())
    means = [p for name, p in params if name.endswith(("moving_mean", "running_mean"))]
    variances = [p for name, p in params if name.endswith(("moving_var", "running_var"))]
    assert len(means) == len(variances) == 1
    return [means[0], variances[0]]


def test_lenet_scratch_equals_gluon_on_gpu(gluon_convention):
    """test_models.test_scratch_equals_builtin_with_same_weights on the GPU: same weights, one
    training step; outputs, gradients and moving means equal, moving variances under the
    convention found."""
    mx.random.seed(3)
    nets = [models.get_model("lenet-bn"), models.get_model("lenet-bn-gluon")]
    for net in nets:
        net.initialize(mx.init.Xavier(), ctx=CTX)
        net(nd.zeros((2, 1, 28, 28), ctx=CTX))
    ours, theirs = nets
    for p, q in zip(ours.collect_params().values(), theirs.collect_params().values()):
        q.set_data(p.data(CTX))
    N = 16
    X = nd.random.normal(0.5, 1.0, shape=(N, 1, 28, 28), ctx=CTX)
    y = nd.array(np.arange(N) % 10, ctx=CTX)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    outputs = []
    for net in nets:
        with autograd.record():
            out = net(X)
            l = loss(out, y)
        l.backward()
        assert on_ctx(out) == [] and misplaced(net, CTX) == []
        outputs.append(out.asnumpy())
    np.testing.assert_allclose(outputs[0], outputs[1], **TOL["float32"], err_msg="scores")
    # values per channel of each batch-norm layer: N*24*24, N*8*8, N, N
    per_channel = [N * 24 * 24, N * 8 * 8, N, N]
    bn_ours, bn_theirs = models.batch_norm_layers(ours), models.batch_norm_layers(theirs)
    for k, (a, b) in enumerate(zip(bn_ours, bn_theirs)):
        (mm1, mv1), (mm2, mv2) = ([p.data(CTX).asnumpy() for p in moving_statistics_of(layer)]
                                  for layer in (a, b))
        np.testing.assert_allclose(mm1, mm2, **TOL["float32"], err_msg=f"moving mean {k}")
        convention = gluon_convention[a.num_dims]
        np.testing.assert_allclose(mv2, expected_gluon_moving_var(mv1, per_channel[k], convention),
                                   **TOL["float32"], err_msg=f"moving variance {k} ({convention})")
    for (name, p), q in zip(ours.collect_params().items(), theirs.collect_params().values()):
        if p.grad_req != "null" and not name.endswith("_bias"):
            np.testing.assert_allclose(p.grad(CTX).asnumpy(), q.grad(CTX).asnumpy(),
                                       **GRAD_TOL["float32"], err_msg=f"gradient of {name}")


# ---- every model trained on the GPU ----------------------------------------------------------------

@pytest.mark.parametrize("name, hybridize", [("lenet", False), ("lenet-bn", False),
                                             ("lenet-bn-gluon", False), ("lenet-bn-gluon", True)])
def test_model_trains_on_gpu(name, hybridize):
    """test_training.test_everything_lives_on_the_chosen_context with CTX = gpu(0)."""
    net = models.get_model(name)
    if hybridize:
        net.hybridize()
    outputs = [] if hybridize else record_output_contexts(net)
    batches = fake_batches(96, 32)                   # on cpu(0): train() moves them
    history = T.train(net, batches, batches[:1], 1, 0.1, CTX, progress=False, plot=False,
                      log=lambda s: None)
    assert history.device == str(CTX) and np.isfinite(history.loss[0])
    assert misplaced(net, CTX) == []
    stats = moving_statistics(net)
    assert len(stats) == (0 if name == "lenet" else 8)
    for p in stats:
        assert p.list_ctx() == [CTX] and p.data(CTX).context == CTX
    if stats:
        assert not np.allclose(stats[0].data(CTX).asnumpy(), 0), "moving mean never updated"
    if not hybridize:
        assert len(outputs) == 4 * len(net._children)
        assert {ctx for _, ctx in outputs} == {CTX}
    assert net(batches[0][0].as_in_context(CTX)).context == CTX


# ---- one LeNet-BN epoch with each layer ------------------------------------------------------------

def epoch_data(batch_size: int = 128):
    """Real Fashion-MNIST when it is found (one full epoch), else 12,800 random images (100 batches)."""
    if find_data_dir() is not None:
        train_iter, test_iter = T.fashion_mnist_iters(batch_size)
        return "Fashion-MNIST (60,000 training images)", train_iter, test_iter, True
    batches = fake_batches(12_800, batch_size, seed=1)
    return "random images (12,800; Fashion-MNIST not found)", batches, batches[:10], False


def test_lenet_bn_epoch_time_on_gpu():
    s = T.lenet_settings(quick=False)
    what, train_iter, test_iter, real = epoch_data(s.batch_size)
    warmup = fake_batches(5 * s.batch_size, s.batch_size, seed=2)
    seconds = {}
    for label, name in (("from-scratch", "lenet-bn"), ("Gluon, hybridized", "lenet-bn-gluon")):
        net = models.get_model(name)
        if name == "lenet-bn-gluon":
            net.hybridize()
        kwargs = dict(momentum=s.momentum, progress=False, plot=False, log=lambda s: None)
        T.train(net, warmup, warmup[:1], 1, s.lr, CTX, **kwargs)     # compile, cuDNN set-up
        mx.nd.waitall()
        start = time.perf_counter()
        history = T.train(net, train_iter, test_iter, 1, s.lr, CTX, lr_schedule=s.lr_schedule,
                          **kwargs)
        mx.nd.waitall()
        seconds[label] = time.perf_counter() - start
        assert misplaced(net, CTX) == []
        assert np.isfinite(history.loss[0])
        if real:
            assert history.test_acc[0] > 0.6, f"{label}: test accuracy {history.test_acc[0]:.3f}"
        print(f"\n[gpu tier] one LeNet-BN epoch on {CTX}, {what}, {label}: {seconds[label]:.2f} s, "
              f"{history.examples_per_sec[0]:.0f} examples/s (training), loss "
              f"{history.loss[0]:.3f}, test accuracy {history.test_acc[0]:.3f}")
    ratio = seconds["from-scratch"] / seconds["Gluon, hybridized"]
    print(f"[gpu tier] LeNet-BN epoch time ratio, from-scratch / Gluon (hybridized): {ratio:.2f}x")
