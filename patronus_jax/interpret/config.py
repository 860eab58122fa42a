"""Defaults and checks of `config.interpret`."""

import ml_collections


def interpret_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(ddim_steps=50))


def validate_interpret_config(interpret) -> None:
  del interpret
