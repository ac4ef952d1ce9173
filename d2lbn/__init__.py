"""d2lbn: the helper package of the book *Batch Normalization, from the Formula Up*."""
import numpy as _np

# mxnet 1.9.1 reads ``numpy.bool`` (the builtin ``bool``) when imported; NumPy 1.24 removed that alias.
# Restore it, only where it is missing (NumPy 1.24-1.26), before anything below imports mxnet.
if "bool" not in vars(_np) and _np.lib.NumpyVersion(_np.__version__) >= "1.24.0":
    _np.bool = bool

from .repro import set_seed  # noqa: E402  (after the alias: this imports mxnet)

__version__ = "0.1.0"
__all__ = ["set_seed"]
