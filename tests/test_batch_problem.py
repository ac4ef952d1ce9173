"""ch11: the study helpers of d2lbn.batch_problem: batches, nets, weight swap, padded sequences,
statistics gap and axis timing, each checked against NumPy or MXNet directly."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

from d2lbn import alt_norm as A
from d2lbn import batch_problem as B
from d2lbn.norm import BatchNorm
from d2lbn.repro import set_seed


def labels(n_per_class=12, classes=10):
    return nd.array(np.repeat(np.arange(classes), n_per_class).astype(np.float32))


@pytest.mark.parametrize("cpb", [1, 2, 4])
def test_class_sorted_batches(cpb):
    set_seed(0)
    y = labels()
    X = nd.arange(y.shape[0]).reshape((-1, 1))
    seen = []
    for Xb, yb in B.class_sorted_batches(X, y, 8, cpb):
        classes, counts = np.unique(yb.asnumpy(), return_counts=True)
        assert len(classes) == cpb and (counts == 8 // cpb).all()
        np.testing.assert_array_equal(y.asnumpy()[Xb.asnumpy()[:, 0].astype(int)], yb.asnumpy())
        seen.extend(Xb.asnumpy()[:, 0].astype(int))
    assert len(seen) == len(set(seen)) and len(seen) >= 80
    with pytest.raises(ValueError, match="must divide"):
        list(B.class_sorted_batches(X, y, 8, 3))


def test_shuffled_batches_cover_each_example_once():
    set_seed(1)
    X, y = nd.arange(10).reshape((-1, 1)), nd.arange(10)
    got = np.concatenate([xb.asnumpy()[:, 0] for xb, _ in B.shuffled_batches(X, y, 3)])
    assert len(got) == 9 and len(set(got)) == 9


@pytest.mark.parametrize("kind,conv,dense", [
    ("batch", BatchNorm, BatchNorm), ("renorm", A.BatchRenorm, A.BatchRenorm),
    ("ghost", A.GhostBatchNorm, A.GhostBatchNorm), ("group", A.GroupNorm, A.GroupNorm),
    ("layer", A.GroupNorm, A.GroupNorm), ("instance", A.GroupNorm, A.GroupNorm)])
def test_norm_lenet_layers(kind, conv, dense):
    net = B.norm_lenet(kind, total_steps=100)
    layers = [c for c in net._children.values() if isinstance(c, (conv, dense))]
    assert len(layers) == 4
    if kind in ("group", "layer", "instance"):
        expect = {"group": [2, 2], "layer": [1, 1], "instance": [6, 16]}[kind] + [1, 1]
        assert [l.num_groups for l in layers] == expect
    net.initialize()
    with autograd.train_mode():
        assert net(nd.random.uniform(shape=(4, 1, 28, 28))).shape == (4, 10)
    with pytest.raises(ValueError, match="kind must be one of"):
        B.norm_lenet("batchnorm")


def test_renorm_schedule_scales_ioffe():
    s = B.renorm_schedule(1000)
    assert s == {"hold": 50, "r_steps": 350, "d_steps": 200}
    assert A.renorm_limits(50 + 350, **s) == (3.0, 5.0)


def test_swap_norm_keeps_weights_and_drops_statistics():
    set_seed(0)
    net = B.norm_lenet("batch")
    net.initialize(mx.init.Xavier())
    with autograd.record():
        net(nd.random.uniform(shape=(4, 1, 28, 28)))
    new = B.swap_norm(net, "group")
    old = {k: v for k, v in net._collect_params_with_prefix().items()}
    mine = {k: v for k, v in new._collect_params_with_prefix().items()}
    assert not any("moving" in k for k in mine)
    for k, p in mine.items():
        np.testing.assert_array_equal(p.data().asnumpy(), old[k].data().asnumpy())
    assert len(mine) == len([k for k in old if "moving" not in k])


def test_row_sequences_and_mask():
    set_seed(0)
    X = nd.random.uniform(0.1, 1, shape=(5, 1, 28, 28))
    S, mask = B.row_sequences(X, 4, 20)
    lengths = mask.asnumpy().sum(axis=1).astype(int)
    assert ((4 <= lengths) & (lengths <= 20)).all()
    x, s = X.asnumpy()[:, 0], S.asnumpy()
    for i, L in enumerate(lengths):
        np.testing.assert_array_equal(s[i][:, :L], x[i][:L].T)    # channel = column
        assert (s[i][:, L:] == 0).all()
    with pytest.raises(ValueError, match="min_length"):
        B.row_sequences(X, 30)


def test_sequence_batches_extra_padding():
    set_seed(0)
    S, mask, y = nd.ones((6, 2, 5)), nd.ones((6, 5)), nd.arange(6)
    shapes = {Sb.shape[2] for Sb, Mb, yb in B.sequence_batches(S, mask, y, 2,
                                                               extra_padding=(0, 3))}
    assert shapes <= {5, 8}
    for Sb, Mb, _ in B.sequence_batches(S, mask, y, 2, extra_padding=(3,)):
        assert Sb.shape == (2, 2, 8) and Mb.asnumpy()[:, 5:].sum() == 0


@pytest.mark.parametrize("kind", B.SEQ_KINDS)
def test_seqnet_extra_padding(kind):
    """Masked statistics and per-position layer norm ignore added padding; statistics over every
    position do not."""
    set_seed(0)
    net = B.SeqNet(kind, channels=8)
    net.initialize(mx.init.Xavier())
    S, mask = B.row_sequences(nd.random.uniform(shape=(6, 1, 28, 28)), 5)
    S2 = nd.concat(S, nd.zeros((6, 28, 10)), dim=2)
    M2 = nd.concat(mask, nd.zeros((6, 10)), dim=1)
    with autograd.train_mode():
        a, b = net(S, mask).asnumpy(), net(S2, M2).asnumpy()
    if kind == "padded":
        assert np.abs(a - b).max() > 1e-3
    else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padding_statistics_gap_against_numpy():
    set_seed(0)
    net = B.SeqNet("masked", channels=4)
    net.initialize(mx.init.Xavier())
    S, _ = B.row_sequences(nd.random.uniform(shape=(8, 1, 28, 28)), 28)
    net(S, nd.ones((8, 28)))
    gap = B.padding_statistics_gap(net, S, [28, 10])
    assert gap[28] == (0.0, 1.0)
    w = net.convs[0].weight.data().asnumpy().astype(np.float64)
    bias = net.convs[0].bias.data().asnumpy().astype(np.float64)
    s = S.asnumpy().astype(np.float64)
    s[:, :, 10:] = 0
    padded = np.pad(s, ((0, 0), (0, 0), (1, 1)))
    H = np.stack([np.einsum("ncl,oc->nol", padded[:, :, k:k + 28], w[:, :, k]) for k in range(3)]
                 ).sum(axis=0) + bias[None, :, None]
    v_all, v_val = H.var(axis=(0, 2)), H[:, :, :10].var(axis=(0, 2))
    m_all, m_val = H.mean(axis=(0, 2)), H[:, :, :10].mean(axis=(0, 2))
    assert gap[10][0] == pytest.approx(np.mean(np.abs(m_all - m_val) / np.sqrt(v_val)), rel=1e-4)
    assert gap[10][1] == pytest.approx(np.mean(v_all / v_val), rel=1e-4)


def test_fit_batches_trains_and_clips():
    set_seed(0)
    X = nd.random.uniform(shape=(64, 1, 28, 28))
    y = nd.array(np.arange(64) % 2)
    X[y == 1] += 0.5                                         # separable
    net = B.norm_lenet("group")
    res = B.fit_batches(net, lambda: B.shuffled_batches(X, y, 16), 3, 0.05,
                        lambda: [(X, y)], seed=0, agc=0.1)
    assert res.clipped > 0 and len(res.test_acc) == 3
    assert res.loss[-1] < res.loss[0]
    with pytest.raises(FloatingPointError):
        B.fit_batches(B.norm_lenet("none"), lambda: B.shuffled_batches(X * 1e30, y, 16), 1,
                      1e10, lambda: [(X, y)], seed=0)


def test_accuracy_counts():
    class Fixed(mx.gluon.Block):
        def forward(self, X):
            return X
    scores = nd.array([[1, 0], [0, 1], [1, 0]])
    assert B.accuracy(Fixed(), [(scores, nd.array([0, 1, 1]))]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 6, 7)])
def test_axis_timing_same_values(shape):
    times, diff = B.axis_timing(shape, rounds=2, reps=2)
    assert list(times) == list(B.AXIS_WAYS) and all(len(v) == 2 for v in times.values())
    assert all(t > 0 for v in times.values() for t in v)
    assert diff < 1e-4


def test_channel_first_wrapper_against_numpy():
    # transpose, BatchNorm(axis=1), transpose back = float64 NumPy batch norm per channel
    # of channel-last data (N, H, W, C); gamma = 1, beta = 0, eps = 1e-5 (Gluon's default)
    set_seed(0)
    Xl = nd.random.normal(1, 2, shape=(4, 5, 5, 3))
    layer = B._ChannelFirst(mx.gluon.nn.BatchNorm(axis=1), 4)
    layer.initialize()
    with autograd.train_mode():
        Y = layer(Xl).asnumpy()
    x = Xl.asnumpy().astype(np.float64)
    ref = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
    assert Y.shape == x.shape
    np.testing.assert_allclose(Y, ref, atol=1e-4)


def test_axis_timing_bad_shape():
    with pytest.raises(ValueError, match="channels_first"):
        B.axis_timing((4, 3), rounds=1, reps=1)
