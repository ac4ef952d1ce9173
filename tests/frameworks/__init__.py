# A package, so that tests/frameworks/conftest.py is imported as frameworks.conftest and does not
# replace tests/conftest.py as the module `conftest` (which other tests import numpy_batch_norm from).
