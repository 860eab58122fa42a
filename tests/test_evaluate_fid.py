"""Fréchet distance against closed forms, and the cache of real-data statistics."""

import os

import numpy as np
import pytest
import scipy.linalg

from patronus_jax.evaluate import fid


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_equal_gaussians_have_zero_distance():
  rng = np.random.default_rng(0)
  mu, sigma = rng.normal(size=16), _random_spd(rng, 16)
  assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_mean_shift_is_squared_norm():
  rng = np.random.default_rng(1)
  mu, sigma = rng.normal(size=8), _random_spd(rng, 8)
  shift = np.array([3.0, -1.0, 0.5, 0, 0, 2.0, 0, 0])
  assert fid.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)


def test_diagonal_covariances_closed_form():
  a = np.array([1.0, 4.0, 9.0, 0.25])
  b = np.array([4.0, 1.0, 9.0, 1.0])
  mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, 0.0, -2.0])
  expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_closed_form():
  # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr((S1 S2)^1/2) = sum sqrt(a b).
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-8)


def test_general_case_matches_definition():
  rng = np.random.default_rng(3)
  s1, s2 = _random_spd(rng, 10), _random_spd(rng, 10, 2.0)
  mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
  # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric form.
  r1 = scipy.linalg.sqrtm(s1).real
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real))
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_singular_covariances_use_eps_offset():
  # Fewer samples than dimensions: rank-deficient covariances, as with small sample sets.
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(5, 12)), rng.normal(size=(5, 12)) + 1.0
  d = fid.frechet_distance_from_features(x, y)
  assert np.isfinite(d) and d > 0
  zero = np.zeros((3, 3))
  assert fid.frechet_distance(np.zeros(3), zero, np.ones(3), zero) == pytest.approx(3.0, abs=1e-5)


def test_feature_statistics_and_bad_shapes():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(50, 4)).astype(np.float32)
  stats = fid.feature_statistics(x)
  np.testing.assert_allclose(stats['mu'], x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats['sigma'], np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  assert stats['n'] == 50 and stats['sigma'].dtype == np.float64
  with pytest.raises(ValueError, match='different shapes'):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='N >= 2'):
    fid.feature_statistics(np.zeros((1, 3)))


def test_statistics_cache_is_keyed(tmp_path):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(40, 3))
  calls = []

  def compute():
    calls.append(1)
    return x

  key = fid.statistics_key(network='inception_pool3-abc', dataset='celeb_a', split='train',
                           image_size=64, num_examples=40)
  stats, cached = fid.cached_statistics(str(tmp_path), key, compute)
  assert not cached and len(calls) == 1
  stats2, cached2 = fid.cached_statistics(str(tmp_path), key, compute)
  assert cached2 and len(calls) == 1
  np.testing.assert_array_equal(stats['sigma'], stats2['sigma'])
  assert stats2['n'] == 40
  # Any change of dataset, size, count or network is a different file: recomputed.
  for change in (dict(dataset='cifar10'), dict(image_size=32), dict(num_examples=41),
                 dict(network='classifier-xyz'), dict(split='test')):
    other = dict(key, **change)
    assert fid.statistics_path(str(tmp_path), other) != fid.statistics_path(str(tmp_path), key)
    _, cached = fid.cached_statistics(str(tmp_path), other, compute)
    assert not cached
  assert len(calls) == 6
  # A file under the right name but another key inside is not trusted.
  path = fid.statistics_path(str(tmp_path), key)
  fid.save_statistics(path, stats, dict(key, dataset='other'))
  assert fid.load_statistics(path, key) is None
  assert os.path.basename(path).startswith('stats_inception_pool3-abc_celeb_a_64_')


def test_distance_to_cached_statistics():
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])
  ref = fid.feature_statistics(b)
  assert fid.frechet_distance_to_statistics(a, ref) == pytest.approx(
      fid.frechet_distance_from_features(a, b))
  assert fid.frechet_distance_to_statistics(a, ref) == pytest.approx(4.0, abs=0.2)


def test_network_fingerprint_depends_on_values():
  p = {'a': np.ones((2, 2), np.float32), 'b': np.zeros(3, np.float32)}
  q = {'a': np.ones((2, 2), np.float32), 'b': np.array([0, 0, 1e-6], np.float32)}
  assert fid.network_fingerprint(p) == fid.network_fingerprint(dict(p))
  assert fid.network_fingerprint(p) != fid.network_fingerprint(q)
