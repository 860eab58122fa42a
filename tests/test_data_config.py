"""`config.data`: defaults, types and value checks (no I/O)."""

import ml_collections
import pytest

from patronus_jax import config as config_lib
from patronus_jax.config import ConfigError
from patronus_jax.data import data_config, validate_data_config


def _leaves(cfg, prefix=''):
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def test_defaults_are_typed_and_valid():
  cfg = data_config()
  assert not [name for name, value in _leaves(cfg) if value is None]
  validate_data_config(cfg)
  assert cfg.name == 'patronus_shapes' and cfg.image_size == 32 and cfg.channels == 3
  assert not cfg.bias.enabled
  config_lib.validate(config_lib.base_config())


def _set(cfg, dotted, value):
  *path, last = dotted.split('.')
  for part in path:
    cfg = cfg[part]
  cfg[last] = value


@pytest.mark.parametrize('field, value', [
    ('name', 'imagenet'),
    ('image_size', 0),
    ('channels', 2),
    ('crop', 'left'),
    ('train_split', ''),
    ('num_workers', -1),
    ('read_threads', 0),
    ('bias.strength', 1.5),
    ('bias.out_of_scope', 'ignore'),
    ('shapes.num_train', 0),
    ('shapes.resolution', 8),
    ('shapes.planted_strength', 2.0),
    ('folder.eval_fraction', 1.0),
    ('folder.check_channels', 2),
])
def test_bad_values_name_the_field(field, value):
  cfg = data_config()
  _set(cfg, field, value)
  with pytest.raises(ConfigError, match=rf"config field 'data\.{field}'"):
    validate_data_config(cfg)


@pytest.mark.parametrize('changes, field', [
    (dict(attribute=''), 'data.bias.attribute'),
    (dict(target=''), 'data.bias.target'),
    (dict(target='color'), 'data.bias.target'),
    (dict(mapping=''), 'data.bias.mapping'),
    (dict(mapping='red=circle'), 'data.bias.mapping'),
    (dict(mapping='red:circle,red:square'), 'data.bias.mapping'),
])
def test_enabled_bias_needs_attribute_target_and_mapping(changes, field):
  cfg = data_config()
  cfg.bias.enabled = True
  cfg.bias.attribute, cfg.bias.target, cfg.bias.mapping = 'color', 'shape', 'red:circle'
  validate_data_config(cfg)
  for key, value in changes.items():
    cfg.bias[key] = value
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    validate_data_config(cfg)


def test_folder_datasets_need_a_path_and_planted_mapping_is_parsed():
  cfg = data_config()
  cfg.name = 'chexpert'
  with pytest.raises(ConfigError, match=r"'data\.folder\.path'"):
    validate_data_config(cfg)
  cfg = data_config()
  cfg.shapes.planted_strength = 0.9
  cfg.shapes.planted_mapping = 'red:hexagon'
  with pytest.raises(ConfigError, match=r"'data\.shapes\.planted_mapping'.*hexagon"):
    validate_data_config(cfg)

