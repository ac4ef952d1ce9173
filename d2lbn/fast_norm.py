"""A from-scratch batch norm as fast as MXNet's own: derived backward, fast reductions (ch02-ch05, appendix).

``fast_batch_norm`` has the signature and the results of ``d2lbn.norm.batch_norm``; only
the way it computes differs. Three changes make it fast (an appendix measures them):

1. **The closed-form backward.** In training mode the forward pass runs inside an
   ``autograd.Function`` (:class:`BatchNormTrain`), whose ``backward`` evaluates the
   compact formula of ``d2lbn.backward.backward_closed_form``: two per-channel sums and
   a few passes over the data, instead of autograd walking back through a dozen
   broadcasts and reductions.
2. **Per-channel sums as matrix-vector products** (:func:`channel_sum`).
   ``X.sum(axis=(0, 2, 3))`` is a slow strided reduction in MXNet 1.9.1; viewing X:
   (N, C, H, W) as an (N*C, H*W) matrix and multiplying it by a vector of ones uses the
   BLAS/oneDNN kernel.
3. **Few passes, no fresh arrays** (:class:`BatchNormTrain`, :func:`channel_affine`):
   every new full-size array costs an allocation whose first touch is slow, so the
   intermediate arrays are scratch arrays reused from step to step (:class:`_BufferPool`)
   and results go into buffers already owned (``out=``); each per-channel scale and shift
   is a BLAS call on that matrix (a batch of one-by-one products per row, a rank-one
   update), faster than MXNet's broadcasting operators when rows are long.

That is the path for large inputs. On small ones launching operators, and above all the
Python callback of the backward pass, is what costs; inputs of at most
``d2lbn.graph_norm.GRAPH_MAX_SIZE`` values train through one compiled graph instead
(``d2lbn.graph_norm``; :func:`fast_train` chooses). The appendix "Making it fast in
MXNet" times both.

Shapes: X: (N, D) or (N, C, H, W); every per-feature vector is (D,) or (C,). float32 on
any context.
"""
from __future__ import annotations

import atexit
import ctypes
import threading
import traceback
import weakref
from contextlib import contextmanager
from ctypes import CFUNCTYPE, POINTER, c_int, c_void_p, cast
from typing import Dict, Iterator, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.base import (MXCallbackList, NDArrayHandle, _LIB, c_array, c_handle_array,
                        check_call)

from . import graph_norm
from .checks import check_batch_norm_args
from .paths import note_path

__all__ = ["Function", "BatchNormTrain", "channel_sum", "channel_dot", "scale_shift",
           "channel_affine", "function_variant", "moving_average", "fast_batch_norm",
           "fast_train", "fast_layer_train"]

_NULL, _WRITE, _INPLACE, _ADD = 0, 1, 2, 3          # MXNet's OpReqType values


class _CheckedOutput(nd.NDArray):
    """An output of a :class:`Function` or of the compiled graph of
    ``d2lbn.graph_norm``: ``backward(out_grad)`` checks the head gradient before MXNet
    queues the backward pass. MXNet checks neither its shape nor its dtype for a custom
    function, and the function's backward runs later on an engine thread, where an
    error could only surface at a later read of a gradient; here a wrong shape is a
    ``ValueError`` in the ``backward`` call itself, and another dtype is converted.
    (The :class:`Function` callback converts it too, which also serves
    ``autograd.backward``; the graph refuses it there with an ``MXNetError``.)"""
    __slots__ = []

    def backward(self, out_grad=None, retain_graph=False, train_mode=True):
        if out_grad is not None:
            if not isinstance(out_grad, nd.NDArray):
                raise TypeError(f"out_grad must be an mxnet NDArray, "
                                f"got {type(out_grad).__name__}")
            if out_grad.shape != self.shape:
                raise ValueError(f"out_grad has shape {out_grad.shape} but the array "
                                 f"has shape {self.shape}; the head gradient must "
                                 f"match it")
            if out_grad.dtype != self.dtype:
                out_grad = out_grad.astype(self.dtype)
        return super().backward(out_grad, retain_graph, train_mode)


# it prints as any other array: <NDArray 4x3 @cpu(0)>
_CheckedOutput.__name__ = "NDArray"


class Function(autograd.Function):
    """``mx.autograd.Function`` with its gradient write-back fixed (MXNet 1.9.1).

    The stock ``Function.__call__`` copies each gradient returned by ``backward`` into
    the input's gradient buffer, but (1) it *returns* at the first input whose gradient
    is not requested (``req == 'null'``), so when X needs no gradient (a batch norm
    applied directly to data, say) the gradients of gamma and beta are silently never
    written; and (2) it compares the request with the string ``'add'`` while MXNet
    passes the integer 3, so ``grad_req='add'`` never accumulates. This subclass is
    MXNet's ``__call__`` with those two lines corrected. Besides, ``backward`` can call
    ``self.grad_req(i)`` (``'null'``, ``'write'`` or ``'add'`` for input i) to skip work
    nobody asked for, and ``self.grad_buffer(i)`` for the array that receives input i's
    gradient when it is overwritten (None otherwise): computing straight into it
    (``out=``) and returning it saves a copy.

    Use it exactly like ``mx.autograd.Function``: subclass, define ``forward`` and
    ``backward``, and call a *new* instance for every evaluation.
    """

    def __call__(self, *inputs):
        assert not self._used, ("Each Function instance can only be called once; "
                                "create another.")
        self._used = True
        prev_recording = autograd.set_recording(False)
        try:
            outputs = self.forward(*inputs)
        finally:
            autograd.set_recording(prev_recording)
        if not prev_recording:
            return outputs
        ret_outputs = outputs
        if isinstance(outputs, nd.NDArray):
            outputs = (outputs,)
        for output in outputs:
            # exactly NDArray, not a sparse array
            if type(output) is nd.NDArray:      # noqa: E721
                output.__class__ = _CheckedOutput
        key = autograd.Function._registry.inc()
        meta = [(o.shape, o.dtype) for o in outputs]

        def backward_entry(num_ograds, num_igrads, ptrs, reqs, is_train, _):
            try:
                output_grads = [nd.NDArray(ctypes.cast(p, NDArrayHandle),
                                           writable=False)
                                for p in ptrs[:num_ograds]]
                # MXNet checks neither the shape nor the dtype of a head gradient
                # passed to a custom function (Y.backward(out_grad=...)); a float64
                # one written into float32 buffers could corrupt memory. Check the
                # shape, convert the dtype.
                for i, (grad, (shape, dtype)) in enumerate(zip(output_grads, meta)):
                    if grad.shape != shape:
                        raise ValueError(f"the gradient of output {i} has shape "
                                         f"{grad.shape}, but the output has shape "
                                         f"{shape}")
                    if grad.dtype != dtype:
                        output_grads[i] = grad.astype(dtype)
                input_grads = [nd.NDArray(ctypes.cast(p, NDArrayHandle), writable=True)
                               for p in ptrs[num_ograds:num_ograds + num_igrads]]
                req_codes = [reqs[i] for i in range(num_igrads)]
                self._input_grads, self._req_codes = input_grads, req_codes
                try:
                    rets = self.backward(*output_grads)
                finally:
                    self._input_grads = self._req_codes = None
                if isinstance(rets, nd.NDArray) or rets is None:
                    rets = (rets,)
                if len(rets) != len(input_grads):
                    raise ValueError(f"{type(self).__name__}.backward returned "
                                     f"{len(rets)} gradients for {len(input_grads)} "
                                     f"inputs")
                for igrad, ret, req in zip(input_grads, rets, req_codes):
                    if req == _NULL or ret is igrad:
                        continue          # MXNet 1.9.1: `return True` (drops the rest)
                    if not isinstance(ret, nd.NDArray):
                        raise TypeError(f"{type(self).__name__}.backward must return "
                                        f"NDArrays, got {type(ret).__name__}")
                    if req == _ADD:       # MXNet 1.9.1: `req == 'add'` (never true)

                        igrad[:] += ret
                    else:
                        igrad[:] = ret
            except Exception:  # pylint: disable=broad-except
                print("Error in Function.backward: %s" % traceback.format_exc())
                return False
            return True

        def delete_entry(_):
            try:
                del autograd.Function._registry.ref_holder[key]
            except Exception:  # pylint: disable=broad-except
                print("Error in Function delete: %s" % traceback.format_exc())
                return False
            return True

        callbacks = [autograd.Function._bwd_functype(backward_entry),
                     autograd.Function._del_functype(delete_entry)]
        callbacks = [cast(f, CFUNCTYPE(c_int)) for f in callbacks]
        context = MXCallbackList(c_int(len(callbacks)),
                                 cast(c_array(CFUNCTYPE(c_int), callbacks),
                                      POINTER(CFUNCTYPE(c_int))),
                                 cast(c_array(c_void_p, [None] * len(callbacks)),
                                      POINTER(c_void_p)))
        autograd.Function._registry.ref_holder[key] = context
        check_call(_LIB.MXCustomFunctionRecord(c_int(len(inputs)),
                                               c_handle_array(inputs),
                                               c_int(len(outputs)),
                                               c_handle_array(outputs),
                                               ctypes.byref(context)))
        return ret_outputs

    def grad_req(self, i: int) -> str:
        """Inside ``backward``: how input ``i``'s gradient is stored, ``'null'``,
        ``'write'`` or ``'add'``."""
        code = self._req_codes[i]
        return "null" if code == _NULL else "add" if code == _ADD else "write"

    def grad_buffer(self, i: int) -> Optional[nd.NDArray]:
        """Inside ``backward``: the array input ``i``'s gradient is written to, if it is
        overwritten."""
        return (self._input_grads[i] if self._req_codes[i] in (_WRITE, _INPLACE)
                else None)


# A Function's backward runs as a Python callback on one of MXNet's engine threads,
# after `loss.backward()` has returned. If the interpreter exits while such callbacks
# are still queued (the gradients of the last batch are still being computed), MXNet's
# own exit hook, MXNotifyShutdown, puts the engine into its shutdown phase and then
# waits for all pending work, which never finishes: the process hangs at exit (MXNet
# 1.9.1; seen with gdb: engine threads idle, main thread in WaitForAll). Exit hooks run
# last-registered-first, so waiting here first (mxnet was imported above, so its hook is
# older) lets the callbacks finish while the engine still runs them.
atexit.register(nd.waitall)


# Constant vectors, one per (length, value, context, dtype): the right-hand sides
# of the sums.
_CONSTANTS: Dict[Tuple[int, float, mx.Context, str], nd.NDArray] = {}


def _full(n: int, value: float, ctx: mx.Context, dtype) -> nd.NDArray:
    """A cached vector of ``n`` copies of ``value`` (never modified, so safe to share).
    """
    key = (n, float(value), ctx, str(dtype))
    if key not in _CONSTANTS:
        if len(_CONSTANTS) > 512:
            _CONSTANTS.clear()
        _CONSTANTS[key] = nd.full((n,), value, ctx=ctx, dtype=dtype)
    return _CONSTANTS[key]


def channel_sum(X: nd.NDArray, weight: float = 1.0,
                out: Optional[nd.NDArray] = None) -> nd.NDArray:
    """``weight`` times the per-feature (per-channel) sum, as matrix-vector products.

    X: (N, D) -> (D,); X: (N, C, H, W) -> (C,). Same result as
    ``weight * X.sum(axis=0)`` or ``weight * X.sum(axis=(0, 2, 3))``, many times faster:
    view X as an (N*C, H*W) matrix and multiply it by ones(H*W) (one row sum per example
    and channel, over contiguous memory), then sum the (N, C) result over N with a
    second product, (weight, ..., weight) @ (N, C). With ``weight=1/m`` it is the mean,
    with ``-1/m`` minus the mean, at no extra cost. The result is written into ``out``
    if given.
    """
    N, C = X.shape[0], X.shape[1]
    if X.ndim == 4:
        HW = X.shape[2] * X.shape[3]
        ones = _full(HW, 1.0, X.context, X.dtype).reshape((1, HW))
        X = nd.FullyConnected(X.reshape((N * C, HW)), ones, no_bias=True,
                              num_hidden=1).reshape((N, C))
    return nd.dot(_full(N, weight, X.context, X.dtype), X, out=out)


def channel_dot(A: nd.NDArray, B: nd.NDArray, weight: float = 1.0) -> nd.NDArray:
    """``weight`` times the per-channel sum of ``A * B`` without writing the products.

    A, B: (N, C, H, W) -> (C,). Each (example, channel) row of A is multiplied with the same
    row of B as a (1 x HW) @ (HW x 1) product (one ``batch_dot`` over the N*C rows), and the
    (N, C) results are summed over N as in :func:`channel_sum`. One pass over A and B
    where ``channel_sum(A * B)`` makes three (read both, write the products, read them).
    """
    N, C = A.shape[0], A.shape[1]
    R, HW = N * C, A.shape[2] * A.shape[3]
    rows = nd.batch_dot(A.reshape((R, 1, HW)), B.reshape((R, HW, 1)))       # (R, 1, 1)
    return nd.dot(_full(N, weight, A.context, A.dtype), rows.reshape((N, C)))


def _per_row(v: nd.NDArray, X: nd.NDArray) -> nd.NDArray:
    """A per-channel vector v: (C,) laid out to broadcast against ``_rows(X)``."""
    C = X.shape[1]
    if X.ndim == 2:
        return v.reshape((1, C))
    return nd.tile(v, X.shape[0]).reshape((X.shape[0] * C, 1))  # row n*C + c holds v[c]


def _rows(X: nd.NDArray) -> nd.NDArray:
    """X: (N, D) itself; X: (N, C, H, W) viewed as an (N*C, H*W) matrix (no copy)."""
    return X if X.ndim == 2 else X.reshape((X.shape[0] * X.shape[1], -1))


def scale_shift(X: nd.NDArray, scale: Optional[nd.NDArray],
                shift: Optional[nd.NDArray] = None,
                out: Optional[nd.NDArray] = None) -> nd.NDArray:
    """``scale[c] * X[:, c] + shift[c]`` for every feature/channel c.
    X: (N, C) or (N, C, H, W).


    scale, shift: (C,) (scale None means 1, shift None means 0). Returns an array shaped
    like X, written into ``out`` if given (which may be X itself; not while autograd
    records). Differentiable by autograd.

    A broadcast along the rows of a 2-D array: X: (N, C, H, W) is viewed as the
    (N*C, H*W) matrix whose row n*C + c is scaled by scale[c]. MXNet 1.9.1 runs this
    about twice as fast as a broadcast with (1, C, 1, 1) operands. (A depthwise 1x1
    convolution would be faster still, but oneDNN may return it in a blocked memory
    layout, and such arrays produced inside a custom ``autograd.Function`` corrupted
    gradients; the broadcasting operators always return the plain layout.)
    """
    rows = _rows(X)
    dst = None if out is None else _rows(out)
    if scale is None and shift is None:
        Y = rows.copy() if dst is None else rows.copyto(dst)
    elif scale is None:
        Y = nd.broadcast_add(rows, _per_row(shift, X), out=dst)
    else:
        Y = nd.broadcast_mul(rows, _per_row(scale, X), out=dst)
        if shift is not None:   # in place (no second buffer) unless autograd records it
            Y = nd.broadcast_add(Y, _per_row(shift, X),
                                 out=None if autograd.is_recording() else Y)
    return Y.reshape(X.shape) if out is None else out


class _BufferPool:
    """Full-size scratch arrays kept for reuse, per (shape, context, dtype).

    A fresh array as large as X costs an allocation, and its memory may be fresh pages,
    each of which faults on first touch; so :class:`BatchNormTrain` takes its
    intermediate arrays from a pool and gives them back. Giving an array back as soon
    as the last operator that reads it has been *queued* is safe as long as every
    operator on the pool's arrays is queued by the same kind of caller: MXNet's engine
    runs the operators on one array in the order they were queued, so whoever takes it
    next writes only after those reads. Hence two pools. ``backward`` runs later, as a
    callback, after the caller may already have queued the next forward pass, whose
    operators wait for this backward pass (through the updated parameters); had the
    callback taken an array that such a forward pass writes, its operators would wait
    for that forward pass, and the two would wait for each other for ever. (The lock:
    callbacks run on MXNet's worker threads.)
    """

    def __init__(self, per_key: int = 4, keys: int = 8):
        self._free: Dict[Tuple, list] = {}
        self._lock = threading.RLock()     # a finalizer may give during a take
        self._per_key, self._keys = per_key, keys

    def take(self, like: nd.NDArray) -> nd.NDArray:
        """An array of ``like``'s shape, context and dtype, contents undefined."""
        key = (like.shape, like.context, str(like.dtype))
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return nd.empty(like.shape, ctx=like.context, dtype=like.dtype)

    def give(self, array: nd.NDArray) -> None:
        """Return ``array`` for reuse (only after queueing the last operator on it)."""
        key = (array.shape, array.context, str(array.dtype))
        with self._lock:
            if key not in self._free and len(self._free) >= self._keys:
                self._free.pop(next(iter(self._free)))       # the oldest shape goes
            free = self._free.setdefault(key, [])
            if len(free) < self._per_key:
                free.append(array)


#: arrays that forward passes write (x - mean is read again by the backward pass, and
#: given back only once no backward pass can need it)
_POOL = _BufferPool()
#: arrays that only backward passes touch
_BACKWARD_POOL = _BufferPool()

#: the fewest values per (example, channel) row for which :func:`channel_affine` uses
#: BLAS (one small matrix product per row) rather than broadcasting operators
BLAS_MIN_ROW = 64


@contextmanager
def function_variant(reuse_scratch: bool = True,
                     blas_min_row: Optional[int] = None) -> Iterator[None]:
    """Within the block, :class:`BatchNormTrain` allocates a fresh array for every
    intermediate result (``reuse_scratch=False``), and :func:`channel_affine` uses BLAS
    for rows of at least ``blas_min_row`` values (None: ``BLAS_MIN_ROW``; 1: always;
    ``2 ** 62``: never). The appendix "Making it fast in MXNet" times what each choice
    saves. Not thread-safe."""
    global _POOL, _BACKWARD_POOL, BLAS_MIN_ROW
    saved = _POOL, _BACKWARD_POOL, BLAS_MIN_ROW
    if not reuse_scratch:
        _POOL, _BACKWARD_POOL = _BufferPool(per_key=0), _BufferPool(per_key=0)  # keep nothing
    if blas_min_row is not None:
        BLAS_MIN_ROW = blas_min_row
    try:
        yield
    finally:
        _POOL, _BACKWARD_POOL, BLAS_MIN_ROW = saved


def _blas_rows(X: nd.NDArray) -> bool:
    """Whether :func:`channel_affine` runs X through BLAS: 4-D, float32/float64 (MXNet's
    linalg operators have no float16), rows of at least ``BLAS_MIN_ROW`` values."""
    return (X.ndim == 4 and X.dtype in (np.float32, np.float64)
            and X.shape[2] * X.shape[3] >= BLAS_MIN_ROW)


def channel_affine(X: nd.NDArray, scale: Optional[nd.NDArray],
                   shift: Optional[nd.NDArray] = None, add: Optional[nd.NDArray] = None,
                   out: Optional[nd.NDArray] = None,
                   scratch: Optional[nd.NDArray] = None) -> nd.NDArray:
    """``scale[c] * X[:, c] + shift[c] (+ add)`` for every channel c, in as few passes
    over memory as MXNet allows; not differentiable (:class:`BatchNormTrain` runs it
    with autograd paused). X, add, out: (N, C, H, W) or (N, D); scale, shift: (C,)
    (None: 1 and 0). ``out`` may be ``add`` (accumulate) but not X. ``scratch``: an
    array shaped like X that may be overwritten, if a temporary is needed (else one is
    made).

    Same result as ``scale_shift(X, scale, shift) + add``. For 4-D float input with
    rows of at least ``BLAS_MIN_ROW`` values the passes are BLAS calls on the
    (N*C, H*W) view: the scale (plus ``add``) is one batched product, (1 x 1) @
    (1 x HW) per row with ``add`` as the accumulator, and the shift a rank-one update
    of the whole view, shift (NC x 1) @ ones (1 x HW) added to it. Other inputs use
    :func:`scale_shift` (broadcasting operators). The appendix "Making it fast in
    MXNet" times the two.
    """
    if not _blas_rows(X):
        if add is None:
            return scale_shift(X, scale, shift, out=out)
        tmp = scale_shift(X, scale, shift, out=scratch)
        return nd.elemwise_add(add, tmp, out=out)
    R, HW = X.shape[0] * X.shape[1], X.shape[2] * X.shape[3]
    ones = _full(HW, 1.0, X.context, X.dtype).reshape((1, HW))
    Y = out if out is not None else nd.empty(X.shape, ctx=X.context, dtype=X.dtype)
    rows, Y_rows = X.reshape((R, HW)), Y.reshape((R, HW))
    if scale is None:
        base = rows if add is None else nd.elemwise_add(rows, add.reshape((R, HW)),
                                                        out=Y_rows)
    else:
        per_row = _per_row(scale, X).reshape((R, 1, 1))
        if add is None:
            nd.linalg.gemm2(per_row, X.reshape((R, 1, HW)), out=Y.reshape((R, 1, HW)))
        else:
            nd.linalg.gemm(per_row, X.reshape((R, 1, HW)), add.reshape((R, 1, HW)),
                           alpha=1.0, beta=1.0, out=Y.reshape((R, 1, HW)))
        base = Y_rows
    if shift is not None:
        nd.linalg.gemm(_per_row(shift, X), ones, base, alpha=1.0, beta=1.0, out=Y_rows)
    elif base is not Y_rows:
        base.copyto(Y_rows)
    return Y


class BatchNormTrain(Function):
    """Training-mode batch norm with the closed-form backward; inputs
    X, gamma, beta -> Y.

    ``forward`` normalises with the batch mean and biased variance, in two passes (the
    mean, then the centred squares, so no digits are lost to E[x^2] - E[x]^2), and
    leaves them in ``self.mean`` and ``self.var`` for the moving averages. ``backward``
    evaluates, with m values per channel, x_hat = (x - mean) / sqrt(var + eps) and
    k = gamma / sqrt(var + eps),

        dbeta = sum(dy),      dgamma = sum(dy * x_hat),
        dX    = k * (dy - dbeta / m - x_hat * dgamma / m)
              = k * dy  +  (-k * mean(dy))
                +  (x - mean) * (-k / (var + eps) * mean(dy * (x - mean))).

    The only full-size arrays it allocates are its output Y (and dX when MXNet has no
    buffer to write it into): x - mean, kept for the backward pass, and the squares
    and products that feed the sums are scratch arrays reused from step to step
    (:class:`_BufferPool`: one pool for the forward pass, one for the backward
    pass), and dX goes straight into MXNet's gradient buffer. On rows long enough for
    BLAS the variance is a sum of row-by-row dot products (:func:`channel_dot`), with
    no squares written, and each scale-and-shift is :func:`channel_affine`.
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray) -> nd.NDArray:
        m = X.size // X.shape[1]
        # -sum / m, not the sum of -x/m: m equal values then have exactly their value as
        # mean whenever their sum is exact (0 and 1 always are), and x - mean is 0
        neg_mean = channel_sum(X, -1.0) / m
        Xc = channel_affine(X, None, neg_mean, out=_POOL.take(X))      # X - mean
        weakref.finalize(self, _POOL.give, Xc)       # back once no backward can need it
        if _blas_rows(X):                # one pass: row-by-row dot products
            var = channel_dot(Xc, Xc, 1.0 / m)
        else:
            squares = nd.square(Xc, out=_POOL.take(X))
            var = channel_sum(squares, 1.0 / m)
            _POOL.give(squares)
        inv_std = nd.rsqrt(var + self.eps)
        k = gamma * inv_std
        self.neg_mean, self.var = neg_mean, var
        self.save_for_backward(Xc, inv_std, k)
        return channel_affine(Xc, k, beta)

    @property
    def mean(self) -> nd.NDArray:
        """The batch mean, (C,)."""
        return -self.neg_mean

    def backward(self, dY: nd.NDArray):
        Xc, inv_std, k = self.saved_tensors
        m = Xc.size // Xc.shape[1]
        dbeta = channel_sum(dY, out=self.grad_buffer(2))     # sum(dy)
        products = nd.elemwise_mul(dY, Xc, out=_BACKWARD_POOL.take(Xc))
        dgamma = nd.elemwise_mul(channel_sum(products), inv_std,
                                 out=self.grad_buffer(1))    # sum(dy x_hat)
        if self.grad_req(0) == "null":                       # X needs no gradient
            _BACKWARD_POOL.give(products)
            return None, dgamma, dbeta
        # -k * mean(dy), the mean taken first: where dy is 1 throughout (loss = sum(Y))
        # it is exactly 1 and k * dy + shift exactly 0, as in MXNet's kernel
        shift = k * (dbeta / -m)
        a = k * inv_std * dgamma * (-1.0 / m)                # -k * mean(dy x_hat) / std
        # straight into X.grad if we may
        dX = channel_affine(dY, k, shift, out=self.grad_buffer(0))
        dX = channel_affine(Xc, a, add=dX, out=dX, scratch=products)
        _BACKWARD_POOL.give(products)
        return dX, dgamma, dbeta


def moving_average(moving: nd.NDArray, batch: nd.NDArray, momentum: float,
                   negated: bool = False) -> nd.NDArray:
    """``momentum * moving + (1 - momentum) * batch`` (``- batch`` if ``negated``) in
    one operator.

    moving, batch: (C,); returns a new array, ``moving`` is not modified. The update is
    one step of gradient descent, ``moving - (1 - momentum) * (moving - batch)``, so
    MXNet's fused SGD kernel
    ``nd.sgd_update(w, g, lr, wd, rescale_grad) = w - lr * (rescale_grad * g + wd * w)``
    computes it with lr = 1, wd = 1 - momentum and rescale_grad = -(1 - momentum): one
    operator instead of three, which matters when the arrays are small and each
    operator's fixed cost dominates.

    That kernel's lr, wd and rescale_grad are float32, so in float64 (where they would
    put the result 1e-8 off) the update is the formula itself, in float64 arithmetic:
    ``momentum * moving + ((1 - momentum) * +-1) * batch``.
    """
    rate = 1.0 - momentum
    if moving.dtype == np.float64:
        return nd.elemwise_add(moving.detach() * momentum,
                               batch * (-rate if negated else rate))
    return nd.sgd_update(moving.detach(), batch, lr=1.0, wd=rate,
                         rescale_grad=rate if negated else -rate)


def _check_not_cpu_float16(X: nd.NDArray) -> None:
    """Raise a ``TypeError`` naming the fix for float16 X on the CPU."""
    if X.dtype == np.float16 and X.context.device_type == "cpu":
        raise TypeError("fast_batch_norm needs float32 or float64 on the CPU (MXNet "
                        "1.9.1 has no CPU float16 FullyConnected); cast X and the "
                        "vectors, or use impl='naive'")


def fast_batch_norm(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                    moving_mean: nd.NDArray, moving_var: nd.NDArray, *, training: bool,
                    eps: float = 1e-5, momentum: float = 0.9
                    ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """``d2lbn.norm.batch_norm``, fast: same arguments, checks, results and
    ``(Y, new_moving_mean, new_moving_var)``; gradients to X, gamma and beta under
    ``autograd.record()``.

    X: (N, D) or (N, C, H, W), float32 (or float64); gamma, beta, moving_mean,
    moving_var: (D,) or (C,) on X's context. Training mode runs :func:`fast_train`
    (the compiled graph of ``d2lbn.graph_norm`` for small inputs,
    :class:`BatchNormTrain` with its closed-form backward for large ones); inference
    mode is one :func:`scale_shift`, which autograd differentiates directly.
    """
    check_batch_norm_args(X, eps, momentum, training, gamma=gamma, beta=beta,
                                moving_mean=moving_mean, moving_var=moving_var)
    _check_not_cpu_float16(X)
    if not training:
        note_path("fast-inference")
        k = gamma * nd.rsqrt(moving_var + eps)
        return (scale_shift(X, k, beta - moving_mean * k), moving_mean.detach(),
                moving_var.detach())

    return fast_train(X, gamma, beta, moving_mean, moving_var, eps, momentum, X.shape)


def fast_layer_train(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
                     moving_mean: nd.NDArray, moving_var: nd.NDArray, eps: float,
                     momentum: float) -> nd.NDArray:
    """Training mode for ``d2lbn.norm.BatchNorm``, which has checked X and owns the
    vectors (eps and momentum were checked when it was built): the checks the layer
    has not made, then :func:`fast_train` with ``update``. Returns Y; the new moving
    statistics are written into ``moving_mean`` and ``moving_var`` (a channel whose new
    ones are not finite keeps its old ones).

    X: (N, D) or (N, C, H, W); Y has X's shape.
    """
    shape = X.shape
    values_per_channel = shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1)
    if values_per_channel <= 1:          # empty, or a batch of one: the shared check says so
        check_batch_norm_args(X, eps, momentum, True, gamma=gamma)
    _check_not_cpu_float16(X)
    return fast_train(X, gamma, beta, moving_mean, moving_var, eps, momentum, shape,
                      update=True)[0]


def fast_train(X: nd.NDArray, gamma: nd.NDArray, beta: nd.NDArray,
               moving_mean: nd.NDArray, moving_var: nd.NDArray, eps: float,
               momentum: float, shape: Tuple[int, ...], update: bool = False
               ) -> Tuple[nd.NDArray, nd.NDArray, nd.NDArray]:
    """Training mode of :func:`fast_batch_norm`, arguments already checked (``shape`` is
    X.shape): ``(Y, new_moving_mean, new_moving_var)``.

    Small inputs (at most ``GRAPH_MAX_SIZE`` values) run the compiled graph of
    ``d2lbn.graph_norm``, where operator dispatch is what costs; larger ones run
    :class:`BatchNormTrain`, whose closed-form backward makes fewer passes over memory.
    ``update``: write the new statistics into ``moving_mean`` and ``moving_var`` (a
    channel whose new ones are not finite keeps its old ones) and return those arrays.
    """
    size = 1
    for length in shape:
        size *= length
    if size <= graph_norm.GRAPH_MAX_SIZE:
        note_path("graph")
        Y, new_mean, new_var = graph_norm.graph_train(X, gamma, beta, moving_mean,
                                                      moving_var, eps, momentum, shape,
                                                      update)
        if autograd.is_recording() and type(Y) is nd.NDArray:    # noqa: E721
            Y.__class__ = _CheckedOutput           # checks a head gradient's shape
        return Y, new_mean, new_var
    note_path("closed-form")
    fn = BatchNormTrain(eps)
    Y = fn(X, gamma, beta)
    with autograd.pause():
        new_mean = moving_average(moving_mean, fn.neg_mean, momentum, negated=True)
        new_var = moving_average(moving_var, fn.var, momentum)
        if update:
            finite = nd.contrib.isfinite(new_mean + new_var)
            new_mean = nd.where(finite, new_mean, moving_mean, out=moving_mean)
            new_var = nd.where(finite, new_var, moving_var, out=moving_var)
    return Y, new_mean, new_var
