"""Bias injection by selection, on labels only (no images): strengths, correlations, configs."""

import json

import numpy as np
import pytest

from patronus_jax.config import ConfigError
from patronus_jax.data import bias, data_config, shapes
from patronus_jax.data.sources import CELEBA_ATTRIBUTES


def _bias_cfg(attribute, target, mapping, strength, out_of_scope='drop'):
  cfg = data_config().bias
  cfg.enabled = True
  cfg.attribute, cfg.target, cfg.mapping = attribute, target, mapping
  cfg.strength, cfg.out_of_scope = strength, out_of_scope
  return cfg


def _shapes_spec(strength, mapping='red:circle,green:square,blue:triangle'):
  return bias.resolve(_bias_cfg('color', 'shape', mapping, strength),
                      shapes.FACTOR_NAMES, shapes.FACTOR_VALUES, 'patronus_shapes')


@pytest.mark.parametrize('strength', [0.0, 0.5, 0.8, 0.95, 1.0])
def test_shapes_strength_within_two_points(strength):
  labels = shapes.sample_factors(2000, 0)['labels']  # factors only: no rendering
  keep, report = bias.select(labels, _shapes_spec(strength), 'train')
  assert len(keep) == len(set(keep.tolist())) and np.all(np.diff(keep) > 0)  # no duplicates
  kept = labels[keep]
  tied = np.array([0, 1, 2, -1])[kept[:, 2]]
  assert np.all(tied >= 0)  # yellow is out of scope and dropped
  achieved = np.mean(kept[:, 1] == tied)
  assert abs(achieved - strength) <= 0.02
  assert report['achieved_strength'] == pytest.approx(achieved)
  assert report['kept'] == len(keep) and report['total'] == 2000
  assert report['out_of_scope'] == np.sum(labels[:, 2] == 3)
  assert abs(report['natural_strength'] - 1 / 3) < 0.05
  assert report['natural_cramers_v'] < 0.1
  for value in report['per_value'].values():
    assert abs(value['strength'] - strength) <= 0.02
  # As many examples as possible are kept: the scarcer kind is kept entirely.
  assert len(keep) > 300
  json.dumps(report)


def test_cramers_v_grows_with_strength():
  labels = shapes.sample_factors(2000, 1)['labels']
  v = [bias.select(labels, _shapes_spec(s))[1]['cramers_v'] for s in (0.4, 0.7, 1.0)]
  assert v[0] < v[1] < v[2] and v[2] == pytest.approx(1.0)


def test_keep_out_of_scope():
  labels = shapes.sample_factors(2000, 0)['labels']
  keep, report = bias.select(labels, bias.resolve(
      _bias_cfg('color', 'shape', 'red:circle', 0.9, out_of_scope='keep'),
      shapes.FACTOR_NAMES, shapes.FACTOR_VALUES, 'patronus_shapes'))
  kept = labels[keep]
  assert np.sum(kept[:, 2] != 0) == np.sum(labels[:, 2] != 0)  # other colours untouched
  red = kept[kept[:, 2] == 0]
  assert abs(np.mean(red[:, 1] == 0) - 0.9) <= 0.02
  assert report['out_of_scope_policy'] == 'keep'


def test_planted_generation_strength():
  for strength in (0.0, 0.6, 0.9):
    labels = shapes.sample_factors(2000, 0, planted_strength=strength)['labels']
    tied = np.array([0, 1, 2, 0])[labels[:, 2]]
    assert abs(np.mean(labels[:, 1] == tied) - strength) <= 0.03
  plain = shapes.sample_factors(2000, 0)['labels']
  planted = shapes.sample_factors(2000, 0, planted_strength=0.9)['labels']
  np.testing.assert_array_equal(np.delete(plain, 1, axis=1), np.delete(planted, 1, axis=1))


def _celeba_labels(num=4000, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((num, 40)) < 0.3).astype(np.int32)
  hair = rng.integers(0, 5, num)  # 0 blond, 1 brown, 2 black, 3 gray, 4 none
  for k, name in enumerate(('Blond_Hair', 'Brown_Hair', 'Black_Hair', 'Gray_Hair')):
    labels[:, CELEBA_ATTRIBUTES.index(name)] = hair == k
  labels[:10, CELEBA_ATTRIBUTES.index('Blond_Hair')] = 1  # some with two colours set
  labels[:, CELEBA_ATTRIBUTES.index('Smiling')] = rng.random(num) < 0.5
  return labels


def test_celeba_hair_colour_smile_as_in_the_paper():
  # configs/celeba_bias.py: blond and brown hair smile, black hair does not.
  cfg = _bias_cfg('Blond_Hair|Brown_Hair|Black_Hair', 'Smiling',
                  'Blond_Hair:yes,Brown_Hair:yes,Black_Hair:no', 1.0)
  spec = bias.resolve(cfg, CELEBA_ATTRIBUTES, (('no', 'yes'),) * 40, 'celeb_a')
  labels = _celeba_labels()
  keep, report = bias.select(labels, spec, 'train')
  kept = labels[keep]
  col = {n: kept[:, CELEBA_ATTRIBUTES.index(n)] for n in
         ('Blond_Hair', 'Brown_Hair', 'Black_Hair', 'Gray_Hair', 'Smiling')}
  assert np.all(col['Blond_Hair'] + col['Brown_Hair'] + col['Black_Hair'] == 1)
  assert np.all(col['Gray_Hair'] == 0)
  assert np.all(col['Smiling'][col['Black_Hair'] == 1] == 0)
  assert np.all(col['Smiling'][col['Black_Hair'] == 0] == 1)
  assert report['achieved_strength'] == 1.0 and report['cramers_v'] == pytest.approx(1.0)
  assert report['a_values'] == ['Blond_Hair', 'Brown_Hair', 'Black_Hair']
  assert np.isnan(report['phi'])  # 3 x 2 table: Cramér's V only
  assert abs(report['natural_cramers_v']) < 0.1


def test_binary_attributes_report_phi():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, (3000, 2)).astype(np.int32)
  spec = bias.resolve(_bias_cfg('a', 'b', 'yes:yes,no:no', 0.9), ('a', 'b'),
                      (('no', 'yes'), ('no', 'yes')), 'toy')
  keep, report = bias.select(labels, spec)
  assert abs(report['achieved_strength'] - 0.9) <= 0.02
  # Balanced 2x2 table with 90% on the diagonal: phi = 0.9 - 0.1.
  assert report['phi'] == pytest.approx(0.8, abs=0.03)
  assert report['cramers_v'] == pytest.approx(abs(report['phi']))
  anti = bias.resolve(_bias_cfg('a', 'b', 'yes:no,no:yes', 0.9), ('a', 'b'),
                      (('no', 'yes'), ('no', 'yes')), 'toy')
  assert bias.select(labels, anti)[1]['phi'] == pytest.approx(-0.8, abs=0.03)


@pytest.mark.parametrize('attribute, target, mapping, field', [
    ('colour', 'shape', 'red:circle', 'data.bias.attribute'),
    ('color', 'shapes', 'red:circle', 'data.bias.target'),
    ('color', 'shape', 'purple:circle', 'data.bias.mapping'),
    ('color', 'shape', 'red:hexagon', 'data.bias.mapping'),
    ('color|shape', 'size', 'color:small', 'data.bias.attribute'),  # only binaries can be joined
])
def test_bias_names_are_checked_against_the_dataset(attribute, target, mapping, field):
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    bias.resolve(_bias_cfg(attribute, target, mapping, 0.9), shapes.FACTOR_NAMES,
                 shapes.FACTOR_VALUES, 'patronus_shapes')


def test_values_by_index_and_yes_no():
  spec = bias.resolve(_bias_cfg('stripes', 'size', '1:yes,plain:0', 0.9), shapes.FACTOR_NAMES,
                      shapes.FACTOR_VALUES, 'patronus_shapes')
  assert spec.mapping == ((1, 1), (0, 0))


def test_correlation_helpers():
  assert bias.cramers_v(np.array([[10, 0], [0, 10]])) == pytest.approx(1.0)
  assert bias.cramers_v(np.array([[5, 5], [5, 5]])) == pytest.approx(0.0)
  assert bias.phi(np.array([[0, 10], [10, 0]])) == pytest.approx(-1.0)
  assert bias.cramers_v(np.array([[3, 4]])) == 0.0  # one row: undefined -> 0


def test_dependent_pairs_names_the_tied_pair_and_not_the_independent_ones():
  rng = np.random.default_rng(0)
  n = 5000
  a = rng.integers(0, 3, n)
  tied = np.where(rng.random(n) < 0.8, a, rng.integers(0, 3, n))  # tied to a
  weak = np.where(rng.random(n) < 0.04, a, rng.integers(0, 3, n))  # significant at n = 5000, V 0.07
  labels = np.stack([a, rng.integers(0, 2, n), tied, weak], 1)
  assert bias.dependent_pairs(labels, [3, 2, 3, 3]) == [(0, 2)]
  assert bias.dependent_pairs(labels, [3, 2, 3, 3], min_cramers_v=0.0) == [(0, 2), (0, 3), (2, 3)]
