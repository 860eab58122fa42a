"""TAD and DCI on codes whose answer is known."""

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from patronus_jax.evaluate import disentanglement as dis


def _balanced_pair(repeats=25):
  """Two independent binary attributes, every combination equally often (exact 0 MI)."""
  combos = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
  return np.tile(combos, (repeats, 1))


def test_tad_exact_values():
  y = _balanced_pair()
  # Perfect: dim j is attribute j. AUROC 1 on its own dim, exactly 0.5 on the other: gap 0.5 each.
  details = dis.tad_details(y.astype(float), y)
  np.testing.assert_allclose(details['aurocs'], [[1.0, 0.5], [0.5, 1.0]])
  assert details['tad'] == pytest.approx(1.0) and details['num_captured'] == 2
  # The sign does not matter.
  assert dis.tad_details(-y.astype(float), y)['tad'] == pytest.approx(1.0)
  # Rotated by 45 degrees: each attribute is seen equally (AUROC 0.875) by both dims: gap 0.
  rotated = np.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], 1) / np.sqrt(2)
  details = dis.tad_details(rotated, y)
  np.testing.assert_allclose(details['aurocs'], 0.875)
  assert details['tad'] == pytest.approx(0.0) and details['num_captured'] == 2


def test_tad_entropy_filter_drops_redundant_attributes():
  y = _balanced_pair()
  y3 = np.concatenate([y, y[:, :1]], 1)  # attribute 2 duplicates attribute 0: shares all its entropy
  details = dis.tad_details(y.astype(float), y3)
  np.testing.assert_allclose(details['entropy_share'], [1.0, 0.0, 1.0], atol=1e-12)
  assert list(details['counted']) == [False, True, False]
  assert details['tad'] == pytest.approx(0.5) and details['num_captured'] == 1
  # Below the AUROC threshold nothing counts.
  weak = dis.tad_details(y.astype(float), y, auroc_threshold=1.01)
  assert weak['num_captured'] == 0 and weak['tad'] == 0.0


def test_mutual_information_matrix_matches_sklearn():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, (300, 3))
  y[:, 2] = np.where(rng.uniform(size=300) < 0.8, y[:, 0], 1 - y[:, 0])
  mi = dis.mutual_information_matrix(y)
  for i in range(3):
    for j in range(3):
      assert mi[i, j] == pytest.approx(mutual_info_score(y[:, i], y[:, j]), abs=1e-12)


def test_tad_disentangled_beats_mixed_over_folds():
  rng = np.random.default_rng(1)
  n, k = 1000, 4
  y = rng.integers(0, 2, (n, k))
  latent = y + 0.3 * rng.normal(size=(n, k))
  noise = rng.normal(size=(n, 6))
  q, _ = np.linalg.qr(rng.normal(size=(k, k)))
  good = dis.tad_score(np.concatenate([latent, noise], 1), y, folds=5)
  mixed = dis.tad_score(np.concatenate([latent @ q, noise], 1), y, folds=5)
  assert good['num_captured'] == 4 and good['tad'] > 1.7  # ~4 x (0.99 - 0.55)
  assert mixed['tad'] < good['tad'] - 0.8
  assert len(good['tad_folds']) == 5 and good['folds'] == 5
  assert good['best_dim'] == {f'attribute_{a}': a for a in range(k)}
  with pytest.raises(ValueError, match='binary attributes'):
    dis.tad_score(latent, rng.integers(0, 3, (n, 1)))


def test_dci_from_importance_known_matrices():
  identity = dis.dci_from_importance(np.eye(3))
  assert identity['disentanglement'] == pytest.approx(1.0, abs=1e-6)
  assert identity['completeness'] == pytest.approx(1.0, abs=1e-6)
  uniform = dis.dci_from_importance(np.ones((3, 3)))
  assert uniform['disentanglement'] == pytest.approx(0.0, abs=1e-6)
  assert uniform['completeness'] == pytest.approx(0.0, abs=1e-6)
  # Unused codes (zero rows) weigh nothing in disentanglement.
  padded = dis.dci_from_importance(np.concatenate([np.eye(2), np.zeros((2, 2))]))
  assert padded['disentanglement'] == pytest.approx(1.0, abs=1e-6)
  # One factor spread evenly over 2 of 4 codes: completeness 1 - log 2 / log 4 = 0.5.
  spread = dis.dci_from_importance(np.array([[1.0], [1.0], [0.0], [0.0]]))
  assert spread['completeness'] == pytest.approx(0.5, abs=1e-6)


def test_dci_disentangled_beats_mixed():
  rng = np.random.default_rng(2)
  n = 600
  factors = np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)], 1)
  codes = factors + 0.1 * rng.normal(size=(n, 3))
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  kw = dict(num_estimators=20, seed=0)
  good = dis.dci_score(np.concatenate([codes, rng.normal(size=(n, 2))], 1), factors, **kw)
  mixed = dis.dci_score(np.concatenate([codes @ q, rng.normal(size=(n, 2))], 1), factors, **kw)
  assert good['disentanglement'] > 0.9 and good['completeness'] > 0.9
  assert good['informativeness'] > 0.95
  assert mixed['disentanglement'] < good['disentanglement'] - 0.25
  assert mixed['completeness'] < good['completeness'] - 0.25
  assert np.array(good['importance']).shape == (5, 3) and good['num_test'] == 120


def test_dci_continuous_factor_and_constant_factor():
  rng = np.random.default_rng(3)
  n = 300
  size = rng.uniform(0, 1, n)
  codes = np.stack([size, rng.normal(size=n)], 1)
  factors = np.stack([size, np.zeros(n)], 1)
  result = dis.dci_score(codes, factors, continuous=[True, False], num_estimators=20,
                         factor_names=['size', 'constant'])
  assert result['skipped_factors'] == ['constant']
  assert result['informativeness_per_factor']['size'] > 0.9  # R^2
  assert result['completeness'] > 0.9
