"""d2lbn.set_seed makes a few training steps repeat exactly (initialisation, shuffling, dropout)."""
import random

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd

import d2lbn


def few_steps(seed: int, ctx=mx.cpu()):
    """Initialise a small net, shuffle a small data set, take 6 SGD steps; return the losses."""
    d2lbn.set_seed(seed)
    X = nd.random.normal(shape=(48, 10))
    y = nd.array(np.random.randint(0, 3, size=48))
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), batch_size=8, shuffle=True)
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(16, activation="relu"), gluon.nn.Dropout(0.3), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    losses = []
    for Xb, yb in loader:
        with autograd.record():
            loss = loss_fn(net(Xb.as_in_context(ctx)), yb.as_in_context(ctx))
        loss.backward()
        trainer.step(Xb.shape[0])
        losses.append(loss.mean().asscalar())
    return losses, random.random()


def test_same_seed_same_losses():
    first, py_first = few_steps(7)
    second, py_second = few_steps(7)
    assert first == second            # bit for bit, on the CPU
    assert py_first == py_second      # Python's own generator is seeded too


def test_other_seed_other_losses():
    assert few_steps(7)[0] != few_steps(8)[0]


def test_seed_reaches_other_contexts():
    assert few_steps(3, ctx=mx.cpu(1))[0] == few_steps(3, ctx=mx.cpu(1))[0]
