"""The data layer's light-weight public types (importing them pulls in no TFDS or grain)."""

from __future__ import annotations

import dataclasses

from patronus_jax.core.errors import DataError  # re-exported: the data layer's error type

__all__ = ['DataError', 'DatasetInfo']


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a configured dataset looks like after preprocessing (and bias selection).

  Attributes:
    name: `config.data.name`.
    image_shape: (H, W, C) of the images the pipeline yields.
    attribute_names: the columns of `batch['attributes']`; () when there are none.
    attribute_values: value names per attribute; its length is the cardinality. Binary
      attributes use ('no', 'yes').
    num_examples: split name -> number of examples (after bias selection).
    has_captions: whether batches carry 'caption'.
    bias_report: for a configured bias (or a planted shapes correlation), what was achieved
      on the train split (see `patronus_jax.data.bias`); with `bias.apply_to_eval`, the eval
      split's report is under the key 'eval'. None otherwise.
  """

  name: str
  image_shape: tuple[int, int, int]
  attribute_names: tuple[str, ...]
  attribute_values: tuple[tuple[str, ...], ...]
  num_examples: dict
  has_captions: bool
  bias_report: dict | None = None
