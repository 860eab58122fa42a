"""classifier_for_workdir: trains once per data config, caches in the workdir, safe when concurrent."""

import os
import threading

import jax
import numpy as np
import pytest

from patronus_jax.data import shapes as shapes_data
from patronus_jax.evaluate import workdir_classifier as wc


def _config(data_dir):
  from configs import shapes  # pylint: disable=g-import-not-at-top
  config = shapes.get_config('tiny')
  config.data.data_dir = str(data_dir)
  config.data.read_threads = 2
  config.evaluate.classifier_num_steps = 30
  config.evaluate.classifier_batch_size = 32
  config.evaluate.classifier_widths = (8, 16)
  config.evaluate.classifier_feature_dim = 32
  config.evaluate.classifier_max_examples = 200
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_trains_caches_and_retrains_on_change(data_dir, tmp_path, monkeypatch):
  config = _config(data_dir)
  calls = []
  train = wc.train_for_config
  monkeypatch.setattr(wc, 'train_for_config', lambda c: calls.append(1) or train(c))

  clf, metrics = wc.classifier_for_workdir(config, str(tmp_path))
  assert len(calls) == 1
  assert metrics['path'] == os.path.join(str(tmp_path), 'classifier', 'attribute_classifier.npz')
  assert os.path.exists(metrics['path'])
  assert clf.attribute_names == shapes_data.FACTOR_NAMES
  assert set(metrics['accuracy']) == set(shapes_data.FACTOR_NAMES)
  assert metrics['num_train'] + metrics['num_holdout'] == 200
  assert all(0.0 <= a <= 1.0 for a in metrics['accuracy'].values())

  # Same data and settings: loaded, identical parameters, same metrics.
  clf2, metrics2 = wc.classifier_for_workdir(config, str(tmp_path))
  assert len(calls) == 1
  assert metrics2['accuracy'] == metrics['accuracy']
  for a, b in zip(jax.tree.leaves(clf.params), jax.tree.leaves(clf2.params)):
    np.testing.assert_array_equal(a, b)
  # Fields that do not change the classifier do not retrain it.
  config.data.read_threads = 1
  config.evaluate.num_samples = 17
  wc.classifier_for_workdir(config, str(tmp_path))
  assert len(calls) == 1

  # Another data config (or other classifier settings) retrains and replaces it.
  config.evaluate.classifier_max_examples = 160
  _, metrics3 = wc.classifier_for_workdir(config, str(tmp_path))
  assert len(calls) == 2
  assert metrics3['num_train'] + metrics3['num_holdout'] == 160
  _, metrics4 = wc.classifier_for_workdir(config, str(tmp_path))
  assert len(calls) == 2 and metrics4['trained_for'] == metrics3['trained_for']


def test_concurrent_callers_train_once(data_dir, tmp_path, monkeypatch):
  config = _config(data_dir)
  calls = []
  train = wc.train_for_config
  monkeypatch.setattr(wc, 'train_for_config', lambda c: calls.append(1) or train(c))
  results, errors = [], []

  def call():
    try:
      results.append(wc.classifier_for_workdir(config, str(tmp_path))[1])
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=call) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert len(calls) == 1
  assert results[0]['accuracy'] == results[1]['accuracy']
  leftovers = [f for f in os.listdir(os.path.join(str(tmp_path), 'classifier')) if f.startswith('.tmp')]
  assert not leftovers


def test_classifier_dir_override(data_dir, tmp_path):
  config = _config(data_dir)
  config.evaluate.classifier_num_steps = 2
  config.evaluate.classifier_dir = str(tmp_path / 'elsewhere')
  _, metrics = wc.classifier_for_workdir(config, str(tmp_path / 'wd'))
  assert metrics['path'].startswith(str(tmp_path / 'elsewhere'))


def test_the_weak_judge_note_names_every_attribute_read_below_the_threshold_worst_first():
  note = wc.weak_judge_note({'shape': 0.96, 'glyph': 0.72, 'rotation': 0.8, 'ink': 1.0})
  assert note.startswith('the attribute classifier reads glyph 0.72, rotation 0.80 right in fewer than 90%')
  assert 'shape' not in note and 'ink' not in note
  assert wc.weak_judge_note({'shape': 0.9, 'ink': 1.0}) is None
  assert wc.weak_judge_note({}) is None
  # a judge that reads shape from colour: right overall, wrong where the combination is rare
  rare = {'shape x color': {'num_examples': 22, 'accuracy': {'shape': 0.83, 'color': 1.0}},
          'size x position': {'num_examples': 4, 'accuracy': {'size': 0.5, 'position': 1.0}}}
  note = wc.weak_judge_note({'shape': 0.99, 'color': 1.0}, rare)
  assert 'reads shape 0.83 (shape x color) right in fewer than 90%' in note and 'size' not in note
  assert "classifier_training='rebalanced'" in note
  fine = {'shape x color': {'num_examples': 22, 'accuracy': {'shape': 0.95}}}
  assert wc.weak_judge_note({'shape': 0.99}, fine) is None


def test_the_judge_trains_rebalanced_or_unplanted_so_it_does_not_learn_the_planted_tie(data_dir, monkeypatch):
  from patronus_jax.data import bias as bias_lib  # pylint: disable=g-import-not-at-top
  config = _config(data_dir)
  config.data.shapes.planted_strength = 0.95
  seen = {}
  fit = wc.clf_lib.train_attribute_classifier

  def spy(images, attributes, cardinalities, **kw):
    seen.update(attributes=np.asarray(attributes), weights=kw.get('sample_weights'))
    return fit(images, attributes, cardinalities, **kw)

  monkeypatch.setattr(wc.clf_lib, 'train_attribute_classifier', spy)
  names = list(shapes_data.FACTOR_NAMES)
  shape, color = names.index('shape'), names.index('color')
  cards = [len(v) for v in shapes_data.FACTOR_VALUES]
  # 'as_is': the planted data, no weights; the field is left out of what the cache is keyed on
  _, metrics = wc.train_for_config(config)
  assert seen['weights'] is None and metrics['training'] == {'data': 'as_is'}
  # checked where the judge could read one from the other: rare colour-shape combinations of the hold-out
  assert list(metrics['rare_combinations']) == ['shape x color']
  assert 'classifier_training' not in wc.trained_for(config)['classifier']
  planted = seen['attributes']
  v_planted = bias_lib.cramers_v(bias_lib.contingency_table(planted[:, color], planted[:, shape], 4, 3))
  assert v_planted > 0.5
  # 'rebalanced': colour <-> shape (and only pairs the labels tie) weighted to independence
  config.evaluate.classifier_training = 'rebalanced'
  _, metrics = wc.train_for_config(config)
  assert metrics['training']['pairs'] == [['shape', 'color']]
  assert metrics['training']['max_weight'] > 1.0
  np.testing.assert_allclose(seen['weights'], bias_lib.independence_weights(planted, [(shape, color)], cards))
  weighted = bias_lib.weighted_table(planted[:, color], planted[:, shape], seen['weights'], 4, 3)
  # (cells without an example stay empty: one of 12 here, so V is not 0)
  assert bias_lib.cramers_v(weighted * len(planted)) < 0.5 * v_planted
  assert 'classifier_training' in wc.trained_for(config)['classifier']
  # 'unplanted': the same generator with the planting off
  config.evaluate.classifier_training = 'unplanted'
  _, metrics = wc.train_for_config(config)
  unplanted = seen['attributes']
  assert seen['weights'] is None
  assert metrics['training'] == {'data': 'unplanted'}
  table = bias_lib.contingency_table(unplanted[:, color], unplanted[:, shape], 4, 3)
  assert bias_lib.independence_p_value(table) > 1e-3
  assert bias_lib.dependent_pairs(unplanted, cards) == []
  assert 'rare_combinations' not in metrics
