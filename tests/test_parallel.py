"""Batch norm across devices (d2lbn.parallel) on CPU contexts cpu(0) and cpu(1): the all-reduce, the
synchronised statistics and layer against the whole batch on one device (float64 NumPy and
d2lbn.norm.batch_norm), MXNet's own SyncBatchNorm, and data-parallel training against one device."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn
from d2lbn import parallel as P
from d2lbn.norm import batch_norm
from conftest import numpy_batch_norm

CTXS = [mx.cpu(0), mx.cpu(1)]


def slices(x, sizes):
    """Cut the NumPy batch x into consecutive slices of ``sizes``, slice k as an NDArray on CTXS[k]."""
    bounds = np.cumsum([0] + list(sizes))
    return [nd.array(x[a:b], ctx=CTXS[k]) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def shifted_batch(rng, shape):
    """A batch whose second half is shifted and stretched, so per-slice statistics differ a lot."""
    x = rng.normal(size=shape)
    x[shape[0] // 2:] = 3 * x[shape[0] // 2:] + 5
    return x


def test_all_reduce_sum_values_places_and_gradient(rng):
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    arrays = [nd.array(a, ctx=CTXS[0]), nd.array(b, ctx=CTXS[1])]
    for arr in arrays:
        arr.attach_grad()
    with autograd.record():
        out = P.all_reduce_sum(arrays)
        total = sum((o * (k + 1)).sum().as_in_context(CTXS[0]) for k, o in enumerate(out))
    total.backward()
    for k, o in enumerate(out):
        assert o.context == CTXS[k]
        np.testing.assert_allclose(o.asnumpy(), a + b, rtol=1e-6)
    for arr in arrays:                           # d total / d a = 1 + 2: each copy feeds the total
        np.testing.assert_allclose(arr.grad.asnumpy(), np.full((2, 3), 3.0))


def test_all_reduce_sum_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        P.all_reduce_sum([nd.ones(3, ctx=CTXS[0]), nd.ones(4, ctx=CTXS[1])])


@pytest.mark.parametrize("shape, sizes", [((8, 5), (4, 4)), ((8, 3, 4, 4), (3, 5)), ((6, 2, 1, 3), (1, 5))])
def test_sync_moments_equal_whole_batch_and_local_do_not(shape, sizes, rng):
    x = shifted_batch(rng, shape)
    means, variances = P.sync_moments(slices(x, sizes))
    _, mean, var = numpy_batch_norm(x, np.ones(shape[1]), np.zeros(shape[1]))
    for k in range(2):
        assert means[k].context == CTXS[k]
        np.testing.assert_allclose(means[k].asnumpy().ravel(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variances[k].asnumpy().ravel(), var, rtol=1e-5, atol=1e-5)
    local = x[:sizes[0]].mean(axis=(0,) if x.ndim == 2 else (0, 2, 3))
    assert np.abs(local - mean).max() > 1.0      # per-device statistics are not the whole batch's


def test_sync_batch_norm_matches_one_device_values_gradients_and_moving_stats(rng):
    shape = (8, 3, 4, 4)
    x, w = shifted_batch(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    mm, mv = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    # one device, whole batch
    X = nd.array(x); X.attach_grad()
    G = nd.array(gamma); G.attach_grad()
    with autograd.record():
        Y, new_mean, new_var = batch_norm(X, G, nd.array(beta), nd.array(mm), nd.array(mv), training=True)
        loss = (Y * nd.array(w)).sum()
    loss.backward()
    # two devices, synchronised
    Xs, Ws = slices(x, (4, 4)), slices(w, (4, 4))
    Gs = [nd.array(gamma, ctx=c) for c in CTXS]
    for a in Xs + Gs:
        a.attach_grad()
    with autograd.record():
        Ys, new_means, new_vars = P.sync_batch_norm(
            Xs, Gs, [nd.array(beta, ctx=c) for c in CTXS], [nd.array(mm, ctx=c) for c in CTXS],
            [nd.array(mv, ctx=c) for c in CTXS], training=True)
        losses = [(Yk * Wk).sum() for Yk, Wk in zip(Ys, Ws)]
    autograd.backward(losses)
    joined = np.concatenate([Yk.asnumpy() for Yk in Ys])
    np.testing.assert_allclose(joined, Y.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(joined, numpy_batch_norm(x, gamma, beta)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([a.grad.asnumpy() for a in Xs]), X.grad.asnumpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(Gs[0].grad.asnumpy() + Gs[1].grad.asnumpy(), G.grad.asnumpy(),
                               rtol=1e-4, atol=1e-5)      # the trainer sums gradients over devices
    for k in range(2):
        np.testing.assert_allclose(new_means[k].asnumpy(), new_mean.asnumpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_vars[k].asnumpy(), new_var.asnumpy(), rtol=1e-5, atol=1e-6)


def test_sync_batch_norm_inference_uses_each_devices_moving_stats(rng):
    x = rng.normal(size=(4, 2))
    Xs = slices(x, (2, 2))
    ones = [nd.ones(2, ctx=c) for c in CTXS]
    zeros = [nd.zeros(2, ctx=c) for c in CTXS]
    means = [nd.array([1.0, 2.0], ctx=c) for c in CTXS]
    Ys, _, _ = P.sync_batch_norm(Xs, ones, zeros, means, [nd.array([4.0, 4.0], ctx=c) for c in CTXS],
                                 training=False)
    expected = (x - np.array([1.0, 2.0])) / np.sqrt(4.0 + 1e-5)
    np.testing.assert_allclose(np.concatenate([Y.asnumpy() for Y in Ys]), expected, rtol=1e-5)


def test_sync_layer_in_list_sequential(rng):
    net = P.ListSequential()
    layer = P.SyncBatchNorm(3, 2, momentum=0.0)
    net.add(gluon.nn.Dense(3, in_units=4), layer)
    net.initialize(ctx=CTXS)
    x = shifted_batch(rng, (6, 4))
    Xs = slices(x, (3, 3))
    with autograd.record():
        Ys = net(Xs)
    hidden = np.concatenate([net._layers[0](X).asnumpy() for X in Xs])
    assert [Y.context for Y in Ys] == CTXS
    for c in CTXS:                 # momentum 0: the moving statistics are the whole batch's, everywhere
        np.testing.assert_allclose(layer.moving_mean.data(c).asnumpy(), hidden.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_var.data(c).asnumpy(), hidden.var(axis=0), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="list"):
        layer(nd.ones((2, 3)))


def test_mxnet_sync_batch_norm_statistics_are_the_whole_batch(rng):
    """gluon.contrib.nn.SyncBatchNorm (momentum 0) stores the whole batch's mean and biased variance
    (MXNet writes its running statistics during the backward pass)."""
    bn = gluon.contrib.nn.SyncBatchNorm(in_channels=3, num_devices=2, momentum=0.0)
    bn.initialize(ctx=CTXS)
    x = shifted_batch(rng, (8, 3, 2, 2))
    Xs = slices(x, (4, 4))
    with autograd.record():
        outputs = [bn(X).sum() for X in Xs]
    autograd.backward(outputs)
    nd.waitall()
    for c in CTXS:
        np.testing.assert_allclose(bn.running_mean.data(c).asnumpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.running_var.data(c).asnumpy(), x.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_mxnet_sync_batch_norm_averages_unequal_slices_without_weights(rng):
    """Why split_batch insists on equal slices: with slices of 2 and 6, MXNet's SyncBatchNorm stores
    the unweighted average of the two slices' E(x) and E(x^2) (sync_batch_norm-inl.h:156 at 1.9.1),
    not the whole batch's statistics, while sync_moments gives the whole batch's (float64 NumPy)."""
    bn = gluon.contrib.nn.SyncBatchNorm(in_channels=3, num_devices=2, momentum=0.0)
    bn.initialize(ctx=CTXS)
    x = shifted_batch(rng, (8, 3, 2, 2))
    Xs = slices(x, (2, 6))

    def work(k):
        with autograd.record():
            out = bn(Xs[k]).sum()
        out.backward()

    P.in_threads(work, 2)
    nd.waitall()
    parts = (x[:2], x[2:])
    mean = np.mean([p.mean(axis=(0, 2, 3)) for p in parts], axis=0)
    square = np.mean([(p ** 2).mean(axis=(0, 2, 3)) for p in parts], axis=0)
    for c in CTXS:
        np.testing.assert_allclose(bn.running_mean.data(c).asnumpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.running_var.data(c).asnumpy(), square - mean ** 2,
                                   rtol=1e-4, atol=1e-5)
        assert np.abs(bn.running_mean.data(c).asnumpy() - x.mean(axis=(0, 2, 3))).max() > 0.1
    means, variances = P.sync_moments(Xs)
    for m, v in zip(means, variances):
        np.testing.assert_allclose(m.asnumpy().ravel(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v.asnumpy().ravel(), x.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def _max_param_difference(net_a, net_b, ctx_b):
    pa, pb = list(net_a.collect_params().values()), list(net_b.collect_params().values())
    assert [p.shape for p in pa] == [p.shape for p in pb]
    return max(float(np.abs(a.data().asnumpy() - b.data(ctx_b).asnumpy()).max()) for a, b in zip(pa, pb))


@pytest.mark.parametrize("norm, synchronised", [("sync", True), ("mxnet-sync", True), ("local", False)])
def test_data_parallel_training_equals_one_device_only_when_synchronised(norm, synchronised):
    d2lbn.set_seed(3)
    X = nd.random.uniform(shape=(16, 1, 28, 28)) * nd.arange(16).reshape((16, 1, 1, 1)) / 8
    y = nd.array(np.arange(16) % 10)
    nets = P.reference_and_data_parallel(norm, CTXS, X)
    one, many = nets
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    t1 = gluon.Trainer(one.collect_params(), "sgd", {"learning_rate": 0.1})
    t2 = gluon.Trainer(many.collect_params(), "sgd", {"learning_rate": 0.1})
    assert _max_param_difference(one, many, CTXS[1]) == 0
    for _ in range(3):
        P.data_parallel_step(one, t1, loss_fn, X, y, CTXS[:1])
        P.data_parallel_step(many, t2, loss_fn, X, y, CTXS)
    difference = _max_param_difference(one, many, CTXS[1])
    if synchronised:
        assert difference < 1e-4
    else:
        assert difference > 1e-3


@pytest.mark.parametrize("call, error, words", [
    (lambda: P.split_batch(nd.ones((5, 2)), nd.ones(5), CTXS), ValueError, "divisible"),
    (lambda: P.split_batch(nd.ones((4, 2)), nd.ones(3), CTXS), ValueError, "rows"),
    (lambda: P.split_batch(nd.ones((4, 2)), nd.ones(4), [CTXS[0], CTXS[0]]), ValueError, "distinct"),
    (lambda: P.data_parallel_lenet("ghost", 2), ValueError, "norm"),
    (lambda: P.sync_moments([nd.ones((2, 3)), nd.ones((2, 4))]), ValueError, "agree"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


# ---- the Trainer's first step and the moving statistics -------------------------------------------

def _gluon_bn_net(ctxs):
    """A small net with Gluon's own BatchNorm (on the CPU MXNet updates its moving statistics
    in the backward pass), initialised on ``ctxs``."""
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Conv2D(4, kernel_size=3), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.Flatten(), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    return net


def _steps_of_shifted_images(steps=3, n=8):
    """``steps`` batches (X, y) of n images; the second half of each batch is brighter, so the two
    devices' slices have different statistics."""
    d2lbn.set_seed(5)
    batches = []
    for _ in range(steps):
        X = nd.random.uniform(shape=(n, 1, 12, 12))
        X[n // 2:] = X[n // 2:] * 3 + 1
        batches.append((X, nd.array(np.arange(n) % 10)))
    return batches


@pytest.mark.parametrize("kind", ["d2lbn", "gluon"])
def test_first_trainer_step_copies_device_0s_moving_statistics(kind):
    """MXNet 1.9.1's Trainer puts every parameter in _params_to_init and its first step() broadcasts
    each from the first device, moving statistics (grad_req='null') included; later steps leave
    them alone, so the devices' statistics part again. Oracle: device 0's values read before the
    step."""
    batches = _steps_of_shifted_images()
    if kind == "d2lbn":
        _, net = P.reference_and_data_parallel("local", CTXS, nd.zeros((8, 1, 28, 28)), seed=0)
        batches = [(nd.tile(X, (1, 1, 3, 3))[:, :, :28, :28], y) for X, y in batches]
    else:
        net = _gluon_bn_net(CTXS)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    trace = P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), batches,
                                      CTXS)
    before, after = trace["before"], trace["after"]
    assert before.shape == after.shape and before.shape[:2] == (3, 2)
    # before the first step each device has updated its statistics from its own slice
    assert np.abs(before[0, 0] - before[0, 1]).max() > 1e-2
    # the first step: device 1 receives device 0's statistics, device 0 keeps its own
    np.testing.assert_array_equal(after[0, 1], before[0, 0])
    np.testing.assert_array_equal(after[0, 0], before[0, 0])
    # later steps do not touch the moving statistics, which part again from the next slices on
    for s in (1, 2):
        np.testing.assert_array_equal(after[s], before[s])
        assert np.abs(after[s, 0] - after[s, 1]).max() > 1e-3


def test_one_device_trainer_has_no_kvstore_and_broadcasts_nothing():
    """With one context the Trainer creates no kvstore (model._create_kvstore), so nothing is
    copied: the statistics after the step are those before it."""
    net = _gluon_bn_net(CTXS[:1])
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    trace = P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
                                      _steps_of_shifted_images(1), CTXS[:1])
    assert trainer._kvstore is None
    np.testing.assert_array_equal(trace["after"], trace["before"])


def test_average_moving_statistics_is_the_mean_over_devices_and_nothing_else():
    net = _gluon_bn_net(CTXS)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
                              _steps_of_shifted_images(2), CTXS)
    stats = [P.moving_statistics(net, c) for c in CTXS]
    assert np.abs(stats[0] - stats[1]).max() > 1e-3
    others = {name: [p.data(c).asnumpy().copy() for c in CTXS]
              for name, p in net.collect_params().items() if not name.endswith(P.MOVING)}
    P.average_moving_statistics(net, CTXS)
    for c in CTXS:
        np.testing.assert_allclose(P.moving_statistics(net, c), (stats[0] + stats[1]) / 2,
                                   rtol=1e-6, atol=1e-7)
    for name, p in net.collect_params().items():
        if name in others:
            for k, c in enumerate(CTXS):
                np.testing.assert_array_equal(p.data(c).asnumpy(), others[name][k])


def test_data_parallel_step_divides_by_the_batch_size_it_is_given():
    """SGD without momentum: dividing by 2N instead of N halves every weight's first update."""
    X, y = _steps_of_shifted_images(1)[0]
    changes = []
    for batch_size in (None, 16):
        d2lbn.set_seed(2)
        net = _gluon_bn_net(CTXS)
        dense = net[-1]
        net(X[:4].as_in_context(CTXS[0]))
        w0 = dense.weight.data(CTXS[0]).asnumpy().copy()
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
        P.data_parallel_step(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), X, y, CTXS,
                             batch_size=batch_size)
        changes.append(dense.weight.data(CTXS[0]).asnumpy() - w0)
    np.testing.assert_allclose(changes[1], changes[0] / 2, rtol=1e-4, atol=1e-7)


def test_moving_statistics_helpers_reject_what_they_cannot_use():
    plain = gluon.nn.Dense(3, in_units=2)
    plain.initialize(ctx=CTXS)
    with pytest.raises(ValueError, match="no moving statistics"):
        P.moving_statistics(plain, CTXS[0])
    net = _gluon_bn_net(CTXS)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="at least one"):
        P.trace_moving_statistics(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), [], CTXS)


def test_dist_sync_first_step_gives_every_worker_rank_0s_statistics(tmp_path):
    """Two worker processes of a dist_sync job (python -m d2lbn launch, one server), per-worker batch
    norm: the Trainer's first step broadcasts rank 0's moving statistics (kvstore init by rank 0,
    then a pull by every worker); later steps leave them alone and the workers part."""
    import io
    import os
    import sys
    from d2lbn.launch import launch
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out, log = tmp_path / "trace", io.StringIO()
    env = {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = launch([sys.executable, "-m", "d2lbn.parallel", "--out", str(out), "--steps", "3",
                   "--batch-size", "16"], 2, 1, out=log, env=env, timeout=240)
    assert code == 0, log.getvalue()
    ranks = [dict(np.load(f"{out}-rank{r}.npz")) for r in range(2)]
    assert [int(r["rank"]) for r in ranks] == [0, 1]
    before = [r["before"][:, 0] for r in ranks]          # (steps, S) per rank
    after = [r["after"][:, 0] for r in ranks]
    assert np.abs(before[0][0] - before[1][0]).max() > 1e-2
    np.testing.assert_array_equal(after[1][0], before[0][0])
    np.testing.assert_array_equal(after[0][0], before[0][0])
    for s in (1, 2):
        np.testing.assert_array_equal(after[0][s], before[0][s])
        np.testing.assert_array_equal(after[1][s], before[1][s])
        assert np.abs(after[0][s] - after[1][s]).max() > 1e-3


def test_mxnet_sync_batch_norm_leaves_running_statistics_alone_in_the_forward_pass(rng):
    """On the CPU (the GPU counterpart is in tests/gpu/test_gpu_devices.py): after the threaded
    forward passes the running statistics are still 0 and 1; the backward passes write them."""
    bn = gluon.contrib.nn.SyncBatchNorm(in_channels=3, num_devices=2, momentum=0.0)
    bn.initialize(ctx=CTXS)
    x = shifted_batch(rng, (8, 3, 2, 2))
    Xs = slices(x, (4, 4))
    after_forward = [None, None]

    def work(k):
        with autograd.record():
            out = bn(Xs[k]).sum()
        after_forward[k] = bn.running_mean.data(CTXS[k]).asnumpy().copy()
        out.backward()

    P.in_threads(work, 2)
    nd.waitall()
    for k, c in enumerate(CTXS):
        np.testing.assert_array_equal(after_forward[k], np.zeros(3))
        np.testing.assert_allclose(bn.running_mean.data(c).asnumpy(), x.mean(axis=(0, 2, 3)),
                                   rtol=1e-5, atol=1e-5)
