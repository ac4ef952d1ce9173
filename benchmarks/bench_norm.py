"""Benchmark: the from-scratch batch norm against MXNet's own (``make bench``).

Prints one table, ``case | ours ms | MXNet ms | ratio``:

* the layer, forward + backward in training mode, ``d2lbn.norm.BatchNorm`` (fast path, and the naive
  one for reference) against ``gluon.nn.BatchNorm`` on the same input: (256, 20, 24, 24) and (256, 128);
* one training epoch of Fashion-MNIST (data loading, forward, backward, SGD step; the optimizer from
  ``d2lbn.train.lenet_settings``, batches of 128 as in the book and of 256): LeNet with the
  from-scratch layer (imperative, as the book trains it) against the *hybridized* Gluon LeNet with
  ``gluon.nn.BatchNorm``.

Timings are medians of interleaved repetitions, so a busy machine slows both sides alike; ratios from
the same run are what to compare. About 2-3 minutes on a 2-core CPU (``--quick``: well under one).

Usage: python benchmarks/bench_norm.py [--quick] [--reps N] [--no-lenet] [--lenet-naive]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import mxnet as mx
from mxnet import init

from d2lbn import models
from d2lbn.timing import Row, compare_layers, format_table, train_epoch_seconds
from d2lbn.train import fashion_mnist_iters, lenet_settings

LAYER_SHAPES = [(256, 20, 24, 24), (256, 128)]


def lenet_rows(max_batches, naive: bool, repeats: int, batch_size: int) -> list:
    """One epoch (or ``max_batches``) of each net, alternating, ``repeats`` times; medians."""
    settings = lenet_settings(quick=False)
    train_iter, _ = fashion_mnist_iters(batch_size)
    nets = {"fast": lambda: models.lenet_bn(impl="fast"),
            "gluon": models.lenet_bn_gluon}
    if naive:
        nets["naive"] = lambda: models.lenet_bn(impl="naive")
    seconds = {name: [] for name in nets}
    for _ in range(repeats):
        for name, make in nets.items():
            mx.random.seed(0)
            net = make()
            net.initialize(init.Xavier())
            if name == "gluon":
                net.hybridize()
            seconds[name].append(train_epoch_seconds(net, train_iter, settings.lr, settings.momentum,
                                                     max_batches=max_batches))
    med = {name: sorted(v)[len(v) // 2] for name, v in seconds.items()}
    what = "epoch" if max_batches is None else f"{max_batches} batches"
    rows = [Row(f"LeNet-BN {what}, batch {batch_size} (s)", med["fast"], med["gluon"])]
    if naive:
        rows.append(Row(f"naive LeNet-BN {what}, batch {batch_size} (s)", med["naive"], med["gluon"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and 60 LeNet batches")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per layer timing")
    parser.add_argument("--no-lenet", action="store_true", help="skip the LeNet epochs")
    parser.add_argument("--lenet-naive", action="store_true",
                        help="also time the naive layer's LeNet epoch (about 3 minutes more)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("D2LBN_QUICK", "") not in ("", "0")
    reps = args.reps or (5 if quick else 15)
    start = time.perf_counter()
    print(f"MXNet {mx.__version__}, {os.cpu_count()} CPU cores; medians of {reps} interleaved runs",
          flush=True)
    rows = compare_layers(LAYER_SHAPES, impls=("fast", "naive"), reps=reps)
    print(format_table(rows), flush=True)
    if not args.no_lenet:
        lenet = []
        for batch_size in (lenet_settings(quick=False).batch_size, 256):     # the book's, and 256
            lenet += lenet_rows(60 if quick else None, args.lenet_naive, repeats=1 if quick else 2,
                                batch_size=batch_size)
        print()
        print(format_table(lenet, unit="s"))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
