"""Seed 003 (TensorFlow 1 with NumPy and the d2l-zh prose, shared/seeds/003_*.txt), run in TF1 graph
mode (tf.compat.v1 of TensorFlow 2.15: placeholders, tf.cond on an is_training placeholder, a Session)
on Fashion-MNIST.

The seed's ``batch_norm`` computes the new moving statistics and RETURNS them; ``net()`` rebinds its
Python globals to those tensors, and nothing ever assigns them to the ``tf.Variable``\\ s. So training
never changes the variables: after any number of steps they hold their initial values, which the seed
set to 0 for the mean AND 0 for the variance, and inference (is_training=False) normalises every
conv output h as (h - 0) / sqrt(0 + eps), i.e. multiplies it by 1/sqrt(1e-5) ~ 316. The tests show
that as it runs, then fix it the TF1 way: the updates become tf.compat.v1.assign ops in the UPDATE_OPS
collection, the training op runs after them (control_dependencies), and the moving variance starts
at 1. The fixed seed net is checked against an MXNet twin with d2lbn's layer (same weights, Keras/TF
layouts read by d2lbn.porting): training-mode scores and loss, parameters and moving statistics
after three SGD steps (learning rate 0.1), inference predictions.

Two other departures from the seed, not batch-norm slips: its dense biases b3, b4 were created with
trainable=False (never trained); here they are trained, as the MXNet twin's are. Its flatten
(tf.layers.flatten on NHWC) is written as a reshape, the same order. Its initial values (N(0, 0.01)
for the weights, gamma and beta) are kept. Tolerances: fw_helpers (float32; RTOL = ATOL = 1e-4).
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
import tensorflow as tf

from d2lbn import norm, porting
from .fw_helpers import assert_close, assert_differ, fashion, numpy_batch_stats

tf1 = tf.compat.v1
BATCH, STEPS, LR, EPS = 32, 3, 0.1, 1e-5
C1, C2, O3 = 20, 50, 128


def seed_init(seed=0):
    """The seed's initial values (weights, gamma, beta ~ N(0, 0.01); biases 0), from NumPy."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(0, 0.01, size=shape).astype(np.float32)
    return {"W1": normal(5, 5, 1, C1), "b1": np.zeros(C1, np.float32),
            "gamma1": normal(C1), "beta1": normal(C1),
            "W2": normal(3, 3, C1, C2), "b2": np.zeros(C2, np.float32),
            "gamma2": normal(C2), "beta2": normal(C2),
            "W3": normal(1250, O3), "b3": np.zeros(O3, np.float32),
            "W4": normal(O3, 10), "b4": np.zeros(10, np.float32)}


def seed_batch_norm(X, gamma, beta, is_training, moving_mean, moving_variance, eps=EPS,
                    moving_momentum=0.9):
    """The seed's function (cell 6), keep_dims spelled keepdims."""
    if len(X.shape) == 2:
        mean = tf.reduce_mean(X, axis=0)
        variance = tf.reduce_mean((X - mean) ** 2, axis=0)
    else:
        mean = tf.reduce_mean(X, axis=(0, 1, 2), keepdims=True)
        variance = tf.reduce_mean((X - mean) ** 2, axis=(0, 1, 2), keepdims=True)
        moving_mean = tf.reshape(moving_mean, mean.shape)
        moving_variance = tf.reshape(moving_variance, mean.shape)

    def train_update():
        X_hat = (X - mean) / tf.sqrt(variance + eps)
        moving_mean_new = moving_momentum * moving_mean + (1.0 - moving_momentum) * mean
        moving_variance_new = moving_momentum * moving_variance + (1.0 - moving_momentum) * variance
        return X_hat, moving_mean_new, moving_variance_new

    def test_update():
        X_hat = (X - moving_mean) / tf.sqrt(moving_variance + eps)
        return X_hat, moving_mean, moving_variance

    X_hat, moving_mean, moving_variance = tf.cond(is_training, train_update, test_update)
    return gamma * X_hat + beta, moving_mean, moving_variance


def fixed_batch_norm(X, gamma, beta, is_training, moving_mean, moving_variance, eps=EPS,
                     momentum=0.9):
    """The fix: the same normalisation, and the moving statistics ASSIGNED by ops put in UPDATE_OPS
    (run in training mode only; MXNet's convention, biased variance)."""
    axes = [0] if len(X.shape) == 2 else [0, 1, 2]
    mean, variance = tf.nn.moments(X, axes)                       # (C,), biased
    X_hat = tf.cond(is_training,
                    lambda: (X - mean) / tf.sqrt(variance + eps),
                    lambda: (X - moving_mean) / tf.sqrt(moving_variance + eps))
    new_mean = tf.cond(is_training, lambda: momentum * moving_mean + (1 - momentum) * mean,
                       lambda: tf.identity(moving_mean))
    new_var = tf.cond(is_training, lambda: momentum * moving_variance + (1 - momentum) * variance,
                      lambda: tf.identity(moving_variance))
    for update in (tf1.assign(moving_mean, new_mean), tf1.assign(moving_variance, new_var)):
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
    return gamma * X_hat + beta


def build(fixed: bool, init: dict):
    """The seed's graph (cells 7-9), with its batch norm or the fixed one."""
    graph = tf.Graph()
    with graph.as_default():
        v = {k: tf1.Variable(val, name=k) for k, val in init.items()}
        moving = {}
        for i, c in ((1, C1), (2, C2)):
            moving[f"mean{i}"] = tf1.Variable(np.zeros(c, np.float32), trainable=False,
                                              name=f"moving_mean{i}")
            start = np.ones(c, np.float32) if fixed else np.zeros(c, np.float32)  # seed: 0
            moving[f"var{i}"] = tf1.Variable(start, trainable=False, name=f"moving_variance{i}")
        X = tf1.placeholder(tf.float32, [None, 28, 28, 1])
        labels = tf1.placeholder(tf.float32, [None, 10])
        is_training = tf1.placeholder(tf.bool)
        bn = fixed_batch_norm if fixed else (lambda *a: seed_batch_norm(*a)[0])
        h1_conv = tf.nn.conv2d(X, v["W1"], strides=[1, 1, 1, 1], padding="VALID") + v["b1"]
        h1_bn = bn(h1_conv, v["gamma1"], v["beta1"], is_training, moving["mean1"], moving["var1"])
        h1 = tf.nn.max_pool2d(tf.nn.relu(h1_bn), 2, 2, padding="VALID")
        h2_conv = tf.nn.conv2d(h1, v["W2"], strides=[1, 1, 1, 1], padding="VALID") + v["b2"]
        h2_bn = bn(h2_conv, v["gamma2"], v["beta2"], is_training, moving["mean2"], moving["var2"])
        h2 = tf.reshape(tf.nn.max_pool2d(tf.nn.relu(h2_bn), 2, 2, padding="VALID"), [-1, 1250])
        h3 = tf.nn.relu(tf.matmul(h2, v["W3"]) + v["b3"])
        logits = tf.matmul(h3, v["W4"]) + v["b4"]
        loss = tf1.losses.softmax_cross_entropy(onehot_labels=labels, logits=logits)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        with tf1.control_dependencies(update_ops):
            train_op = tf1.train.GradientDescentOptimizer(LR).minimize(loss)
        init_op = tf1.global_variables_initializer()
    return dict(graph=graph, v=v, moving=moving, X=X, labels=labels, is_training=is_training,
                h1_conv=h1_conv, h1_bn=h1_bn, logits=logits, loss=loss, train_op=train_op,
                init_op=init_op, update_ops=update_ops)


def data():
    X, y = fashion(BATCH * (STEPS + 1))
    X = np.ascontiguousarray(np.moveaxis(X, 1, -1))                 # NHWC
    onehot = np.eye(10, dtype=np.float32)[y]
    return X, y, onehot


def run_training(g):
    """STEPS training steps; returns (session, per-step (logits, loss))."""
    X, _, onehot = data()
    sess = tf1.Session(graph=g["graph"])
    sess.run(g["init_op"])
    seen = []
    for step in range(STEPS):
        feed = {g["X"]: X[step * BATCH:(step + 1) * BATCH],
                g["labels"]: onehot[step * BATCH:(step + 1) * BATCH], g["is_training"]: True}
        logits, loss, _ = sess.run([g["logits"], g["loss"], g["train_op"]], feed)
        seen.append((logits, loss))
    return sess, seen


def test_seed_never_updates_its_moving_statistics():
    g = build(fixed=False, init=seed_init())
    assert g["update_ops"] == [], "the seed creates no update op"
    sess, _ = run_training(g)
    try:
        for name, var in g["moving"].items():
            np.testing.assert_array_equal(sess.run(var), np.zeros(var.shape), err_msg=(
                f"seed: {name} is still its initial 0 after {STEPS} training steps"))
        X, _, _ = data()
        x_test = X[STEPS * BATCH:]
        h, y_inf, gamma, beta = sess.run([g["h1_conv"], g["h1_bn"], g["v"]["gamma1"],
                                          g["v"]["beta1"]], {g["X"]: x_test, g["is_training"]: False})
        assert_close(y_inf, gamma * h / np.sqrt(EPS) + beta,
                     "seed inference: (h - 0) / sqrt(0 + eps), i.e. h times 316", rtol=1e-4)
        y_train = sess.run(g["h1_bn"], {g["X"]: x_test, g["is_training"]: True})
        assert_differ(y_inf, y_train, "seed: inference output is not the trained normalisation")
    finally:
        sess.close()


def mxnet_twin(init: dict):
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Conv2D(C1, 5), norm.BatchNorm(C1, 4), gluon.nn.Activation("relu"),
            gluon.nn.MaxPool2D(2, 2), gluon.nn.Conv2D(C2, 3), norm.BatchNorm(C2, 4),
            gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2, 2),
            gluon.nn.Dense(O3, activation="relu"), gluon.nn.Dense(10))
    net.initialize(ctx=mx.cpu())
    net(nd.zeros((2, 1, 28, 28)))
    values = {0: ("W1", "b1"), 4: ("W2", "b2")}
    for i, (w, b) in values.items():
        net[i].weight.set_data(nd.array(porting.conv_kernel_from_keras(init[w])))
        net[i].bias.set_data(nd.array(init[b]))
    for i, k in ((1, "1"), (5, "2")):
        net[i].gamma.set_data(nd.array(init["gamma" + k]))
        net[i].beta.set_data(nd.array(init["beta" + k]))
    net[8].weight.set_data(nd.array(porting.dense_kernel_from_keras(init["W3"], (5, 5, C2))))
    net[8].bias.set_data(nd.array(init["b3"]))
    net[9].weight.set_data(nd.array(porting.dense_kernel_from_keras(init["W4"])))
    net[9].bias.set_data(nd.array(init["b4"]))
    return net


def test_fixed_seed_updates_through_update_ops_and_matches_d2lbn():
    init = seed_init()
    g = build(fixed=True, init=init)
    assert len(g["update_ops"]) == 4, "two statistics in each of two layers"
    sess, seen = run_training(g)
    net = mxnet_twin(init)
    X, y, _ = data()
    Xc = np.ascontiguousarray(np.moveaxis(X, -1, 1))                # NCHW for MXNet
    try:
        for step in range(STEPS):
            xb, yb = Xc[step * BATCH:(step + 1) * BATCH], y[step * BATCH:(step + 1) * BATCH]
            with autograd.record():
                scores = net(nd.array(xb))
                loss = gluon.loss.SoftmaxCrossEntropyLoss()(scores, nd.array(yb)).mean()
            loss.backward()
            for p in net.collect_params().values():
                if p.grad_req != "null":
                    p.set_data(p.data() - LR * p.grad())
            assert_close(scores, seen[step][0], f"step {step}: training-mode scores")
            assert_close(loss.asscalar(), seen[step][1], f"step {step}: loss")
        for i, k in ((1, "1"), (5, "2")):
            mean, var = sess.run([g["moving"]["mean" + k], g["moving"]["var" + k]])
            assert_close(net[i].moving_mean.data(), mean, f"layer {k}: moving mean")
            assert_close(net[i].moving_var.data(), var, f"layer {k}: moving variance (biased)")
            assert_close(net[i].gamma.data(), sess.run(g["v"]["gamma" + k]), f"layer {k}: gamma")
            assert_differ(mean, np.zeros_like(mean), f"layer {k}: the fix does update it")
        x_test = X[STEPS * BATCH:]
        tf_pred = sess.run(g["logits"], {g["X"]: x_test, g["is_training"]: False})
        assert_close(net(nd.array(Xc[STEPS * BATCH:])), tf_pred, "inference predictions")
    finally:
        sess.close()


def test_fixed_seed_without_update_ops_keeps_the_initial_values():
    """The fix depends on running UPDATE_OPS: a train op built without the control dependency leaves
    the moving statistics at 0 and 1, like the official TF1 layer (test_fw_conventions)."""
    init = seed_init()
    graph = tf.Graph()
    with graph.as_default():
        mean = tf1.Variable(np.zeros(C1, np.float32), trainable=False)
        var = tf1.Variable(np.ones(C1, np.float32), trainable=False)
        W1 = tf1.Variable(init["W1"])
        gamma, beta = tf1.Variable(init["gamma1"]), tf1.Variable(init["beta1"])
        X = tf1.placeholder(tf.float32, [None, 28, 28, 1])
        h = tf.nn.conv2d(X, W1, strides=[1, 1, 1, 1], padding="VALID")
        y = fixed_batch_norm(h, gamma, beta, tf.constant(True), mean, var)
        train_op = tf1.train.GradientDescentOptimizer(LR).minimize(tf.reduce_sum(y ** 3))
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            Xn, _, _ = data()
            for step in range(STEPS):
                sess.run(train_op, {X: Xn[step * BATCH:(step + 1) * BATCH]})
            np.testing.assert_array_equal(sess.run(mean), np.zeros(C1))
            np.testing.assert_array_equal(sess.run(var), np.ones(C1))
            sess.run(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS), {X: Xn[:BATCH]})
            expected = 0.1 * numpy_batch_stats(
                np.moveaxis(sess.run(h, {X: Xn[:BATCH]}), -1, 1))[0]
            assert_close(sess.run(mean), expected, "running UPDATE_OPS once: one update")
