"""Attribute probes: AUROC equals sklearn's; informative codes score ~1, noise ~0.5."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from patronus_jax.evaluate import probes


def _toy(n=600, num_attrs=3, noise_dims=5, seed=0, strength=1.0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, (n, num_attrs))
  informative = strength * y + 0.5 * rng.normal(size=(n, num_attrs))
  return np.concatenate([informative, rng.normal(size=(n, noise_dims))], 1), y, rng


def test_auroc_matrix_equals_sklearn_with_ties():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=(200, 4)), 1)  # many ties
  labels = rng.integers(0, 2, (200, 3))
  labels[:, 2] = labels[:, 2] * 2 - 1  # {-1, 1} labels: positive = 1
  got = probes.auroc_matrix(scores, labels)
  for a in range(3):
    for d in range(4):
      assert got[a, d] == pytest.approx(roc_auc_score(labels[:, a] > 0, scores[:, d]), abs=1e-12)
  assert np.isnan(probes.auroc_matrix(scores[:, 0], np.ones(200))[0, 0])


def test_probe_equals_sklearn_cross_validation():
  codes, y, _ = _toy(n=300, strength=0.6)
  result = probes.attribute_probe(codes, y, folds=5, seed=3)
  # The same protocol written directly with sklearn (InfoDiffusion's eval_disentanglement.py).
  per_fold = []
  for train, test in KFold(5, shuffle=True, random_state=3).split(codes):
    scaler = StandardScaler().fit(codes[train])
    aucs = []
    for a in range(y.shape[1]):
      model = LogisticRegression(max_iter=1000).fit(scaler.transform(codes[train]), y[train, a])
      aucs.append(roc_auc_score(y[test, a], model.predict_proba(scaler.transform(codes[test]))[:, 1]))
    per_fold.append(aucs)
  expected = np.mean(per_fold, axis=0)
  for a in range(y.shape[1]):
    assert result['auroc'][f'attribute_{a}'] == pytest.approx(expected[a], abs=1e-9)
  assert result['mean_auroc'] == pytest.approx(expected.mean(), abs=1e-9)
  assert result['folds'] == 5 and result['num_examples'] == 300


def test_informative_code_near_one_noise_near_half():
  codes, y, rng = _toy(n=800, strength=3.0)
  good = probes.attribute_probe(codes, y)
  assert good['mean_auroc'] > 0.99
  noise = probes.attribute_probe(rng.normal(size=(800, 8)), y)
  assert abs(noise['mean_auroc'] - 0.5) < 0.06
  assert good['binary_attributes'] == ['attribute_0', 'attribute_1', 'attribute_2']
  assert np.isnan(good['mean_accuracy'])  # no categorical attribute


def test_categorical_attributes_report_accuracy_and_macro_auroc():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, (800, 1))
  codes = np.eye(4)[labels[:, 0]] * 3 + rng.normal(size=(800, 4))
  noise = rng.normal(size=(800, 4))
  good = probes.attribute_probe(codes, labels, attribute_names=['shape'])
  bad = probes.attribute_probe(noise, labels, attribute_names=['shape'])
  assert good['categorical_attributes'] == ['shape'] and good['binary_attributes'] == []
  assert good['mean_accuracy'] > 0.9 and good['auroc']['shape'] > 0.97
  assert bad['mean_accuracy'] < 0.35 and abs(bad['auroc']['shape'] - 0.5) < 0.06
  assert np.isnan(good['mean_auroc']) and good['mean_auroc_all'] == good['auroc']['shape']


def test_max_examples_constant_attributes_and_errors():
  codes, y, _ = _toy(n=200)
  y = np.concatenate([y, np.zeros((200, 1), int)], 1)
  result = probes.attribute_probe(codes, y, max_examples=100, folds=2)
  assert result['num_examples'] == 100
  assert result['constant_attributes'] == ['attribute_3']
  assert np.isfinite(result['mean_auroc'])
  with pytest.raises(ValueError, match='codes have 200 examples, attributes 10'):
    probes.attribute_probe(codes, y[:10])
  with pytest.raises(ValueError, match='folds=1'):
    probes.attribute_probe(codes, y, folds=1)
