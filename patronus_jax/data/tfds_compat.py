"""Imports `tensorflow_datasets` as `tfds`, working around a packaging bug of TFDS 4.9.x.

`DatasetBuilder.code_path` (used by every `download_and_prepare`, for CelebA as for our
shapes builder) refers to the `importlib_resources` backport, which TFDS only declares as a
dependency for Python < 3.9. On newer Pythons the standard library's `importlib.resources`
has the same API for that use (`abc.Traversable`), so when the backport is not installed we
register the standard module under its name. Installing `importlib_resources` makes this a
no-op.
"""

import sys

try:
  import importlib_resources  # noqa: F401  (TFDS needs it importable; see above)
except ImportError:
  import importlib.resources  # pylint: disable=g-import-not-at-top
  import importlib.resources.abc  # pylint: disable=g-import-not-at-top,unused-import
  sys.modules.setdefault('importlib_resources', importlib.resources)

import tensorflow_datasets as tfds  # noqa: F401,E402  (re-exported after the compat fix above)
