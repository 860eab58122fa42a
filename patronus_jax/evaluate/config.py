"""Defaults and checks of `config.evaluate`."""

import ml_collections


def evaluate_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(num_samples=1000))


def validate_evaluate_config(evaluate) -> None:
  del evaluate
