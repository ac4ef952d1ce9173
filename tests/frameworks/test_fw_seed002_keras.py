"""Seed 002 (a TensorFlow 2 / Keras batch-norm tutorial, shared/seeds/002_*.txt), run in Keras 2.15
(tf.keras of TensorFlow 2.15) on Fashion-MNIST.

The seed writes a custom Keras ``BatchNormalization`` layer (decay 0.9, epsilon 1e-5, moving variance
started at 1) and puts it in a sigmoid LeNet, then builds the same LeNet with Keras's own layer. Run
as written, the custom layer is correct (the tests below find no slip in it): in ``fit`` it updates its
statistics once per step, ``evaluate``/``predict`` and a call without ``training`` use the moving
statistics and leave them alone. What these tests show instead:

* the custom layer equals d2lbn's layer (momentum 0.9, eps 1e-5) step for step, and Keras's own
  layer only with ``momentum=0.9, epsilon=1e-5`` -- the seed's second LeNet keeps Keras's defaults
  (0.99, 1e-3), so its two nets do not hold the same layer; and on conv (4-D) inputs Keras's own layer
  stores the unbiased variance (the fused kernel), the custom layer the biased one (tf.nn.moments);
* the seed's LeNet ends in ``Dense(10, activation='sigmoid')`` under
  ``sparse_categorical_crossentropy``: its outputs are no probabilities (a row does not sum to 1),
  but that is no slip in its loss with Keras 2.15. Keras's ``sigmoid`` stores its input (the logits
  z) on the output tensor (``_keras_logits``), and the cross-entropy, handed that tensor (as
  ``fit``, ``evaluate`` and a call on the output do), computes the softmax cross-entropy of z; only a
  NumPy copy of the outputs, which carries no logits, gets -log(s_y / sum_k s_k), the renormalised
  sigmoids. So ``fit`` trains the seed's net to the weights of the net ending in ``Dense(10)`` with
  ``from_logits=True`` (bit for bit), and the sigmoid changes only what ``predict`` returns
  (sigmoid(z), the same class). The comparison with d2lbn uses that logits head, whose outputs are
  the scores d2lbn's LeNet returns.

The fixed Keras LeNet (the seed's custom layer, logits out) is checked against
``d2lbn.models.lenet_bn('sigmoid')`` with the same weights (Keras layouts read by d2lbn.porting):
scores and gradients, parameters and the moving statistics of all four batch-norm layers after three
SGD steps, inference predictions. Tolerances: fw_helpers (float32; RTOL = ATOL = 1e-4).
"""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon, nd
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

from d2lbn import models, norm, porting
from .fw_helpers import (assert_close, assert_differ, bn_inputs, fashion, keras_step, loss_weights,
                        mxnet_moving, mxnet_step, numpy_batch_stats)

BATCH, STEPS, LR = 32, 3, 0.1


class SeedBatchNormalization(layers.Layer):
    """The seed's layer, as written (cell 9)."""

    def __init__(self, decay=0.9, epsilon=1e-5, **kwargs):
        self.decay = decay
        self.epsilon = epsilon
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.gamma = self.add_weight(name='gamma', shape=[input_shape[-1]],
                                     initializer=tf.initializers.ones, trainable=True)
        self.beta = self.add_weight(name='beta', shape=[input_shape[-1]],
                                    initializer=tf.initializers.zeros, trainable=True)
        self.running_mean = self.add_weight(name='running_mean', shape=[input_shape[-1]],
                                            initializer=tf.initializers.zeros, trainable=False)
        self.running_var = self.add_weight(name='running_var', shape=[input_shape[-1]],
                                           initializer=tf.initializers.ones, trainable=False)
        super().build(input_shape)

    def assign_running_mean(self, variable, value):
        delta = variable * self.decay + value * (1 - self.decay)
        return variable.assign(delta)

    @tf.function
    def call(self, inputs, training):
        if not training:
            mean = self.running_mean
            var = self.running_var
        else:
            batch_mean, batch_var = tf.nn.moments(inputs, list(range(len(inputs.shape) - 1)))
            mean_update = self.assign_running_mean(self.running_mean, batch_mean)
            var_udpate = self.assign_running_mean(self.running_var, batch_var)
            self.add_update(mean_update)
            self.add_update(var_udpate)
            mean = batch_mean
            var = batch_var
        return tf.nn.batch_normalization(inputs, mean=mean, variance=var, offset=self.beta,
                                         scale=self.gamma, variance_epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape


def seed_lenet(bn=SeedBatchNormalization, sigmoid_head=True):
    """The seed's LeNet (cell 10 with its layer, cell 13 with keras's); ``sigmoid_head=False`` is
    the fix: logits out."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(6, kernel_size=5), bn(), layers.Activation('sigmoid'),
        layers.MaxPool2D(pool_size=2, strides=2),
        layers.Conv2D(16, kernel_size=5), bn(), layers.Activation('sigmoid'),
        layers.MaxPool2D(pool_size=2, strides=2),
        layers.Flatten(),
        layers.Dense(120), bn(), layers.Activation('sigmoid'),
        layers.Dense(84), bn(), layers.Activation('sigmoid'),
        layers.Dense(10, activation='sigmoid' if sigmoid_head else None),
    ])


def nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


# ---- the custom layer -----------------------------------------------------------------------------

def _running(layer):
    return layer.running_mean.numpy(), layer.running_var.numpy()


@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_seed_layer_equals_d2lbn_and_keras_with_the_mapping(kind):
    batches = bn_inputs(kind)
    C, ndim = batches[0].shape[1], batches[0].ndim
    seed = SeedBatchNormalization()
    builtin = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    defaults = layers.BatchNormalization()                   # the seed's cell 13
    ours = norm.BatchNorm(C, ndim)
    ours.initialize(ctx=mx.cpu())
    for x in batches:
        w = loss_weights(x.shape)
        s = keras_step(seed, x, w, training=True, lr=0.1)
        b = keras_step(builtin, x, w, training=True, lr=0.1)
        d = keras_step(defaults, x, w, training=True, lr=0.1)
        o = mxnet_step(ours, x, w, training=True, lr=0.1)
        for key in ("y", "dx", "dgamma", "dbeta"):
            assert_close(s[key], o[key], f"seed layer vs d2lbn: {key}")
            assert_close(s[key], b[key], f"seed layer vs keras (0.9, 1e-5): {key}")
    mean, var = _running(seed)
    d_mean, d_var = mxnet_moving(ours)
    assert_close(mean, d_mean, "moving mean, seed layer vs d2lbn")
    assert_close(var, d_var, "moving variance: both biased (tf.nn.moments)")
    assert_close(builtin.moving_mean, d_mean, "keras layer, momentum 0.9")
    assert_differ(defaults.moving_mean, d_mean, "keras defaults (momentum 0.99) differ")
    x = batches[0]
    assert_differ(keras_step(defaults, x, loss_weights(x.shape), training=False)["y"],
                  mxnet_step(ours, x, loss_weights(x.shape), training=False)["y"],
                  "inference outputs of keras's defaults")
    if ndim == 4:
        unbiased = np.ones(C)
        for xb in batches:
            unbiased = 0.9 * unbiased + 0.1 * numpy_batch_stats(xb)[2]
        assert_close(builtin.moving_variance, unbiased, "keras's own layer, 4-D: unbiased (fused)")
        assert_differ(builtin.moving_variance, var, "... unlike the seed's layer")
    else:
        assert_close(builtin.moving_variance, var, "keras's own layer, 2-D: biased")


def test_seed_layer_in_fit_evaluate_predict():
    """As written, in model.fit / evaluate / predict: one update per step, none outside training."""
    X, y = fashion(64)
    feats = bn_inputs("2d", batches=4, batch_size=16)
    x = np.concatenate(feats)
    seed = SeedBatchNormalization()
    net = keras.Sequential([keras.Input((x.shape[1],)), seed, layers.Dense(10)])
    net.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                optimizer=keras.optimizers.SGD(LR))
    net.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    mean, var = np.zeros(x.shape[1]), np.ones(x.shape[1])
    for f in feats:
        bm, bv, _ = numpy_batch_stats(f)
        mean, var = 0.9 * mean + 0.1 * bm, 0.9 * var + 0.1 * bv
    assert_close(seed.running_mean, mean, "fit: one update per batch, momentum 0.9")
    assert_close(seed.running_var, var, "fit: biased variance")
    after_fit = seed.running_mean.numpy().copy(), seed.running_var.numpy().copy()
    net.evaluate(x, y, verbose=0)
    net.predict(x, verbose=0)
    net(x)
    for now, then in zip(_running(seed), after_fit):
        np.testing.assert_array_equal(now, then, "evaluate, predict, net(x): no update")


# ---- the seed's LeNet: its head, then the fixed net against d2lbn -------------------------------------

def _softmax_ce(z, y):
    """Float64 oracle: -log softmax(z)_y per example."""
    z = np.asarray(z, np.float64)
    return np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(y)), y]


def _renormalised(s, y):
    """Float64 oracle: -log(s_y / sum_k s_k) per example (the renormalised sigmoids)."""
    s = np.asarray(s, np.float64)
    return -np.log(s[np.arange(len(y)), y] / s.sum(1))


def _compiled(net, loss):
    net.compile(loss=loss, optimizer=keras.optimizers.RMSprop())    # the seed's optimizer
    return net


def test_seed_lenet_loss_is_the_softmax_ce_of_the_stored_logits():
    """The seed's path: compile('sparse_categorical_crossentropy'), evaluate, the loss on the output
    tensor. All three are the softmax CE of the pre-sigmoid logits, NOT the renormalised sigmoids;
    only a NumPy copy of the outputs is renormalised."""
    keras.utils.set_random_seed(0)
    net = _compiled(seed_lenet(sigmoid_head=True), "sparse_categorical_crossentropy")
    X, y = fashion(BATCH)
    x = nhwc(X)
    kernel, bias = net.layers[-1].get_weights()
    features = keras.Model(net.inputs, net.layers[-2].output)(x, training=False).numpy()
    z = features.astype(np.float64) @ kernel + bias                 # the logits, float64
    out = net(x, training=False)
    s = out.numpy()
    assert np.abs(s.sum(axis=1) - 1).max() > 0.5, "sigmoid outputs: rows do not sum to 1"
    assert_close(s, 1 / (1 + np.exp(-z)), "the outputs are sigmoid(z)")
    softmax_ce, renormalised = _softmax_ce(z, y), _renormalised(s, y)
    assert_differ(softmax_ce, renormalised, "the two formulas differ on this batch")
    evaluated = net.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert_close(evaluated, softmax_ce.mean(), "evaluate: softmax CE of the logits")
    assert_differ(evaluated, renormalised.mean(), "evaluate: not the renormalised sigmoids")
    tensor_loss = keras.losses.sparse_categorical_crossentropy(y, out)
    assert_close(tensor_loss, softmax_ce, "loss on the output tensor: softmax CE")
    assert_differ(tensor_loss, renormalised, "loss on the output tensor: not renormalised")
    assert_close(keras.losses.sparse_categorical_crossentropy(y, s), renormalised,
                 "loss on a NumPy copy (no stored logits): renormalised")


def test_seed_lenet_fit_trains_the_softmax_classifier():
    """fit with the seed's head and loss reaches the weights of the logits head with
    from_logits=True (same start, same batches), not those of a net trained on the renormalised
    sigmoids; predict differs only by the sigmoid."""
    keras.utils.set_random_seed(1)
    seed_net = seed_lenet(sigmoid_head=True)
    start = seed_net.get_weights()

    def renormalising(labels, outputs):          # a new tensor: no stored logits
        return keras.losses.sparse_categorical_crossentropy(labels, tf.identity(outputs))

    nets = {"seed": (seed_net, "sparse_categorical_crossentropy"),
            "logits": (seed_lenet(sigmoid_head=False),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
            "renormalised": (seed_lenet(sigmoid_head=True), renormalising)}
    X, y = fashion(BATCH * (STEPS + 1))
    x = nhwc(X)
    for net, loss in nets.values():
        net.set_weights(start)
        _compiled(net, loss).fit(x[:BATCH * STEPS], y[:BATCH * STEPS], batch_size=BATCH,
                                 epochs=1, shuffle=False, verbose=0)
    flat = {k: np.concatenate([w.ravel() for w in net.get_weights()])
            for k, (net, _) in nets.items()}
    assert_differ(flat["seed"], np.concatenate([w.ravel() for w in start]), "fit moved them")
    np.testing.assert_array_equal(flat["seed"], flat["logits"],
                                  "the seed's fit = the softmax classifier's, bit for bit")
    assert_differ(flat["seed"], flat["renormalised"], "... not the renormalised sigmoids'")
    x_test = x[BATCH * STEPS:]
    p_seed = seed_net.predict(x_test, verbose=0)
    p_logits = nets["logits"][0].predict(x_test, verbose=0).astype(np.float64)
    assert_close(p_seed, 1 / (1 + np.exp(-p_logits)), "predict: sigmoid of the logits head")
    np.testing.assert_array_equal(p_seed.argmax(1), p_logits.argmax(1), "the same classes")


def keras_to_mxnet(knet, net):
    """Copy the fixed Keras LeNet into d2lbn's lenet_bn (same layer order)."""
    k_layers = [l for l in knet.layers if l.get_weights()]
    m_layers = porting.mxnet_layers(net)
    assert len(k_layers) == len(m_layers) == 9
    for kl, ml in zip(k_layers, m_layers):
        if isinstance(kl, layers.Conv2D):
            kernel, bias = kl.get_weights()
            ml.weight.set_data(nd.array(porting.conv_kernel_from_keras(kernel)))
            ml.bias.set_data(nd.array(bias))
        elif isinstance(kl, layers.Dense):
            kernel, bias = kl.get_weights()
            after_flatten = (4, 4, 16) if kernel.shape[0] == 256 else None
            ml.weight.set_data(nd.array(porting.dense_kernel_from_keras(kernel, after_flatten)))
            ml.bias.set_data(nd.array(bias))
        else:
            for p, v in zip((ml.gamma, ml.beta, ml.moving_mean, ml.moving_var), kl.get_weights()):
                p.set_data(nd.array(v))


def test_fixed_seed_lenet_matches_d2lbn_over_sgd_steps():
    keras.utils.set_random_seed(1)
    knet = seed_lenet(sigmoid_head=False)
    net = models.lenet_bn(activation="sigmoid")
    net.initialize(ctx=mx.cpu())
    net(nd.zeros((2, 1, 28, 28)))
    keras_to_mxnet(knet, net)
    X, y = fashion(BATCH * (STEPS + 1))
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    k_bns = [l for l in knet.layers if isinstance(l, SeedBatchNormalization)]
    m_bns = models.batch_norm_layers(net)
    for step in range(STEPS):
        xb, yb = X[step * BATCH:(step + 1) * BATCH], y[step * BATCH:(step + 1) * BATCH]
        with tf.GradientTape() as tape:
            k_scores = knet(nhwc(xb), training=True)
            k_loss = ce(yb, k_scores)
        k_grads = tape.gradient(k_loss, knet.trainable_variables)
        for v, g in zip(knet.trainable_variables, k_grads):
            v.assign_sub(LR * g)
        with autograd.record():
            m_scores = net(nd.array(xb))
            m_loss = gluon.loss.SoftmaxCrossEntropyLoss()(m_scores, nd.array(yb)).mean()
        m_loss.backward()
        assert_close(m_scores, k_scores, f"step {step}: training-mode scores")
        assert_close(m_loss.asscalar(), k_loss.numpy(), f"step {step}: loss")
        for p in net.collect_params().values():
            if p.grad_req != "null":
                p.set_data(p.data() - LR * p.grad())
        # one gradient in each kind of layer, in MXNet's layout
        assert_close(net[1].gamma.grad(), k_grads[2], f"step {step}: first BN's gamma gradient")
        assert_close(net[0].weight.grad(), porting.conv_kernel_from_keras(k_grads[0].numpy()),
                     f"step {step}: first conv's kernel gradient")
    for kb, mb in zip(k_bns, m_bns):
        mean, var = _running(kb)
        assert_close(mb.moving_mean.data(), mean, f"{mb.name}: moving mean after {STEPS} steps")
        assert_close(mb.moving_var.data(), var, f"{mb.name}: moving variance (both biased)")
        assert_close(mb.gamma.data(), kb.gamma, f"{mb.name}: gamma after {STEPS} steps")
    x_test = X[STEPS * BATCH:]
    assert_close(net(nd.array(x_test)), knet(nhwc(x_test), training=False),
                 "inference predictions")
