"""Command line: ``python -m d2lbn train --model lenet-bn --epochs 10 --lr 0.05 --batch-size 128``.

Runs the LeNet chapters' experiment outside a notebook: a tqdm bar and one line per epoch while it
trains, then the history as a table (and, with ``--json FILE``, as JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import mxnet as mx

from .device import try_gpu
from .models import ACTIVATIONS, get_model, model_names
from .train import lenet_settings

__all__ = ["main", "parse_device", "build_parser"]

#: The defaults of ``train`` are the settings of the LeNet chapters' full runs (``lenet_settings``).
_FULL = lenet_settings(quick=False)
DEFAULTS = {"model": "lenet-bn", "epochs": _FULL.num_epochs, "lr": _FULL.lr, "momentum": _FULL.momentum,
            "lr_schedule": _FULL.lr_schedule or "none", "batch_size": _FULL.batch_size, "seed": 0}


def parse_device(spec: str) -> mx.Context:
    """``'auto'`` -> the first GPU if there is one, else the CPU (``d2lbn.device.try_gpu``);
    ``'cpu'``, ``'cpu:1'``, ``'gpu'``, ``'gpu:0'`` -> that context."""
    if spec == "auto":
        return try_gpu()
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cpu:N', 'gpu' or 'gpu:N'; got {spec!r}")
    return mx.Context(kind, int(index or 0))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2lbn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a LeNet on Fashion-MNIST and print the history")
    t.add_argument("--model", default=DEFAULTS["model"], choices=model_names())
    t.add_argument("--activation", default="relu", choices=ACTIVATIONS)
    t.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"])
    t.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="(initial) learning rate of SGD")
    t.add_argument("--momentum", type=float, default=DEFAULTS["momentum"], help="SGD momentum, 0 for none")
    t.add_argument("--lr-schedule", default=DEFAULTS["lr_schedule"], choices=["none", "cosine"])
    t.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"])
    t.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    t.add_argument("--device", default="auto", help="auto (GPU if any, else CPU), cpu, cpu:N, gpu:N")
    t.add_argument("--hybridize", action="store_true", help="compile the net (built-in layers only)")
    t.add_argument("--train-limit", type=_positive_int, default=None, metavar="N",
                   help="train on the first N training examples only (quick runs)")
    t.add_argument("--test-limit", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test examples only")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.add_argument("--json", metavar="FILE", help="also write the history as JSON to FILE")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import fashion_mnist_iters, train
    try:
        ctx = parse_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    net = get_model(args.model, activation=args.activation)
    if args.hybridize:
        if not isinstance(net, mx.gluon.HybridBlock):
            print(f"error: --hybridize needs a model of built-in layers; {args.model} is not one",
                  file=sys.stderr)
            return 2
        net.hybridize()
    train_iter, test_iter = fashion_mnist_iters(args.batch_size, args.train_limit, args.test_limit)
    print(f"model {args.model} ({args.activation}), batch size {args.batch_size}, "
          f"{len(train_iter._dataset)} training / {len(test_iter._dataset)} test examples", flush=True)
    history = train(net, train_iter, test_iter, args.epochs, args.lr, ctx, seed=args.seed,
                    momentum=args.momentum,
                    lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
                    progress=not args.no_progress, plot=False,
                    log=lambda line: print(line, flush=True))
    print(history.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "history": history.as_dict()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
