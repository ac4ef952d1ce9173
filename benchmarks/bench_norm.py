"""Benchmark: the from-scratch batch norm against MXNet's own (``make bench``).

Prints one table, ``case | ours ms | MXNet ms | ratio``:

* the layer, forward + backward in training mode, ``d2lbn.norm.BatchNorm`` (fast path, and the naive
  one for reference) against ``gluon.nn.BatchNorm`` on the same input: (256, 20, 24, 24) and (256, 128);
* one training epoch of Fashion-MNIST (data loading, forward, backward, SGD step; the optimizer from
  ``d2lbn.training.lenet_settings``, batches of 128 as in the book and of 256): LeNet with the
  from-scratch layer (imperative, as the book trains it) against the *hybridized* Gluon LeNet with
  ``gluon.nn.BatchNorm``;
* the two training paths of the fast layer, each forced, on those inputs and on the four inputs
  LeNet's batch-norm layers see at batch 128: the compiled graph (``d2lbn.graph_norm``, which
  inputs of at most ``GRAPH_MAX_SIZE`` values take) and the closed-form ``Function``
  (``d2lbn.fast_norm``, larger ones);
* the floor of LeNet-BN's epoch (batch 128 and 256): each of its batch-norm layers timed alone,
  wall clock and kernel time (MXNet's profiler), ours and MXNet's; the floor is the hybridized
  Gluon epoch with each of its layers replaced by ours at our kernels' cost, i.e. what would remain
  if launching operators from Python cost nothing;
* the cost of ``d2lbn.training.train``'s guards against non-finite values, per training batch of 128 of
  LeNet-BN: the check of each input batch, the parameter check (``find_non_finite``, run every
  ``check_every`` = 50 batches and at each epoch end) and ``BatchNorm``'s masked moving-statistics
  update, against one training step.

It ends with the speed targets (issue 17) and whether this run met them. Timings are medians of
interleaved repetitions, so a busy machine slows both sides alike; ratios from the same run are what
to compare. About 3 minutes on a 2-core CPU (``--quick``: about one).

Usage: python benchmarks/bench_norm.py [--quick] [--reps N] [--no-lenet] [--no-paths] [--no-floor]
                                      [--lenet-naive]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Tuple

import mxnet as mx
from mxnet import init

from mxnet import autograd, gluon, nd

from d2lbn import graph_norm, models
from d2lbn.timing import (Row, compare_layers, extra_kernel_ms, format_kernel_table, format_table,
                          interleaved_ms, kernel_rows, train_epoch_seconds)
from d2lbn.training import fashion_mnist_iters, find_non_finite, lenet_settings

LAYER_SHAPES = [(256, 20, 24, 24), (256, 128)]
#: what LeNet's four batch-norm layers see at batch 128: after each convolution and dense layer
LENET_SHAPES = [(128, 6, 24, 24), (128, 16, 8, 8), (128, 120), (128, 84)]
#: (what, limit): the from-scratch layer on LAYER_SHAPES, and LeNet-BN's epoch, against MXNet's
TARGETS = {"layer fwd+bwd, conv (256, 20, 24, 24)": 1.5, "layer fwd+bwd, dense (256, 128)": 2.0,
           "LeNet-BN epoch, batch 128": 1.1, "LeNet-BN epoch, batch 256": 1.1}


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


def lenet_floor(batch_size: int, reps: int) -> Tuple[str, float]:
    """What LeNet-BN's from-scratch layers add to a training step at least: the table of
    ``d2lbn.timing.kernel_rows`` on the four inputs its batch-norm layers see at ``batch_size``, and
    ``extra_kernel_ms`` of it (ms per step)."""
    rows = kernel_rows([(batch_size,) + s[1:] for s in LENET_SHAPES], reps=reps)
    extra = extra_kernel_ms(rows)
    return (f"LeNet-BN's layers, batch {batch_size}: wall-clock ms (medians) and kernel ms (profiler)\n"
            f"{format_kernel_table(rows)}\nour layers' extra kernel time: {extra:.2f} ms per training "
            f"step"), extra


def nonfinite_check_costs(reps: int, batch_size: int = 128, check_every: int = 50) -> str:
    """Milliseconds of each guard of ``train`` against one LeNet-BN training step (medians of
    interleaved runs), and their share of the step, amortized per batch."""
    mx.random.seed(0)
    net = models.lenet_bn(impl="fast")
    net.initialize(init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    X = nd.random.uniform(shape=(batch_size, 1, 28, 28))
    y = nd.array([i % 10 for i in range(batch_size)])
    ctx = mx.cpu()
    vectors = [(nd.zeros(c), nd.ones(c), nd.ones(c), nd.ones(c)) for c in (6, 16, 120, 84)]

    def step():
        with autograd.record():
            l = loss_fn(net(X), y)
        l.backward()
        trainer.step(batch_size)
        return float(l.sum().asscalar())

    def input_check():
        return float(X.sum().asscalar())

    def mask():          # the guard of BatchNorm.forward (naive layer, Function path) per layer
        for new_mean, new_var, moving_mean, moving_var in vectors:
            finite = nd.contrib.isfinite(new_mean + new_var)
            nd.where(finite, new_mean, moving_mean, out=moving_mean)
            nd.where(finite, new_var, moving_var, out=moving_var)

    times = interleaved_ms({"step": step, "input": input_check, "params": lambda: find_non_finite(net, ctx),
                            "mask": mask}, reps=reps)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    per_batch = {"input X, every batch": med["input"],
                 f"parameters, every {check_every} batches": med["params"] / check_every,
                 "stats mask x4 (not in the graph path)": med["mask"]}
    lines = [f"guards against NaN/inf, LeNet-BN, batch {batch_size}: one training step "
             f"{med['step']:.2f} ms; parameter check {med['params']:.3f} ms per call",
             f"{'guard (per batch)':<40}{'ms':>9}{'share':>9}", "-" * 58]
    for name, ms in per_batch.items():
        lines.append(f"{name:<40}{ms:>9.3f}{100 * ms / med['step']:>8.2f}%")
    total = sum(per_batch.values())
    lines.append(f"{'total':<40}{total:>9.3f}{100 * total / med['step']:>8.2f}%")
    return "\n".join(lines)


def copy_bandwidth_gbs(megabytes: int = 64, reps: int = 9) -> float:
    """GB/s of copying a float32 array of ``megabytes`` MB into another (median; read + write
    counted). Our layers pass over memory more often than MXNet's fused kernel, so their ratio
    grows when other work on the host takes memory bandwidth; this line says how much this run
    had."""
    n = megabytes * 2 ** 20 // 4
    src, dst = nd.ones((n,)), nd.zeros((n,))
    ms = sorted(interleaved_ms({"copy": lambda: src.copyto(dst)}, reps=reps)["copy"])[reps // 2]
    return 2 * n * 4 / (ms / 1e3) / 1e9


def _off(ratio: float) -> str:
    """'6% above it' or '5% below it' for our time / the floor."""
    return f"{abs(100 * (ratio - 1)):.0f}% {'above' if ratio >= 1 else 'below'} it"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and 60 LeNet batches")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per layer timing")
    parser.add_argument("--no-lenet", action="store_true", help="skip the LeNet epochs")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the kernel-time floor of LeNet-BN's training step")
    parser.add_argument("--no-paths", action="store_true",
                        help="skip the table of the fast layer's two training paths")
    parser.add_argument("--lenet-naive", action="store_true",
                        help="also time the naive layer's LeNet epoch (about 3 minutes more)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("D2LBN_QUICK", "") not in ("", "0")
    reps = args.reps or (5 if quick else 15)
    start = time.perf_counter()
    print(f"MXNet {mx.__version__}, {os.cpu_count()} CPU cores; medians of {reps} interleaved runs; "
          f"memory copy {copy_bandwidth_gbs():.1f} GB/s", flush=True)
    rows = compare_layers(LAYER_SHAPES, impls=("fast", "naive"), reps=reps)
    print(format_table(rows), flush=True)
    results = {}
    for shape, what in zip(LAYER_SHAPES, ("conv", "dense")):
        results[f"layer fwd+bwd, {what} {shape}"] = next(
            r.ratio for r in rows if r.case == f"fast layer fwd+bwd {shape}")
    if not args.no_paths:
        print(f"\nthe fast layer's two training paths, forced (by default inputs of at most "
              f"{graph_norm.GRAPH_MAX_SIZE:,} values take the graph):")
        paths = compare_layers(LAYER_SHAPES + LENET_SHAPES, impls=("fast:graph", "fast:function"),
                               reps=reps)
        print(format_table(paths), flush=True)
    print()
    print(nonfinite_check_costs(reps), flush=True)
    floors = {}
    if not args.no_lenet:
        lenet = []
        max_batches = 60 if quick else None
        for batch_size in (lenet_settings(quick=False).batch_size, 256):     # the book's, and 256
            lenet += lenet_rows(max_batches, args.lenet_naive, repeats=1 if quick else 2,
                                batch_size=batch_size)
            row = lenet[-1 - args.lenet_naive]
            results[f"LeNet-BN epoch, batch {batch_size}"] = row.ratio
            if not args.no_floor:
                table, extra_ms = lenet_floor(batch_size, reps)
                print()
                print(table, flush=True)
                batches = max_batches or -(-60000 // batch_size)
                floor_s = row.mxnet_ms + extra_ms * batches / 1000      # (this table's unit is s)
                floors[batch_size] = (floor_s / row.mxnet_ms, row.ours_ms / floor_s)
        print()
        print(format_table(lenet, unit="s"))
        for batch_size, (floor, above) in floors.items():
            print(f"floor of the batch-{batch_size} epoch (our layers at their kernels' cost): "
                  f"{floor:.2f}x; ours is {_off(above)}")
    print("\ntargets (from-scratch time / MXNet's, this run):")
    for what, limit in TARGETS.items():
        if what in results:
            verdict = "met" if results[what] <= limit else "missed"
            print(f"  {what:<40} {results[what]:5.2f}x  (target <= {limit}x)  {verdict}")
            batch = what.rsplit(" ", 1)[-1]
            if verdict == "missed" and batch.isdigit() and int(batch) in floors:
                floor, above = floors[int(batch)]
                print(f"  {'':<40} floor {floor:.2f}x, ours {_off(above)}"
                      f" ({'within' if above <= 1.1 else 'not within'} 10%)")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
