"""The data layer: datasets -> grain pipelines of NHWC [-1, 1] batches with attributes.

Public API (everything else in this package is an implementation detail):

  DataError       missing, corrupt or malformed data (the message says how to fix it)
  DatasetInfo     image shape, attribute names/values, split sizes, captions, bias report
  get_info(data_cfg) -> DatasetInfo
  make_iterator(data_cfg, split, *, global_batch_size, seed, shuffle=True, num_epochs=None,
                drop_remainder=True, process_index=None, process_count=None)
      -> checkpointable iterator of {'image', 'attributes', 'caption'?, 'index'} batches
  load_arrays(data_cfg, split, max_examples=None) -> dict of in-order numpy arrays
  training_iterator_factory(data_cfg, global_batch_size, seed) -> () -> endless shuffled batches
  check_image_shape(data_cfg, info): DataError unless the images have the configured shape
  data_config() / validate_data_config(data_cfg): the `config.data` section

Modules:
  config.py          `config.data` fields, defaults and validation (no I/O)
  shapes.py          the shapes dataset's factors and rendering (NumPy)
  captions.py        one caption builder per dataset, used by the batches and the vocabularies
  shapes_builder.py  its TFDS builder `patronus_shapes` (ArrayRecord, prepared offline)
  bias.py            planting a correlation by selecting examples; strength and Cramér's V
  sources.py         TFDS and image-folder record sources; missing-data messages
  preprocess.py      decode, resize (bicubic, antialiased), crop, channels, scale to [-1, 1]
  pipeline.py        grain: shuffle, epochs, per-process sharding, batching, workers, state

TFDS is imported with the package (about 0.2 s more; the built-in shapes and CelebA are read through it).
"""

from __future__ import annotations

from patronus_jax.data.config import data_config, validate_data_config
from patronus_jax.data.errors import DataError, DatasetInfo
from patronus_jax.data.pipeline import get_info, load_arrays, make_iterator

__all__ = ['DataError', 'DatasetInfo', 'get_info', 'make_iterator', 'load_arrays', 'data_config',
           'validate_data_config', 'training_iterator_factory', 'check_image_shape']


def training_iterator_factory(data_cfg, global_batch_size: int, seed: int):
  """() -> this process's share of an endless, shuffled stream of training batches."""
  return lambda: make_iterator(data_cfg, data_cfg.train_split, global_batch_size=global_batch_size,
                               seed=seed, shuffle=True, num_epochs=None)


def check_image_shape(data_cfg, info: DatasetInfo) -> None:
  """DataError unless the dataset yields images of the configured (size, size, channels)."""
  expected = (data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
  if tuple(info.image_shape) != expected:
    raise DataError(f'dataset {info.name} yields images {tuple(info.image_shape)}, the config expects '
                    f'{expected} (data.image_size, data.channels)')
