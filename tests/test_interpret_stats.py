"""interpret: emergence/settling step conventions, intervals, associations, slerp, maxima."""

import numpy as np
import pytest

from patronus_jax.interpret import core
from patronus_jax.interpret import emergence
from patronus_jax.interpret import stats
from patronus_jax.interpret import visualize


def test_emergence_step_conventions():
  k = 10
  # (1, K, 4): constant; jumps to final at the last step; settles at step 4; leaves and comes back.
  traj = np.zeros((1, k, 4))
  traj[0, :, 0] = 3.0
  traj[0, :-1, 1] = 5.0
  traj[0, :4, 2] = np.linspace(-2, -1, 4)
  traj[0, :, 3] = 1.0
  traj[0, 6, 3] = 0.0
  steps = stats.emergence_steps(traj, 0.1)
  np.testing.assert_array_equal(steps, [[0, k - 1, 4, 7]])
  assert steps.min() >= 0 and steps.max() <= k - 1


def test_emergence_steps_monotone_in_tolerance():
  rng = np.random.default_rng(0)
  traj = np.cumsum(rng.standard_normal((20, 15, 6)), axis=1)
  prev = None
  for tol in (0.01, 0.3, 1.0, 3.0, 100.0):
    steps = stats.emergence_steps(traj, tol)
    assert steps.shape == (20, 6) and steps.min() >= 0 and steps.max() <= 14
    if prev is not None:
      assert np.all(steps <= prev)
    prev = steps
  np.testing.assert_array_equal(prev, 0)  # a tolerance larger than any excursion: emerged at once


def test_settling_steps():
  probs = np.zeros((3, 5, 2))
  probs[0, :, 1] = 1  # always class 1
  probs[1, :, 0] = 1
  probs[1, 3:, :] = [0, 1]  # switches to class 1 at step 3
  probs[2, :, 1] = 1
  probs[2, 1, :] = [1, 0]  # leaves at step 1 only
  np.testing.assert_array_equal(stats.settling_steps(probs), [0, 3, 2])


def test_emergence_report_ranks_early_attribute_first():
  rng = np.random.default_rng(1)
  n, k = 40, 12
  probs_a = np.zeros((n, k, 3))
  probs_b = np.zeros((n, k, 2))
  settle_a = rng.integers(0, 3, n)  # settles early
  settle_b = rng.integers(7, 12, n)  # settles late
  for i in range(n):
    probs_a[i, :, 0] = 1
    probs_a[i, settle_a[i]:] = [0, 0, 1] if settle_a[i] else [1, 0, 0]
    probs_b[i, :, 0] = 1
    probs_b[i, settle_b[i]:] = [0, 1]
  s_traj = rng.standard_normal((n, k, 3)) * np.linspace(1, 0, k)[None, :, None]
  report = emergence.analyse(s_traj, np.ones(3), 0.1, np.arange(k)[::-1] * 10, probs_traj=[probs_a, probs_b],
                             names=['global', 'local'], values=[('x', 'y', 'z'), ('no', 'yes')],
                             association=np.array([[0.9, 0.0, 0.2], [0.0, 0.5, 0.05]]), num_bootstrap=200)
  assert report['attribute_ranking'] == ['global', 'local']
  np.testing.assert_allclose(report['attributes']['global']['step']['mean'], settle_a.mean())
  np.testing.assert_allclose(report['attributes']['local']['step']['mean'], settle_b.mean())
  pair = report['pairwise_settling_difference']['global - local']
  assert pair['ci'][1] < 0 and pair['raw_fraction_first_earlier'] == 1.0
  assert report['attributes']['global']['settling'] < report['attributes']['local']['settling']
  assert report['attributes']['local']['kappa_step'] >= 7
  assert report['by_prototype_association']['global']['carriers'] == [0, 2]
  assert report['by_prototype_association']['local']['carriers'] == [1]
  for e in report['prototypes']:
    assert 0 <= e['step']['mean'] <= k - 1 and 0 <= e['fraction']['mean'] <= 1
  assert np.asarray(report['curves']['normalized_mean']).shape == (3, k)
  np.testing.assert_allclose(np.asarray(report['curves']['normalized_mean'])[:, -1], 0)


def test_kappa_gives_a_default_prediction_no_credit():
  # 'plain' (0) is the final class of 80% of trajectories; the blurry first steps are all
  # called 'plain'; the striped ones become visible at step 3.
  n, k = 50, 5
  final = np.array([0] * 40 + [1] * 10)
  pred = np.zeros((n, k), int)
  pred[40:, 3:] = 1
  kappa = stats.kappa_curve(pred, final, 2)
  np.testing.assert_allclose(kappa, [0, 0, 0, 1, 1], atol=1e-12)
  assert stats.unsettled_fraction(kappa) == pytest.approx(3 / 4)
  # The raw per-trajectory settling step says 80% settled at step 0.
  probs = np.eye(2)[pred]
  assert np.mean(stats.settling_steps(probs) == 0) == 0.8
  # Half the trajectories right by chance at every step: kappa stays near 0 until the end.
  rng = np.random.default_rng(0)
  final = rng.integers(0, 3, 400)
  pred = rng.integers(0, 3, (400, 6))
  pred[:, -1] = final
  kappa = stats.kappa_curve(pred, final, 3)
  assert np.all(np.abs(kappa[:-1]) < 0.1) and kappa[-1] == 1.0
  # Every trajectory fixed from the start: kappa 1 throughout, settling 0.
  np.testing.assert_allclose(stats.kappa_curve(np.repeat(final[:, None], 6, 1), final, 3), 1.0)


def test_bootstrap_and_normal_intervals_cover_the_mean():
  rng = np.random.default_rng(2)
  x = rng.normal(0.3, 1.0, size=(400, 2))
  ci = stats.bootstrap_ci(x, 0.95, 500, seed=0)
  mean, se, half = stats.normal_ci(x, 0.95)
  for d in range(2):
    assert ci[d, 0] < mean[d] < ci[d, 1]
    # The percentile bootstrap of a mean is close to the normal interval.
    np.testing.assert_allclose(ci[d], [mean[d] - half[d], mean[d] + half[d]], atol=0.03)
  np.testing.assert_allclose(half, 1.959964 * se, rtol=1e-5)
  # A custom statistic gives the same as the default for the mean.
  ci2 = stats.bootstrap_ci(x[:, :1], 0.95, 200, seed=3, statistic=lambda r: r.mean(0))
  ci3 = stats.bootstrap_ci(x[:, :1], 0.95, 200, seed=3)
  np.testing.assert_allclose(ci2, ci3, atol=1e-12)


def test_correlation_ratio():
  labels = np.array([0, 0, 1, 1, 2, 2])
  exact = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])  # a function of the label
  unrelated = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
  eta = stats.correlation_ratio(np.stack([exact, unrelated, np.zeros(6)], 1), labels)
  np.testing.assert_allclose(eta, [1.0, 0.0, 0.0], atol=1e-12)
  # Binary label: eta^2 is the squared point-biserial (Pearson) correlation.
  rng = np.random.default_rng(0)
  b = rng.integers(0, 2, 200)
  v = b + rng.standard_normal(200)
  np.testing.assert_allclose(stats.correlation_ratio(v[:, None], b)[0], np.corrcoef(v, b)[0, 1] ** 2, rtol=1e-10)


def test_slerp_ends_and_norm():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, 3, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(core.slerp(a, b, 0.0), a, atol=1e-5)
  np.testing.assert_allclose(core.slerp(a, b, 1.0), b, atol=1e-5)
  mid = core.slerp(a, b, 0.5)
  # Nearly orthogonal Gaussian vectors: the spherical midpoint keeps the norm (a linear one shrinks it).
  na = np.linalg.norm(a.reshape(3, -1), axis=1)
  np.testing.assert_allclose(np.linalg.norm(mid.reshape(3, -1), axis=1), na, rtol=0.1)
  assert np.all(np.linalg.norm((0.5 * (a + b)).reshape(3, -1), axis=1) < 0.85 * na)


def test_plausible_maximum_and_observed_range():
  s = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 10.0]])
  np.testing.assert_allclose(visualize.plausible_maximum(s, 'global', 1.0), [10.0, 10.0])
  np.testing.assert_allclose(visualize.plausible_maximum(s, 'prototype', 1.0), [4.0, 10.0])
  np.testing.assert_allclose(visualize.plausible_maximum(s, 'prototype', 0.5), [2.0, 3.0])
  r = stats.observed_range(s, 0.0, 1.0)
  np.testing.assert_allclose(r['low'], [0, 1])
  np.testing.assert_allclose(r['spread'], [4, 9])
  with pytest.raises(ValueError, match='scope'):
    visualize.plausible_maximum(s, 'nope')
