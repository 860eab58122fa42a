"""Defaults and checks of `config.data` (owned by the data layer)."""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='patronus_shapes',
      data_dir='',
      image_size=32,
  ))


def validate_data_config(data) -> None:
  del data
