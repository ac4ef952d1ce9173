"""d2lbn: the helper package of the book *Batch Normalization, from the Formula Up*."""
from .repro import set_seed

__version__ = "0.1.0"
__all__ = ["set_seed"]
