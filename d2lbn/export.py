"""ch12: export a hybridized Gluon net to ONNX with MXNet 1.9.1's ``mx.onnx``, and check the graph.

What ``mx.onnx`` 1.9.1 does with a batch-norm layer (read in
``mxnet/onnx/mx2onnx/_op_translations/_op_translations_opset12.py``, ``convert_batchnorm``, and
run in chapter 12): MXNet's ``BatchNorm`` node becomes one ONNX ``BatchNormalization`` node with
the attributes ``epsilon`` and ``momentum`` and no ``training_mode``, so ONNX's default, inference
(the stored mean and variance), applies; the moving statistics travel as initializers (and, like
every parameter, are also listed among the graph's inputs, with the initializer as default). Two
things do not travel:

* the mode: an exported graph always normalises with the *stored* statistics, whatever mode the
  net was in when it was exported. Statistics that were never updated (still 0 and 1) are exported
  as they are, and the exported model is then as wrong as MXNet's own inference;
* ``fix_gamma``: the converter ignores it. MXNet computes with gamma = 1 when ``fix_gamma`` is set
  (``gluon.nn.BatchNorm(scale=False)``, and ``sym.BatchNorm``'s default), ONNX with the stored
  gamma. :func:`export_onnx` writes ones there, the fix.

Parameters missing from the params file (the moving statistics, say) make ``mx.onnx`` fail with an
``IndexError`` ("list index out of range"); :func:`export_onnx` always exports them.

``onnx`` (1.14.1 in the book's environment) is imported on first use, so ``import d2lbn.export``
stays cheap. ONNX Runtime does not fit the book's environment (its wheels for Python 3.11 need
NumPy >= 1.24.2, MXNet 1.9.1 needs NumPy < 1.24): this module runs exported graphs with
``onnx.reference``, ONNX's own NumPy implementation of the operators; ``tests/test_onnx_runtime.py``
runs them in ONNX Runtime in the NumPy 1.26 tier.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from mxnet import gluon, nd

from .moving_stats import blocks

__all__ = ["ExportError", "BatchNormNode", "export_onnx", "load_onnx", "batch_norm_nodes",
           "check_inference_graph", "run_reference", "initial_statistics"]


class ExportError(ValueError):
    """A net that cannot be exported, or an exported graph that does not compute what the net
    computes at inference."""


@dataclass
class BatchNormNode:
    """One ONNX ``BatchNormalization`` node: its ``name``, ``epsilon``, ``training_mode`` (0 when
    the attribute is absent, ONNX's default), number of outputs, and its scale, bias, mean and
    variance as float64 arrays (C,) when they are initializers (None when they are not)."""
    name: str
    epsilon: float
    training_mode: int
    num_outputs: int
    scale: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    mean: Optional[np.ndarray]
    var: Optional[np.ndarray]


def _onnx():
    import onnx
    return onnx


def _check_exportable(net: gluon.Block) -> None:
    if not isinstance(net, gluon.HybridBlock):
        raise ExportError(f"only a gluon HybridBlock can be exported; got {type(net).__name__} "
                          "(d2lbn.norm.BatchNorm is an imperative Block: build the net with "
                          "gluon.nn.BatchNorm, e.g. d2lbn.models.lenet_bn_gluon)")
    if not net._active:
        raise ExportError(f"{net.name} is not hybridized: call net.hybridize(), then run it once "
                          "on an example batch, then export")
    if net._cached_graph == ():
        raise ExportError(f"{net.name} has been hybridized but never run, so it has no graph to "
                          "export: run it once on an example batch (net(X)), then export")


def export_onnx(net: gluon.HybridBlock, example: nd.NDArray,
                prefix: Union[str, Path]) -> Path:
    """Export ``net`` to ``{prefix}.onnx`` and return that path.

    net: a hybridized HybridBlock that has run once; example: (N, ...) an input batch,
    whose shape the ONNX graph's input gets (float32). Writes ``{prefix}-symbol.json``
    and ``{prefix}-0000.params`` (``net.export``) on the way. For every batch-norm
    layer with ``fix_gamma`` (``gluon.nn.BatchNorm(scale=False)``) the exported gamma
    is 1, what MXNet computes with (``mx.onnx`` 1.9.1 would export the stored gamma).
    Inference semantics are checked with :func:`check_inference_graph` before
    returning."""
    import mxnet as mx
    import mxnet.onnx  # noqa: F401  (registers mx.onnx)
    _check_exportable(net)
    if not isinstance(example, nd.NDArray) or example.ndim < 2:
        got = getattr(example, "shape", type(example).__name__)
        raise ExportError("example must be an NDArray batch (N, ...) of the net's "
                          f"input; got {got}")
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        raise ExportError(f"folder {prefix.parent} does not exist")
    net.export(str(prefix))
    sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    params = nd.load(params_file)
    fixed = [b for b in blocks(net)
             if isinstance(b, gluon.nn.BatchNorm) and b._kwargs.get("fix_gamma", False)]
    for layer in fixed:
        key = "arg:" + layer.gamma.name
        params[key] = nd.ones_like(params[key])
    if fixed:
        nd.save(params_file, params)
    path = Path(f"{prefix}.onnx")
    mx.onnx.export_model(sym_file, params_file, [tuple(example.shape)], np.float32,
                         str(path))
    check_inference_graph(load_onnx(path))
    return path


def load_onnx(path: Union[str, Path]):
    """The ONNX model at ``path``, checked with ``onnx.checker.check_model``."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def batch_norm_nodes(model) -> List[BatchNormNode]:
    """Every ``BatchNormalization`` node of the ONNX ``model``, in graph order."""
    onnx = _onnx()
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64)
             for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        values = [inits.get(name) for name in list(node.input[1:5]) + [None] * 4][:4]
        out.append(BatchNormNode(node.name, float(attrs.get("epsilon", 1e-5)),
                                 int(attrs.get("training_mode", 0)), len(node.output), *values))
    return out


def check_inference_graph(model) -> List[BatchNormNode]:
    """Raise :class:`ExportError` unless every batch-norm node of ``model`` computes inference:
    ``training_mode`` 0 (ONNX's default), one output (a training-mode node also outputs the
    running mean and variance), and its scale, bias, mean and variance stored as initializers.
    (``mx.onnx`` 1.9.1 also lists every parameter among the graph's inputs, each with its
    initializer as the default value: a runtime need not be fed them, but may let a caller override
    them.) Returns the nodes."""
    nodes = batch_norm_nodes(model)
    for node in nodes:
        if node.training_mode != 0 or node.num_outputs != 1:
            raise ExportError(f"batch-norm node {node.name} has training semantics "
                              f"(training_mode={node.training_mode}, {node.num_outputs} outputs): "
                              "it would normalise with each batch's own statistics; export the "
                              "net for inference")
        missing = [what for what, v in (("scale", node.scale), ("bias", node.bias),
                                        ("mean", node.mean), ("var", node.var)) if v is None]
        if missing:
            raise ExportError(f"batch-norm node {node.name} has no stored {', '.join(missing)}: "
                              "the statistics were not exported")
    return nodes


def initial_statistics(model) -> List[str]:
    """Names of the batch-norm nodes whose stored statistics are still the initial values (every
    mean 0 and every variance 1): statistics never updated, exported as they are."""
    return [node.name for node in batch_norm_nodes(model)
            if node.mean is not None and node.var is not None
            and np.all(node.mean == 0) and np.all(node.var == 1)]


def run_reference(model, X: np.ndarray) -> np.ndarray:
    """Run the ONNX ``model`` on ``X`` (float32 array of the exported input shape) with
    ``onnx.reference.ReferenceEvaluator``; return its first output."""
    from onnx.reference import ReferenceEvaluator
    X = np.asarray(X, dtype=np.float32)
    name = model.graph.input[0].name
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    if all(shape) and X.shape != shape:
        raise ValueError(f"the graph was exported for input shape {shape}; got {X.shape}")
    return ReferenceEvaluator(model).run(None, {name: X})[0]
