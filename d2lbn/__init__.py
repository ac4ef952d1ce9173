"""d2lbn: the helper package of the book *Batch Normalization, from the Formula Up* (every chapter).

The front door holds what a reader reuses, as d2l readers expect::

    from d2lbn import BatchNorm, load_fashion_mnist, train, try_gpu

Everything else lives in modules of one purpose each (``d2lbn.norm``, ``d2lbn.data``,
``d2lbn.training``, ``d2lbn.moving_stats``, ``d2lbn.seeds``, ...; the README's layout table
lists them). Importing the package is cheap: it trains nothing, reads no data and loads no
plotting backend.
"""
import numpy as _np

# mxnet 1.9.1 reads ``numpy.bool`` (the builtin ``bool``) when imported; NumPy 1.24 removed that alias.
# Restore it, only where it is missing (NumPy 1.24-1.26), before anything below imports mxnet.
if "bool" not in vars(_np) and _np.lib.NumpyVersion(_np.__version__) >= "1.24.0":
    _np.bool = bool

# After the alias: these import mxnet.
from .data import load_fashion_mnist  # noqa: E402
from .device import num_gpus, try_gpu  # noqa: E402
from .norm import BatchNorm, LayerNorm, batch_norm, layer_norm  # noqa: E402
from .repro import set_seed  # noqa: E402
from .seeds import compare_seeds  # noqa: E402
from .training import evaluate_accuracy, train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BatchNorm", "LayerNorm", "batch_norm", "layer_norm", "load_fashion_mnist", "train",
           "evaluate_accuracy", "try_gpu", "num_gpus", "set_seed", "compare_seeds"]
