"""The numbers behind the figures: observed ranges, emergence steps, associations, intervals.

Pure NumPy, no model: every function here is tested on arrays with known answers.

Conventions.
  * A trajectory has K entries in sampling order: index 0 is the noisiest step (t near T),
    index K-1 the last (t = 0, the final image). An *emergence step* is an index in 0..K-1:
    the first k from which the value stays within the tolerance of its final value until the
    end. The final entry is always within, so the step exists; a value that never moves
    emerges at 0; larger tolerances never give later steps.
  * Confidence intervals are two-sided at level `level` (0.95: the 2.5% and 97.5% points).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats


def observed_range(s: np.ndarray, low_quantile: float, high_quantile: float) -> dict:
  """Per-prototype quantiles of held-out activations s (N, P): low, high, spread, mean, std, min, max."""
  s = np.asarray(s, np.float64)
  low = np.quantile(s, low_quantile, axis=0)
  high = np.quantile(s, high_quantile, axis=0)
  return {'low': low, 'high': high, 'spread': np.maximum(high - low, 1e-6), 'mean': s.mean(0),
          'std': s.std(0), 'min': s.min(0), 'max': s.max(0)}


def first_stable_index(within: np.ndarray, axis: int = -1) -> np.ndarray:
  """First index from which `within` (boolean) is True until the end along `axis`.

  Returns the length of the axis when the last entry is False (never stable).
  """
  within = np.moveaxis(np.asarray(within, bool), axis, -1)
  k = within.shape[-1]
  trailing = np.cumprod(within[..., ::-1], axis=-1).sum(-1)
  return (k - trailing).astype(np.int64)


def emergence_steps(trajectory: np.ndarray, tolerance) -> np.ndarray:
  """Emergence step of each series: trajectory (..., K, P) -> (..., P) ints in 0..K-1.

  `tolerance` broadcasts against (P,) (absolute units of the series).
  """
  trajectory = np.asarray(trajectory, np.float64)
  final = trajectory[..., -1:, :]
  within = np.abs(trajectory - final) <= np.asarray(tolerance, np.float64)
  return first_stable_index(within, axis=-2)


def settling_steps(probs_trajectory: np.ndarray) -> np.ndarray:
  """First step from which the predicted class equals the final one: (..., K, V) -> (...)."""
  pred = np.argmax(np.asarray(probs_trajectory), axis=-1)
  return first_stable_index(pred == pred[..., -1:], axis=-1)


def kappa_curve(pred: np.ndarray, final: np.ndarray, num_classes: int) -> np.ndarray:
  """Cohen's kappa between the class predicted at each step and the final class: (N, K) -> (K,).

  Chance-corrected agreement: a step whose predictions are all one default class has kappa 0
  even when most final images happen to be of that class. The final step has kappa 1.
  """
  pred = np.asarray(pred, np.int64)
  final = np.asarray(final, np.int64)
  agree = (pred == final[:, None]).mean(0)
  p_pred = np.stack([(pred == v).mean(0) for v in range(num_classes)], -1)  # (K, V)
  p_final = np.bincount(final, minlength=num_classes) / len(final)  # (V,)
  expected = p_pred @ p_final
  denom = 1.0 - expected
  return np.where(denom > 1e-12, (agree - expected) / np.where(denom > 1e-12, denom, 1.0),
                  np.where(agree >= 1.0, 1.0, 0.0))


def unsettled_fraction(kappa: np.ndarray) -> float:
  """Mean of 1 - kappa over all steps but the last: a step function that jumps from 0 to 1 at
  step m gives m / (K - 1), the same as a per-sample settling fraction."""
  kappa = np.asarray(kappa, np.float64)
  return float(np.mean(1.0 - np.clip(kappa[:-1], 0.0, 1.0))) if len(kappa) > 1 else 0.0


def summarize(values: np.ndarray, level: float = 0.95, num_bootstrap: int = 1000,
              seed: int = 0) -> dict:
  """Mean, std, median, quartiles and a bootstrap CI of the mean of a 1-D sample."""
  values = np.asarray(values, np.float64).ravel()
  lo, hi = bootstrap_ci(values[:, None], level, num_bootstrap, seed)[0]
  return {'mean': float(values.mean()), 'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'median': float(np.median(values)), 'q25': float(np.quantile(values, 0.25)),
          'q75': float(np.quantile(values, 0.75)), 'ci_low': float(lo), 'ci_high': float(hi),
          'n': int(len(values))}


def bootstrap_ci(samples: np.ndarray, level: float = 0.95, num_bootstrap: int = 1000,
                 seed: int = 0, statistic=None) -> np.ndarray:
  """Percentile bootstrap CI of `statistic` (default: the mean over axis 0) of paired samples.

  samples: (N, ...) rows resampled together. Returns (..., 2) [low, high].
  """
  samples = np.asarray(samples, np.float64)
  n = samples.shape[0]
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(num_bootstrap, n))
  if statistic is None:
    # Mean of resampled rows as a count-weighted average: memory O(B * N) not O(B * N * D).
    counts = np.zeros((num_bootstrap, n))
    np.add.at(counts, (np.repeat(np.arange(num_bootstrap), n), idx.ravel()), 1.0)
    flat = samples.reshape(n, -1)
    boot = (counts @ flat / n).reshape((num_bootstrap,) + samples.shape[1:])
  else:
    boot = np.stack([statistic(samples[i]) for i in idx])
  alpha = (1.0 - level) / 2.0
  return np.stack([np.quantile(boot, alpha, axis=0), np.quantile(boot, 1.0 - alpha, axis=0)], -1)


def normal_ci(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, standard error, half-width) of the mean over axis 0, normal approximation."""
  samples = np.asarray(samples, np.float64)
  n = samples.shape[0]
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
  return mean, se, normal_quantile(level) * se


def normal_quantile(level: float) -> float:
  """z such that P(|Z| <= z) = level."""
  return float(scipy_stats.norm.ppf(0.5 + level / 2.0))


def correlation_ratio(values: np.ndarray, labels: np.ndarray, num_classes: Optional[int] = None) -> np.ndarray:
  """eta^2 of each column of values (N, P) explained by a categorical label (N,): in [0, 1].

  The share of the variance of s_j that lies between the label's groups (for a binary label it
  is the squared point-biserial correlation).
  """
  values = np.asarray(values, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  k = int(num_classes or labels.max() + 1)
  total = values.var(0) * values.shape[0]
  mean = values.mean(0)
  between = np.zeros(values.shape[1])
  for c in range(k):
    mask = labels == c
    if mask.any():
      between += mask.sum() * (values[mask].mean(0) - mean) ** 2
  return np.where(total > 0, between / np.maximum(total, 1e-300), 0.0)


def association_matrix(s: np.ndarray, attributes: np.ndarray, cardinalities: Sequence[int]) -> np.ndarray:
  """eta^2 of every prototype with every attribute: (A, P)."""
  return np.stack([correlation_ratio(s, attributes[:, a], k) for a, k in enumerate(cardinalities)])
