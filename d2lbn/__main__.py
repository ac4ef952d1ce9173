"""Command line: ``python -m d2lbn train|launch|...`` (README, ch07, appendix on the parameter server).

Example: ``python -m d2lbn train --model lenet-bn --epochs 10 --lr 0.05 --batch-size 128``.

Runs the LeNet chapters' experiment outside a notebook: a tqdm bar and one line per epoch while it
trains, then the history as a table (and, with ``--json FILE``, as JSON).

It fails like a command line: every argument is checked before any data loads, and an error is one
line on stderr (``python -m d2lbn train: error: ...``) with exit status 2, no traceback; a
diverged run (a non-finite loss) exits 1, Ctrl-C exits 130 after saving the finished epochs.

Each subcommand is a function in :data:`COMMANDS` that adds its parser and its ``run``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

import mxnet as mx

from .data import DataFileError, DataNotFoundError
from .device import num_gpus, try_gpu
from .launch import OUTPUT_CLOSED, silence_stdout
from .models import ACTIVATIONS, batch_norm_layers, get_model, model_names
from .training import lenet_settings

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


class _Parser(argparse.ArgumentParser):
    """argparse, failing like a command line: one line on stderr, ``PROG: error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(parser: argparse.ArgumentParser, message: str, code: int = 2) -> int:
    """Print ``PROG: error: message`` (one line) on stderr; return ``code`` (the exit status)."""
    print(f"{parser.prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def _number(check):
    """An argparse ``type`` that parses a float and applies ``check`` (a ValueError is the message)."""
    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        message = check(value)
        if message:
            raise argparse.ArgumentTypeError(f"{message}; got {text}")
        return value
    return parse


def _integer(minimum: int, what: str, maximum: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text}")
        return value
    return parse


_positive_int = _integer(1, "a positive integer")
#: NumPy's legacy generator, which ``set_seed`` seeds, takes 0..2**32 - 1.
_seed = _integer(0, "an integer in 0..4294967295 (2**32 - 1)", maximum=2 ** 32 - 1)
#: A last training batch of one example is dropped (``TrainBatchSampler``), so 1 leaves none.
_train_limit = _integer(2, "at least 2 (a last training batch of one example is dropped, so 1 "
                           "leaves no batch)")
_learning_rate = _number(lambda v: None if math.isfinite(v) and v > 0 else "must be a positive finite number")
_momentum = _number(lambda v: None if 0 <= v < 1 else "must be in [0, 1) (0 for none)")


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))


def _json_target(path: str):
    """``(file to write, None)`` for ``--json path``, or ``(None, why not)``.

    The file is replaced atomically (a temporary file renamed onto it), so an existing path must be a
    regular file: a rename onto ``/dev/null``, a FIFO or a socket would replace that node (as root,
    ``/dev/null`` itself). Paths under ``/dev`` and ``/proc`` are refused whatever they are. A
    symbolic link to a regular file is followed: the file it names is written and the link kept."""
    target = Path(path).expanduser()
    real = Path(os.path.realpath(target))
    for where in (Path(os.path.abspath(target)), real):
        if where.parts[1:2] in (("dev",), ("proc",)):
            return None, (f"--json {path} is under /{where.parts[1]} (a device or process file), not "
                          f"a regular file; name a regular file")
    if target.is_dir():
        return None, f"--json {path} is a directory; name a file"
    if os.path.lexists(target):
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return None, f"--json {path} is a link to {real}, which does not exist; name a regular file"
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            return None, (f"--json {path} exists and is {kind}, not a regular file; name a regular "
                          f"file (it is replaced when the run ends)")
    return real, None


def _check_writable(path: str) -> Optional[str]:
    """Why ``path`` cannot be written (a message), or None; checked before any work is done."""
    target, why = _json_target(path)
    if why:
        return why
    folder = target.parent
    if not folder.is_dir():
        return f"--json {path}: folder {folder} does not exist"
    try:
        fd, probe = tempfile.mkstemp(prefix=".d2lbn-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"--json {path}: cannot write in {folder} ({err.strerror or err})"
    if target.exists() and not os.access(target, os.W_OK):
        return f"--json {path} exists and is not writable"
    return None


def _write_json(path: str, args: argparse.Namespace, history, status: str) -> bool:
    """Write the run to ``path`` atomically (a temporary file renamed into place; through a link to a
    regular file, that file). If ``path`` has meanwhile become something a rename would destroy (see
    :func:`_json_target`), write nothing, say so in one line on stderr and return False."""
    target, why = _json_target(path)
    if why:
        print(f"python -m d2lbn train: error: {why}; not written", file=sys.stderr, flush=True)
        return False
    arguments = {k: v for k, v in vars(args).items()
                 if isinstance(v, (str, int, float, bool, type(None)))}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"args": arguments, "status": status, "history": history.as_dict()}, f, indent=1)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _finished_epochs(history):
    """A copy of ``history`` cut to the epochs whose every field was recorded (another thread may be
    in the middle of ``History.append``)."""
    fields = ("loss", "train_acc", "test_acc", "seconds", "examples_per_sec")
    n = min(len(getattr(history, f)) for f in fields)
    return type(history)(device=history.device, **{f: list(getattr(history, f)[:n]) for f in fields})


class _SaveOnSignal:
    """SIGINT, SIGTERM and SIGHUP in a worker of a launched job: ``save(signum)`` from a thread, then
    end the process at once with status 128 + signum.

    A worker spends most of its time inside MXNet's C calls waiting for the other workers (push,
    pull), where Python's own signal handler never runs; and once the launcher stops the job, the
    scheduler and the servers are gone, so that wait never ends. The handlers installed here only
    wake a thread (``signal.set_wakeup_fd``: the interpreter's C-level handler writes the signal's
    number to a pipe whatever the main thread is doing), and that thread saves and exits."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, save):
        self.save, self.lock, self.finished = save, threading.Lock(), False

    def _watch(self, fd: int) -> None:
        data = os.read(fd, 1)
        os.close(fd)
        if not data:                          # the write end was closed: training is over
            return
        signum = data[0]
        with self.lock:
            if not self.finished:
                try:
                    self.save(signum)
                except BaseException:         # noqa: B036 -- exit below whatever happened
                    pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):     # a reader that has gone must not stop the exit
                pass
        os._exit(128 + signum)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in self.SIGNALS}
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()
        try:
            yield self
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(write_fd)


class _CtrlC:
    """Ctrl-C as ``KeyboardInterrupt``, reliably: Python ignores an exception raised inside a
    ``__del__`` (tqdm closes its bars there), so a Ctrl-C that lands in one is remembered and raised
    by :meth:`check` (called after each epoch) instead of being lost."""

    def __init__(self):
        self.pressed = False

    def handler(self, signum, frame):
        self.pressed = True
        while frame is not None:
            if frame.f_code.co_name == "__del__":
                return                     # raising here would be ignored: check() raises it later
            frame = frame.f_back
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


# ---- train ---------------------------------------------------------------------------------------

def add_train_command(commands) -> argparse.ArgumentParser:
    """The ``train`` subcommand: every argument is checked by argparse, before any data loads."""
    t = commands.add_parser("train", help="train a LeNet on Fashion-MNIST and print the history",
                            description="Train a LeNet on Fashion-MNIST and print the history.")
    t.add_argument("--model", default=DEFAULTS["model"], choices=model_names())
    t.add_argument("--activation", default="relu", choices=ACTIVATIONS)
    t.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"])
    t.add_argument("--lr", type=_learning_rate, default=DEFAULTS["lr"],
                   help="(initial) learning rate of SGD, > 0")
    t.add_argument("--momentum", type=_momentum, default=DEFAULTS["momentum"],
                   help="SGD momentum in [0, 1), 0 for none")
    t.add_argument("--lr-schedule", default=DEFAULTS["lr_schedule"], choices=["none", "cosine"])
    t.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"])
    t.add_argument("--seed", type=_seed, default=DEFAULTS["seed"], help="0..2**32 - 1")
    t.add_argument("--device", default="auto", help="auto (GPU if any, else CPU), cpu, cpu:N, gpu:N")
    t.add_argument("--hybridize", action="store_true", help="compile the net (built-in layers only)")
    t.add_argument("--train-limit", type=_train_limit, default=None, metavar="N",
                   help="train on the first N (>= 2) training examples only (quick runs)")
    t.add_argument("--test-limit", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test examples only")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.add_argument("--json", metavar="FILE",
                   help="also write the history as JSON to FILE, a new or regular file (checked first, "
                        "written atomically; after Ctrl-C or divergence it holds the finished epochs)")
    t.add_argument("--kvstore", choices=["dist_sync"], default=None,
                   help="data-parallel training as one worker of a parameter-server job started by "
                        "python -m d2lbn launch (--batch-size is then the global batch)")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --kvstore: batch statistics of all workers' batches together "
                        "(d2lbn.distributed.KVStoreSyncBatchNorm); default: each worker's own")
    t.set_defaults(run=run_train, command_parser=t)
    return t


def _train(T, net, ctx, args: argparse.Namespace, log):
    train_iter, test_iter = T.fashion_mnist_iters(args.batch_size, args.train_limit, args.test_limit)
    log(f"model {args.model} ({args.activation}), batch size {args.batch_size}, "
        f"{len(train_iter._dataset)} training / {len(test_iter._dataset)} test examples")
    return T.train(net, train_iter, test_iter, args.epochs, args.lr, ctx, seed=args.seed,
                   momentum=args.momentum,
                   lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
                   progress=not args.no_progress, plot=False, log=log)


def run_train(args: argparse.Namespace) -> int:
    """Run ``python -m d2lbn train``: 0 when done, 1 when training diverged, 2 for a bad argument,
    130 after Ctrl-C (the finished epochs are printed and saved to ``--json``), 141 without a word
    when stdout's reader has gone (``| head -1``; the finished epochs are saved to ``--json``)."""
    parser = args.command_parser
    if args.kvstore or args.sync_bn:
        return run_train_dist(args)
    from . import training as T
    try:
        ctx = parse_device(args.device)
    except ValueError as err:
        return _fail(parser, err)
    if ctx.device_type == "gpu" and ctx.device_id >= num_gpus():
        return _fail(parser, f"--device {args.device}: MXNet sees {num_gpus()} GPU(s) "
                             f"(a CPU build of MXNet sees none); use --device cpu or auto")
    if args.json and _check_writable(args.json):
        return _fail(parser, _check_writable(args.json))
    net = get_model(args.model, activation=args.activation)
    if args.batch_size < 2 and batch_norm_layers(net):
        return _fail(parser, f"--batch-size {args.batch_size}: {args.model} has batch norm, whose "
                             f"training batches need at least 2 examples (the variance of one is 0); "
                             f"use --batch-size 2 or more, or --model lenet")
    if args.hybridize:
        if not isinstance(net, mx.gluon.HybridBlock):
            return _fail(parser, f"--hybridize needs a model of built-in layers; {args.model} is not one")
        net.hybridize()
    history = T.History(device=str(ctx))
    ctrl_c = _CtrlC()
    output_closed = []

    def log(line: str) -> None:
        try:
            print(line, flush=True)
        except BrokenPipeError:        # stdout's reader is gone (| head -1): stop as if interrupted
            silence_stdout()
            output_closed.append(True)
            raise KeyboardInterrupt from None
        ctrl_c.check()

    try:
        with ctrl_c.installed():
            history = _train(T, net, ctx, args, log)
    except KeyboardInterrupt as err:
        history = getattr(err, "history", history)
        if args.json:
            _write_json(args.json, args, history, "interrupted")
        if output_closed:              # quietly, as a program killed by SIGPIPE
            return OUTPUT_CLOSED
        done = history.epochs
        saved = f"; saved to {args.json}" if args.json else ""
        print(f"\ninterrupted: {done} finished epoch{'s' if done != 1 else ''} kept{saved}",
              file=sys.stderr, flush=True)
        if done:
            print(history.table(), flush=True)
        return 130
    except T.NonFiniteError as err:
        if args.json:
            _write_json(args.json, args, err.history, "diverged")
        return _fail(parser, err, code=1)
    except DataNotFoundError as err:
        return _fail(parser, str(err).splitlines()[0] + " (see the README: 'The data')", code=1)
    except DataFileError as err:
        return _fail(parser, err, code=1)
    if args.json:
        _write_json(args.json, args, history, "finished")
    print(history.table(), flush=True)
    return 0


def run_train_dist(args: argparse.Namespace) -> int:
    """``python -m d2lbn train --kvstore dist_sync [--sync-bn]``, run by each worker of a launched job
    (``d2lbn.distributed.train_dist``): rank 0 prints the progress and the history and writes ``--json``.

    When the job is stopped (Ctrl-C to the launcher, which stops every worker; SIGTERM; SIGHUP), rank 0
    writes the finished epochs to ``--json`` with status ``interrupted`` before it exits
    (:class:`_SaveOnSignal`)."""
    parser = args.command_parser
    from . import distributed as D
    if not args.kvstore:
        return _fail(parser, "--sync-bn synchronises batch statistics across workers: it needs "
                             "--kvstore dist_sync (under python -m d2lbn launch)")
    if args.model != "lenet-bn" or args.hybridize or args.device not in ("auto", "cpu"):
        return _fail(parser, f"--kvstore {args.kvstore} trains the from-scratch lenet-bn on the CPU; "
                             f"drop --model/--hybridize/--device")
    try:
        D.require_launcher(args.kvstore)
    except RuntimeError as err:
        return _fail(parser, err)
    workers = os.environ["DMLC_NUM_WORKER"]
    if not workers.isdigit() or int(workers) < 1:
        return _fail(parser, f"DMLC_NUM_WORKER must be a positive integer (the launcher sets it); "
                             f"got {workers!r}")
    workers = int(workers)
    norm = "kvstore" if args.sync_bn else "local"
    need = D.min_global_batch(workers, norm)
    why = ("each worker normalises its own share with its own batch statistics, which need 2 "
           "examples" if norm == "local" else
           "every worker needs an example and the batch statistics 2")
    if args.batch_size < need:
        return _fail(parser, f"--batch-size {args.batch_size} is the global batch of {workers} "
                             f"worker{'s' if workers != 1 else ''}: {why}, so it must be at least "
                             f"{need}")
    if args.train_limit is not None and args.train_limit < need:
        return _fail(parser, f"--train-limit {args.train_limit} is too few for {workers} "
                             f"worker{'s' if workers != 1 else ''}: {why}, so it must be at least "
                             f"{need}")
    if args.json and _check_writable(args.json):
        return _fail(parser, _check_writable(args.json))
    from .training import History
    kept = History()                    # rank 0 appends each finished epoch here
    rank = []

    def save(signum: int) -> None:      # from _SaveOnSignal's thread, when the job is stopped
        if rank != [0]:
            return
        history = _finished_epochs(kept)
        saved = f"; saved to {args.json}" if args.json else ""
        done = history.epochs
        print(f"interrupted by {signal.Signals(signum).name}: {done} finished "
              f"epoch{'s' if done != 1 else ''} kept{saved}", file=sys.stderr, flush=True)
        if args.json:
            _write_json(args.json, args, history, "interrupted")

    on_signal = _SaveOnSignal(save)
    try:
        rank.append(D.dist_kvstore(args.kvstore).rank)
        with on_signal.installed():
            history = D.train_dist(norm, args.epochs, args.lr,
                                   args.batch_size, momentum=args.momentum,
                                   lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
                                   seed=args.seed, train_limit=args.train_limit,
                                   test_limit=args.test_limit, activation=args.activation,
                                   log=lambda line: print(line, flush=True), kind=args.kvstore,
                                   history=kept)
            with on_signal.lock:
                on_signal.finished = True
                if history is not None:                     # rank 0
                    print(history.table(), flush=True)
                    if args.json:
                        _write_json(args.json, args, history, "finished")
    except (ValueError, D.SchedulerUnreachableError) as err:
        return _fail(parser, err)
    except FloatingPointError as err:
        return _fail(parser, err, code=1)
    except DataNotFoundError as err:
        return _fail(parser, str(err).splitlines()[0] + " (see the README: 'The data')", code=1)
    return 0


# ---- launch --------------------------------------------------------------------------------------

def add_launch_command(commands) -> argparse.ArgumentParser:
    """The ``launch`` subcommand: a parameter-server job on this machine (``d2lbn.launch``)."""
    from . import launch as L
    p = commands.add_parser("launch", help="run a command as the workers of a parameter-server job",
                            description=L.__doc__.splitlines()[0],
                            usage="python -m d2lbn launch -n WORKERS [-s SERVERS] [--hostfile FILE] "
                                  "-- COMMAND ...")
    L.add_arguments(p)
    p.set_defaults(run=lambda args: L.run_args(args), command_parser=p)
    return p


# ---- the program ---------------------------------------------------------------------------------

#: The subcommands, each a function that adds its parser (``commands.add_parser(...)``) and sets
#: ``run`` (the function that runs it, given the parsed arguments) with ``set_defaults``.
COMMANDS = [add_train_command, add_launch_command]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m d2lbn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:            # stdout's reader went away: exit quietly, as with SIGPIPE
        silence_stdout()
        return OUTPUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
