"""Tests of d2lbn.setups (ch13's studies): the estimators against NumPy, the episode sampler's
composition, and bad arguments."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import nd

from d2lbn import setups as U


def test_intensity_from_first_bn_inverts_a_known_channel_mean():
    """Build the upload from a known t: m_c = s_c t + b_c exactly; the estimate returns t."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 1, 3, 3))
    b = rng.normal(0, 1, 16)
    t = 0.37
    m = w.reshape(16, -1).sum(1) * t + b
    up = {"0.weight": w, "0.bias": b, "1.running_mean": m}
    assert U.intensity_from_first_bn(up) == pytest.approx(t, rel=1e-12)


def test_intensity_from_a_real_first_layer():
    """The first conv of convnet on constant images of intensity t: the batch mean of its
    output is exactly s_c t + b_c, so the estimate from the measured mean recovers t."""
    net = U.convnet()
    net.initialize(mx.init.Xavier())
    X = nd.full((4, 1, 28, 28), 0.6)
    out = net[0](X).asnumpy().astype(np.float64)
    up = {"0.weight": net[0].weight.data().asnumpy(), "0.bias": net[0].bias.data().asnumpy(),
          "1.running_mean": out.mean(axis=(0, 2, 3))}
    assert U.intensity_from_first_bn(up) == pytest.approx(0.6, rel=1e-5)


def test_nearest_centroid_balanced_accuracy_matches_numpy():
    rng = np.random.default_rng(1)
    S = rng.normal(0, 1, (6, 4))
    s_lab = np.array([0, 0, 1, 1, 2, 2])
    Q = rng.normal(0, 1, (9, 4))
    q_lab = np.array([0, 0, 0, 0, 0, 0, 1, 2, 2])
    c = np.stack([S[s_lab == k].mean(0) for k in range(3)])
    pred = np.array([np.argmin([np.sum((q - ck) ** 2) for ck in c]) for q in Q])
    expected = np.mean([(pred[q_lab == k] == k).mean() for k in range(3)])
    got = U.nearest_centroid_accuracy(nd.array(S), s_lab, nd.array(Q), q_lab)
    assert got == pytest.approx(expected, abs=1e-12)


def test_episode_composition_and_errors():
    y = nd.array(np.repeat(np.arange(4), 10))
    X = nd.array(np.arange(40).reshape(40, 1)).reshape((40, 1))
    sX, sl, qX, ql = U.episode(X, y, [1, 3], 2, [5, 1], np.random.default_rng(0))
    assert list(sl) == [0, 0, 1, 1] and list(ql) == [0] * 5 + [1]
    ids = np.concatenate([sX.asnumpy().ravel(), qX.asnumpy().ravel()]).astype(int)
    assert len(set(ids)) == len(ids)                      # support and query disjoint
    assert set(ids[:2]) | set(ids[4:9]) <= set(range(10, 20))
    with pytest.raises(ValueError, match="fewer than"):
        U.episode(X, y, [1], 5, [6], np.random.default_rng(0))
    with pytest.raises(ValueError, match="one count per class"):
        U.episode(X, y, [1, 2], 1, [1], np.random.default_rng(0))


def test_majority_share_and_class_sorted():
    scores = nd.array(np.eye(3)[[0, 0, 0, 1]])
    assert U.majority_share(scores) == 0.75
    X = nd.arange(6).reshape((6, 1))
    y = nd.array([2, 0, 1, 0, 2, 1])
    Xs, ys = U.class_sorted(X, y)
    assert list(ys.asnumpy()) == [0, 0, 1, 1, 2, 2]
    assert list(Xs.asnumpy().ravel()) == [1, 3, 2, 5, 0, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        U.convnet("layer")
    with pytest.raises(ValueError, match="norm"):
        U.mlp("group")
    net = U.convnet()
    net.initialize()
    X = nd.zeros((10, 1, 28, 28))
    with pytest.raises(ValueError, match="batch_size"):
        U.batch_stats_scores(net, X, 1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        U.batch_stats_scores(net, X, 16)
    with pytest.raises(ValueError, match="mode"):
        U.sample(U.Generator(), nd.zeros(2), "train", 0)
    with pytest.raises(ValueError, match="sigma"):
        U.noisy(X, sigma=0)


def test_ema_teacher_statistics_sources():
    """copied: the student's statistics with the averaged weights; averaged: every value from
    avg; recomputed: the averaged net's statistics over X (NumPy mean of the first layer's
    conv output)."""
    net = U.convnet()
    net.initialize(mx.init.Xavier())
    X = nd.random.uniform(shape=(8, 1, 28, 28))
    net(X)
    params = net._collect_params_with_prefix()
    avg = {k: p.data() + 0.5 for k, p in params.items()}
    copied = U.ema_teacher(net, avg, "copied")._collect_params_with_prefix()
    averaged = U.ema_teacher(net, avg, "averaged")._collect_params_with_prefix()
    for k, p in params.items():
        stat = k.endswith(("running_mean", "running_var"))
        np.testing.assert_array_equal(copied[k].data().asnumpy(),
                                      (p.data() if stat else avg[k]).asnumpy())
        np.testing.assert_array_equal(averaged[k].data().asnumpy(), avg[k].asnumpy())
    teacher = U.ema_teacher(net, avg, "recomputed", X)
    conv = teacher[0](X).asnumpy().astype(np.float64)
    np.testing.assert_allclose(teacher[1].running_mean.data().asnumpy(),
                               conv.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the images"):
        U.ema_teacher(net, avg, "recomputed")
    with pytest.raises(ValueError, match="statistics must be"):
        U.ema_teacher(net, avg, "stale")
    with pytest.raises(ValueError, match="decay"):
        U.train_with_ema((X, nd.zeros(8), X, nd.zeros(8)), 0, 1, decay=1.0)


# ---- contrastive helpers ------------------------------------------------------------

def test_info_nce_against_numpy():
    """Float64 NumPy from the formula: unit rows, logits q k^T / tau, loss
    -log softmax_ii."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    loss, logits = U.info_nce(nd.array(q, dtype="float64"),
                              nd.array(k, dtype="float64"), 0.3)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    L = qn @ kn.T / 0.3
    ref = -(np.diag(L) - np.log(np.exp(L).sum(axis=1)))
    np.testing.assert_allclose(logits.asnumpy(), L, rtol=1e-10)
    np.testing.assert_allclose(loss.asnumpy(), ref, rtol=1e-10)


def test_shuffle_permutation_round_trip():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(12, 3))
    perm, inv = U.shuffle_permutation(12, rng)
    assert sorted(perm.tolist()) == list(range(12))
    assert not (perm == np.arange(12)).all()
    np.testing.assert_array_equal(X[perm][inv], X)


def test_encode_in_groups_uses_sub_batch_statistics():
    """A lone BatchNorm in training mode: each sub-batch of the permuted rows is
    normalised with its own mean and biased variance (float64 NumPy), and the rows come
    back in the input order."""
    from mxnet import autograd, gluon
    rng = np.random.default_rng(2)
    X = rng.normal(2, 3, size=(12, 4))
    bn = gluon.nn.BatchNorm(epsilon=1e-5)
    bn.initialize()
    bn.cast("float64")
    perm, inv = U.shuffle_permutation(12, rng)
    with autograd.train_mode():
        Z = U.encode_in_groups(bn, nd.array(X, dtype="float64"), 3, perm).asnumpy()
    ref = np.empty_like(X)
    for g in range(3):
        rows = perm[4 * g:4 * g + 4]
        S = X[rows]
        ref[rows] = (S - S.mean(0)) / np.sqrt(S.var(0) + 1e-5)
    np.testing.assert_allclose(Z, ref, rtol=1e-10, atol=1e-12)
    with autograd.train_mode():                   # one group = whole-batch statistics
        Z1 = U.encode_in_groups(bn, nd.array(X, dtype="float64"), 1).asnumpy()
    ref1 = (X - X.mean(0)) / np.sqrt(X.var(0) + 1e-5)
    np.testing.assert_allclose(Z1, ref1, rtol=1e-10)


def test_contrastive_helpers_reject_bad_arguments():
    net = U.contrastive_encoder()
    net.initialize()
    X = nd.zeros((10, 784))
    with pytest.raises(ValueError, match="equal sub-batches"):
        U.encode_in_groups(net, X, 3)
    with pytest.raises(ValueError, match="permutation"):
        U.encode_in_groups(net, X, 2, perm=np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="one shape"):
        U.info_nce(nd.zeros((4, 3)), nd.zeros((5, 3)))
    with pytest.raises(ValueError, match="keys must be"):
        U.contrastive_accuracy(net, nd.zeros((4, 1, 28, 28)), 2, "all")
