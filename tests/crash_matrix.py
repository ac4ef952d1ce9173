"""The dtype matrix of tests/test_reliability.py, run in child processes so that a crash is a failure.

Every public batch-norm / layer-norm function and layer is called with X (and its per-feature
vectors, or the layer's parameters) of each dtype in DTYPES. Each case must either return a result
equal to a float64 NumPy reference (within the dtype's tolerance) or raise a clear error; a case
that kills the process (SIGFPE, SIGSEGV), or whose error only appears in a later call, fails.

``python tests/crash_matrix.py ID ...`` runs the named cases in order, printing ``START id`` before
each and one JSON line ``{"id", "outcome", ...}`` after it (``nd.waitall()`` runs inside the case, so
an asynchronous error is charged to the case that caused it). :func:`run_isolated` runs a list of
cases this way, restarting the child after a crash, and returns one outcome per case.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

DTYPES = ["float16", "float32", "float64", "int32", "uint8", "bool"]
FLOATS = ("float16", "float32", "float64")
#: max |ours - reference| / (1 + |reference|) allowed, per dtype
TOL = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-9}
EPS = 1e-5
FUNCTIONS = ["pure_batch_norm", "batch_norm:naive:train", "batch_norm:naive:infer",
             "batch_norm:fast:train", "batch_norm:fast:infer", "layer_norm", "buggy_batch_norm:infer",
             "sync_batch_norm", "fold_batch_norm", "forward_staged", "BatchNorm:naive", "BatchNorm:fast",
             "LayerNorm", "SyncBatchNorm"]
#: NumPy functions (d2lbn.backward): NumPy promotes integers and bool to float64, so every dtype works
NUMPY_FUNCTIONS = ("forward_staged",)
#: head-gradient (``Y.backward(out_grad=...)``) dtypes against a float32 layer
HEAD_DTYPES = ["float16", "float32", "float64", "int32"]
LAYERS = ["BatchNorm:naive", "BatchNorm:fast", "BatchNorm:fast:autograd.backward"]


def matrix_ids() -> List[str]:
    return [f"{f}|{d}" for f in FUNCTIONS for d in DTYPES]


def head_ids() -> List[str]:
    return [f"head|{layer}|{d}" for layer in LAYERS for d in HEAD_DTYPES]


# ---- references (float64 NumPy) ---------------------------------------------------------------------

def ref_batch_norm(x, gamma, beta, mean=None, var=None):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) \
        + beta.reshape(shape)


def ref_layer_norm(x, gamma, beta):
    axes = tuple(range(1, x.ndim))
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return gamma.reshape(shape) * (x - mean) / np.sqrt(var + EPS) + beta.reshape(shape)


def ref_bn_grad(x, gamma, dy):
    """dL/dX of training-mode batch norm, X: (N, C, H, W), in float64."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + EPS)
    g = gamma.reshape(1, -1, 1, 1)
    return g / np.sqrt(var + EPS) * (dy - dy.sum(axis=(0, 2, 3), keepdims=True) / m
                                     - xhat * (dy * xhat).sum(axis=(0, 2, 3), keepdims=True) / m)


# ---- one case ----------------------------------------------------------------------------------------

def _data(dtype: str):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(6, 3, 2, 2)).astype(np.float64)      # exact in every dtype
    if dtype == "bool":
        x = (x > 1).astype(np.float64)
    x[:, 0] = 1          # a constant channel: variance 0 (integer division by zero ended the process)
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    mm, mv = np.array([1.0, 2.0, 0.0]), np.array([1.0, 2.0, 4.0])
    return x, gamma, beta, mm, mv


def run_case(case: str) -> Dict[str, object]:
    import d2lbn  # noqa: F401  (first: it aliases numpy.bool for mxnet on NumPy 1.24-1.26)
    import mxnet as mx
    from mxnet import autograd, nd
    from d2lbn import norm, parallel
    from d2lbn.classic_bug import buggy_batch_norm
    from d2lbn.fast_norm import fast_batch_norm

    if case.startswith("head|"):
        _, layer_name, head_dtype = case.split("|")
        x, gamma, beta, _, _ = _data("float64")
        impl, *via = layer_name.split(":")[1:]
        layer = norm.BatchNorm(3, 4, impl=impl)
        layer.initialize()
        X = nd.array(x, dtype="float32")
        X.attach_grad()
        with autograd.record():
            Y = layer(X)
        dy = np.arange(Y.size).reshape(Y.shape) % 5
        if via:                                   # autograd.backward: MXNet's path, not Y.backward
            autograd.backward([Y], [nd.array(dy, dtype=head_dtype)])
        else:
            Y.backward(out_grad=nd.array(dy, dtype=head_dtype))
        got = X.grad.asnumpy()
        nd.waitall()
        expected = ref_bn_grad(x, np.ones(3), dy.astype(np.float64))
        return {"result": True, "error_size": float(np.max(np.abs(got - expected) / (1 + np.abs(expected)))),
                "tol": 1e-3}

    function, dtype = case.split("|")
    x, gamma, beta, mm, mv = _data(dtype)
    arr = lambda a, ctx=mx.cpu(): nd.array(a, dtype=dtype, ctx=ctx)   # noqa: E731
    X, G, B, MM, MV = arr(x), arr(gamma), arr(beta), arr(mm), arr(mv)
    kind = function.split(":")
    if kind[0] == "pure_batch_norm":
        Y, expected = norm.pure_batch_norm(X, G, B), ref_batch_norm(x, gamma, beta)
    elif kind[0] == "batch_norm":
        fn = norm.batch_norm if kind[1] == "naive" else fast_batch_norm
        training = kind[2] == "train"
        Y = fn(X, G, B, MM, MV, training=training)[0]
        expected = ref_batch_norm(x, gamma, beta, *(() if training else (mm, mv)))
    elif kind[0] == "buggy_batch_norm":
        Y = buggy_batch_norm(X, G, B, MM, MV, training=False)[0]
        expected = ref_batch_norm(x, gamma, beta, mm, mv)
    elif kind[0] == "fold_batch_norm":
        from d2lbn.fold import fold_batch_norm
        w = x[:3, :, 0, 0].T.copy()                        # (3, 6): C_out = 3
        W, b = fold_batch_norm(arr(w), arr(beta), G, B, MM, MV)
        scale = gamma / np.sqrt(mv + EPS)
        Y = nd.concat(W.reshape((-1,)), b, dim=0)
        expected = np.concatenate([(w * scale[:, None]).ravel(), scale * (beta - mm) + beta])
    elif kind[0] == "forward_staged":
        from d2lbn.backward import forward_staged
        y = forward_staged(x.astype(dtype), gamma, beta, EPS)[0]
        err = float(np.max(np.abs(y - ref_batch_norm(x, gamma, beta)) / (1 + np.abs(ref_batch_norm(x, gamma, beta)))))
        return {"result": True, "error_size": err, "tol": TOL.get(dtype, 1e-9)}
    elif kind[0] == "layer_norm":
        Y, expected = norm.layer_norm(X, G, B), ref_layer_norm(x, gamma, beta)
    elif kind[0] == "sync_batch_norm":
        ctxs = [mx.cpu(0), mx.cpu(1)]
        halves = [arr(x[:3], ctxs[0]), arr(x[3:], ctxs[1])]
        Ys = parallel.sync_batch_norm(halves, [arr(gamma, c) for c in ctxs], [arr(beta, c) for c in ctxs],
                                      [arr(mm, c) for c in ctxs], [arr(mv, c) for c in ctxs], training=True)[0]
        Y, expected = nd.concat(*[y.as_in_context(ctxs[0]) for y in Ys], dim=0), ref_batch_norm(x, gamma, beta)
    else:                                                  # a layer, cast to the dtype, in training mode
        if kind[0] == "BatchNorm":
            layer = norm.BatchNorm(3, 4, impl=kind[1])
        elif kind[0] == "LayerNorm":
            layer = norm.LayerNorm(3, 4)
        else:
            layer = parallel.SyncBatchNorm(3, 4)
        ctxs = [mx.cpu(0), mx.cpu(1)] if kind[0] == "SyncBatchNorm" else [mx.cpu()]
        layer.initialize(ctx=ctxs)
        layer.cast(dtype)
        X.attach_grad()
        with autograd.record():
            if kind[0] == "SyncBatchNorm":
                Ys = layer([arr(x[:3], ctxs[0]), arr(x[3:], ctxs[1])])
                Y = nd.concat(*[y.as_in_context(ctxs[0]) for y in Ys], dim=0)
            else:
                Y = layer(X)
        Y.backward()
        ones = np.ones(3)
        expected = ref_layer_norm(x, ones, 0 * ones) if kind[0] == "LayerNorm" else ref_batch_norm(x, ones, 0 * ones)
    got = Y.asnumpy().astype(np.float64)
    nd.waitall()
    return {"result": True, "error_size": float(np.max(np.abs(got - expected) / (1 + np.abs(expected)))),
            "tol": TOL.get(dtype, 0.0)}


def _worker(ids: List[str]) -> None:
    import d2lbn  # noqa: F401  (first: it aliases numpy.bool for mxnet on NumPy 1.24-1.26)
    from mxnet import nd
    for case in ids:
        print("START " + case, flush=True)
        try:
            outcome = run_case(case)
        except Exception as err:                        # noqa: BLE001 -- the outcome is reported
            try:
                nd.waitall()
            except Exception:                           # noqa: BLE001
                pass
            outcome = {"result": False, "error": type(err).__name__, "message": str(err)[:2000]}
        outcome["id"] = case
        print(json.dumps(outcome), flush=True)


def run_isolated(ids: List[str], timeout: float = 300) -> Dict[str, dict]:
    """Run ``ids`` in child processes; a case during which the child died is ``{"crashed": rc}``."""
    outcomes: Dict[str, dict] = {}
    todo = list(ids)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    while todo:
        proc = subprocess.run([sys.executable, __file__, *todo], capture_output=True, text=True,
                              timeout=timeout, env=env)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("{"):
                outcome = json.loads(line)
                outcomes[outcome["id"]] = outcome
                started = None
        if started is not None:                         # the child died inside this case
            outcomes[started] = {"id": started, "crashed": proc.returncode, "stderr": proc.stderr[-2000:]}
        elif proc.returncode != 0:                      # ... or after its last case, at exit
            outcomes.setdefault("exit", {"id": "exit", "crashed": proc.returncode,
                                         "stderr": proc.stderr[-2000:]})
            if not all(i in outcomes for i in todo):
                raise RuntimeError(f"the worker failed outside any case: {proc.stderr[-2000:]}")
        todo = [i for i in todo if i not in outcomes]
    return outcomes


if __name__ == "__main__":
    _worker(sys.argv[1:])
