"""The GPU counterparts of ch07_devices' CPU demonstrations (``make test-gpu``; marked ``gpu``).

The chapter runs its "devices" as the CPU contexts ``cpu(0)`` and ``cpu(1)``. Two of its claims
about MXNet 1.9.1 are therefore checked here on GPUs, where other code runs (cuDNN's batch norm,
which updates the moving statistics in the forward pass; the GPU kvstore's copies):

* the Gluon ``Trainer``'s first ``step`` copies *every* parameter, the moving statistics included,
  from the first device to the others (``gluon/trainer.py``: ``_reset_kvstore`` puts every
  parameter in ``_params_to_init``, ``_init_params`` calls ``kvstore.broadcast``); later steps
  leave the moving statistics alone, so with per-device batch norm the devices part again. With
  two GPUs: ``gpu(0)`` and ``gpu(1)``; with one: ``gpu(0)`` and ``cpu(0)`` (kvstore ``'local'``);
* ``gluon.contrib.nn.SyncBatchNorm`` writes its running statistics in the backward pass on GPUs
  too: its operator is one template for CPU and GPU (``src/operator/contrib/sync_batch_norm-inl.h``
  at tag 1.9.1, ``Backward``: "update moving avg").

Oracles: the values on the first device read before the step; float64 NumPy statistics of the
batch. Skipped, with the reason, without GPUs. ``D2LBN_GPU_TESTS_ON_CPU=1`` runs the same tests on
``cpu(1)`` and ``cpu(2)`` (a check of the tests' own logic, not a GPU result). These tests have not
yet run on a GPU.
"""
import os

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import parallel as P

ON_CPU = os.environ.get("D2LBN_GPU_TESTS_ON_CPU", "") not in ("", "0")
REQUIRE_GPU = os.environ.get("D2LBN_REQUIRE_GPU", "") not in ("", "0")


def _mxnet_gpus() -> int:
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError as err:           # a CUDA wheel that cannot talk to the driver
        if REQUIRE_GPU:
            pytest.fail(f"MXNet could not count the GPUs: {err}", pytrace=False)
        return 0


NUM_GPUS = _mxnet_gpus()
NO_GPU = ("no GPU visible to MXNet (mx.context.num_gpus() == 0: no GPU here, or the CPU wheel of "
          "mxnet); run `make test-gpu` on a machine with an NVIDIA GPU")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_CPU and NUM_GPUS == 0, reason=NO_GPU)]

TWO = [mx.cpu(1), mx.cpu(2)] if ON_CPU else [mx.gpu(0), mx.gpu(1)]
MIXED = [mx.cpu(1), mx.cpu(0)] if ON_CPU else [mx.gpu(0), mx.cpu(0)]
need_two = pytest.mark.skipif(not ON_CPU and NUM_GPUS < 2,
                              reason=f"needs two GPUs; MXNet sees {NUM_GPUS}")


def _batches(steps=3, n=8):
    """``steps`` batches (X: (n, 1, 28, 28), y) whose second halves are brighter, so that the two
    devices' slices have different statistics."""
    d2lbn.set_seed(5)
    batches = []
    for _ in range(steps):
        X = nd.random.uniform(shape=(n, 1, 28, 28))
        X[n // 2:] = X[n // 2:] * 3 + 1
        batches.append((X, nd.array(np.arange(n) % 10)))
    return batches


def _net(kind, ctxs):
    """Per-device batch norm on ``ctxs``: the book's LeNet with d2lbn's layer, or a small net with
    Gluon's BatchNorm (cuDNN on a GPU)."""
    if kind == "d2lbn":
        return P.reference_and_data_parallel("local", ctxs, nd.zeros((8, 1, 28, 28)), seed=0)[1]
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Conv2D(4, kernel_size=3), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.Flatten(), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    return net


def _check_first_step_broadcast(trace):
    before, after = trace["before"], trace["after"]
    assert np.abs(before[0, 0] - before[0, 1]).max() > 1e-2, "the slices' statistics should differ"
    np.testing.assert_array_equal(after[0, 1], before[0, 0])     # device 1 gets device 0's
    np.testing.assert_array_equal(after[0, 0], before[0, 0])     # device 0 keeps its own
    for s in range(1, before.shape[0]):
        np.testing.assert_array_equal(after[s], before[s])       # later steps leave them alone
        assert np.abs(after[s, 0] - after[s, 1]).max() > 1e-3    # and the devices part again


@need_two
@pytest.mark.parametrize("kind", ["d2lbn", "gluon"])
def test_first_step_copies_gpu0s_moving_statistics_to_gpu1(kind):
    net = _net(kind, TWO)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    trace = P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
                                      _batches(), TWO)
    _check_first_step_broadcast(trace)


@pytest.mark.parametrize("kind", ["d2lbn", "gluon"])
def test_first_step_copies_the_gpus_moving_statistics_to_the_cpu(kind):
    """One GPU is enough: gpu(0) is the first device, cpu(0) the second (kvstore 'local')."""
    net = _net(kind, MIXED)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore="local")
    trace = P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
                                      _batches(), MIXED)
    _check_first_step_broadcast(trace)


@need_two
def test_mxnet_sync_batch_norm_writes_running_statistics_in_the_backward_pass():
    """After the (threaded) forward passes the running statistics are still their initial values;
    after the backward passes, with momentum 0, they are the whole batch's mean and biased
    variance on both devices."""
    bn = gluon.contrib.nn.SyncBatchNorm(in_channels=3, num_devices=2, momentum=0.0)
    bn.initialize(ctx=TWO)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4, 4))
    x[4:] = 3 * x[4:] + 5
    Xs = [nd.array(x[4 * k:4 * k + 4], ctx=c) for k, c in enumerate(TWO)]
    after_forward = [None, None]

    def work(k):
        with autograd.record():
            out = bn(Xs[k]).sum()
        after_forward[k] = (bn.running_mean.data(TWO[k]).asnumpy().copy(),
                            bn.running_var.data(TWO[k]).asnumpy().copy())
        out.backward()

    P.in_threads(work, 2)
    nd.waitall()
    for k, c in enumerate(TWO):
        np.testing.assert_array_equal(after_forward[k][0], np.zeros(3))
        np.testing.assert_array_equal(after_forward[k][1], np.ones(3))
        np.testing.assert_allclose(bn.running_mean.data(c).asnumpy(), x.mean(axis=(0, 2, 3)),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.running_var.data(c).asnumpy(), x.var(axis=(0, 2, 3)),
                                   rtol=1e-4, atol=1e-5)
