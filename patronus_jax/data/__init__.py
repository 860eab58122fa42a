"""The data layer: datasets -> grain pipelines of NHWC [-1, 1] batches with attributes.

Public API (everything else in this package is an implementation detail):

  DataError       missing, corrupt or malformed data (the message says how to fix it)
  DatasetInfo     image shape, attribute names/values, split sizes, captions, bias report
  get_info(data_cfg) -> DatasetInfo
  make_iterator(data_cfg, split, *, global_batch_size, seed, shuffle=True, num_epochs=None,
                drop_remainder=True, process_index=None, process_count=None)
      -> checkpointable iterator of {'image', 'attributes', 'caption'?, 'index'} batches
  load_arrays(data_cfg, split, max_examples=None) -> dict of in-order numpy arrays
  data_config() / validate_data_config(data_cfg): the `config.data` section

Modules:
  config.py          `config.data` fields, defaults and validation (no I/O)
  shapes.py          the shapes dataset's factors, rendering and captions (NumPy)
  shapes_builder.py  its TFDS builder `patronus_shapes` (ArrayRecord, prepared offline)
  bias.py            planting a correlation by selecting examples; strength and Cramér's V
  sources.py         TFDS and image-folder record sources; missing-data messages
  preprocess.py      decode, resize (bicubic, antialiased), crop, channels, scale to [-1, 1]
  pipeline.py        grain: shuffle, epochs, per-process sharding, batching, workers, state

`import patronus_jax.data` is cheap: TFDS and grain are imported on first use, so the config
schema (which imports `patronus_jax.data.config`) stays light.
"""

from __future__ import annotations

from patronus_jax.data.config import data_config, validate_data_config
from patronus_jax.data.errors import DataError, DatasetInfo

__all__ = ['DataError', 'DatasetInfo', 'get_info', 'make_iterator', 'load_arrays',
           'data_config', 'validate_data_config']


def get_info(data_cfg) -> DatasetInfo:
  """Describes the configured dataset (preparing shapes if missing; DataError if real data is)."""
  from patronus_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.get_info(data_cfg)


def make_iterator(data_cfg, split, *, global_batch_size, seed, shuffle=True, num_epochs=None,
                  drop_remainder=True, process_index=None, process_count=None):
  """This process's share of each global batch, as a checkpointable grain iterator.

  See `patronus_jax.data.pipeline.make_iterator`.
  """
  from patronus_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_iterator(
      data_cfg, split, global_batch_size=global_batch_size, seed=seed, shuffle=shuffle,
      num_epochs=num_epochs, drop_remainder=drop_remainder, process_index=process_index,
      process_count=process_count)


def load_arrays(data_cfg, split, max_examples=None) -> dict:
  """In-order numpy arrays of a split (evaluation and interpretation on held-out data)."""
  from patronus_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.load_arrays(data_cfg, split, max_examples)
