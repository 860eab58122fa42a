"""`config.evaluate`: every field has a concrete default, impossible values name their field."""

import os
import subprocess
import sys

import ml_collections
import pytest

from patronus_jax import config as config_lib
from patronus_jax.evaluate.config import METRICS, evaluate_config, validate_evaluate_config


def test_defaults_are_concrete_and_valid():
  evaluate = evaluate_config()
  for name, value in evaluate.items():
    assert value is not None, name
  validate_evaluate_config(evaluate)
  assert evaluate.probe_folds == 5 and evaluate.inception_weights == ''
  assert set(evaluate.metrics) <= set(METRICS)
  # Assembled into the full schema and validated with it.
  config = config_lib.base_config()
  assert config.evaluate.to_dict() == evaluate.to_dict()
  config_lib.validate(config)


@pytest.mark.parametrize('field, value, message', [
    ('metrics', ('fid', 'fidd'), 'evaluate.metrics'),
    ('metrics', ('probe', 'probe'), 'evaluate.metrics'),
    ('samples', ('conditional', 'both'), 'evaluate.samples'),
    ('num_samples', 1, 'evaluate.num_samples'),
    ('batch_size', 0, 'evaluate.batch_size'),
    ('fid_num_real', 0, 'evaluate.fid_num_real'),
    ('inception_weights', 'weights.h5', 'evaluate.inception_weights'),
    ('probe_folds', 1, 'evaluate.probe_folds'),
    ('probe_max_examples', -5, 'evaluate.probe_max_examples'),
    ('probe_C', 0.0, 'evaluate.probe_C'),
    ('tad_auroc_threshold', 0.4, 'evaluate.tad_auroc_threshold'),
    ('tad_entropy_threshold', 1.5, 'evaluate.tad_entropy_threshold'),
    ('tad_folds', -1, 'evaluate.tad_folds'),
    ('dci_test_fraction', 1.0, 'evaluate.dci_test_fraction'),
    ('dci_num_estimators', 0, 'evaluate.dci_num_estimators'),
    ('classifier_widths', (), 'evaluate.classifier_widths'),
    ('classifier_holdout_fraction', 0.0, 'evaluate.classifier_holdout_fraction'),
    ('classifier_num_steps', -1, 'evaluate.classifier_num_steps'),
    ('fid_split', '', 'evaluate.fid_split'),
])
def test_impossible_values_name_the_field(field, value, message):
  evaluate = evaluate_config()
  evaluate[field] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace('.', r'\.')):
    validate_evaluate_config(evaluate)


def test_accepted_alternatives():
  evaluate = evaluate_config()
  evaluate.inception_weights = '/data/pt_inception-2015-12-05-6726825d.pth'
  evaluate.fid_num_real = -1
  evaluate.metrics = ('fd_classifier', 'probe')
  evaluate.tad_folds = 0
  validate_evaluate_config(evaluate)
  evaluate.inception_weights = '/data/pt_inception.npz'
  validate_evaluate_config(evaluate)


def test_unknown_fields_fail_in_the_full_schema():
  config = config_lib.base_config()
  config.evaluate.probe_fold = 3
  with pytest.raises(config_lib.ConfigError, match=r"unknown config field 'evaluate.probe_fold'.*probe_folds"):
    config_lib.validate(config)
  assert isinstance(evaluate_config(), ml_collections.ConfigDict)


def test_config_import_stays_light():
  code = ('import sys, patronus_jax.evaluate.config as c; c.evaluate_config(); '
          'heavy = [m for m in ("flax", "sklearn", "jax", "torch") if m in sys.modules]; '
          'assert not heavy, heavy')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


def test_an_unplanted_judge_needs_a_planted_bias():
  config = config_lib.base_config()
  config.evaluate.classifier_training = 'unbiased'
  with pytest.raises(config_lib.ConfigError, match='evaluate.classifier_training'):
    config_lib.validate(config)
  config.evaluate.classifier_training = 'unplanted'
  with pytest.raises(config_lib.ConfigError, match=r"evaluate.classifier_training.*no planted bias"):
    config_lib.validate(config)
  config.data.shapes.planted_strength = 0.9
  config_lib.validate(config)
  config.data.shapes.planted_strength = -1.0
  config.data.bias.update(enabled=True, attribute='color', target='shape', mapping='red:circle')
  config_lib.validate(config)


def test_the_shapes_bias_variant_judges_with_a_classifier_trained_without_the_planted_tie():
  config = config_lib.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'shapes.py') + ':bias,quick')
  assert config.evaluate.classifier_training == 'unplanted' and config.data.shapes.planted_strength > 0
  unbiased = config_lib.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'shapes.py') + ':quick')
  assert unbiased.evaluate.classifier_training == 'as_is'
