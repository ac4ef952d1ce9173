"""Tests of d2lbn.federated (ch13) against NumPy weighted averages."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import nd
from mxnet.gluon import nn

from d2lbn.federated import aggregate, is_norm_param, weighted_average


def client(seed):
    mx.random.seed(seed)
    net = nn.HybridSequential()
    net.add(nn.Dense(5, in_units=3), nn.BatchNorm(in_channels=5), nn.Dense(2, in_units=5))
    net.initialize(mx.init.Normal(1.0))
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():        # non-trivial statistics too
        p.set_data(nd.array(rng.normal(1, 1, p.shape)))
    return net


def values(net):
    return {n: p.data().asnumpy().astype(np.float64)
            for n, p in net._collect_params_with_prefix().items()}


def test_weighted_average_numpy():
    rng = np.random.default_rng(0)
    A = [rng.normal(size=(2, 3)) for _ in range(3)]
    w = [10, 30, 60]
    np.testing.assert_allclose(weighted_average(A, w),
                               0.1 * A[0] + 0.3 * A[1] + 0.6 * A[2], rtol=1e-12)


@pytest.mark.parametrize("keep_local", [False, True])
def test_aggregate_fedavg_and_fedbn(keep_local):
    nets = [client(s) for s in range(3)]
    w = [100, 50, 250]
    before = [values(n) for n in nets]
    averaged = aggregate(nets, w, keep_norm_local=keep_local)
    assert len(averaged) == (4 if keep_local else 8)
    after = [values(n) for n in nets]
    for name in before[0]:
        expected = sum(wk * b[name] for wk, b in zip(w, before)) / sum(w)
        for k in range(3):
            if keep_local and is_norm_param(name):
                np.testing.assert_array_equal(after[k][name], before[k][name])
            else:
                np.testing.assert_allclose(after[k][name], expected, rtol=1e-6, atol=1e-6)
    names = set(before[0])
    assert {"1.gamma", "1.beta", "1.running_mean", "1.running_var"} <= names
    assert is_norm_param("1.running_var") and not is_norm_param("0.weight")


def test_bad_weights_and_clients():
    nets = [client(0), client(1)]
    for bad, msg in (([1, 0], "positive"), ([1, -2], "positive"), ([1, float("nan")], "positive"),
                     ([1], "one number per client"), ([1, "a"], "must be a number")):
        with pytest.raises((ValueError, TypeError), match=msg):
            aggregate(nets, bad)
    other = nn.HybridSequential()
    other.add(nn.Dense(5, in_units=3))
    other.initialize()
    with pytest.raises(ValueError, match="other parameters"):
        aggregate([nets[0], other], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        weighted_average([], [])
