"""Defaults and checks of `config.bcos`."""

import ml_collections


def bcos_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(b=2.0))


def validate_bcos_config(bcos) -> None:
  del bcos
