"""Fréchet distance between Gaussians fitted to features, and cached real-data statistics.

FID (Heusel et al., 2017, "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium") is the Fréchet distance between Gaussians N(mu1, S1), N(mu2, S2) fitted to
InceptionV3 pool3 features of real and generated images:

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

The computation follows pytorch-fid / the TF reference: float64, scipy's matrix square root,
an eps * I offset on both covariances when the product is singular (the root is not finite),
and the real part of the root when its imaginary part is numerical noise. The same distance on
the features of the project's attribute classifier is reported as `fd_classifier`, never as FID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from typing import Any, Callable

import numpy as np
import scipy.linalg

from patronus_jax.core import files as pio
import jax

STATS_VERSION = 1


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it.

  Raises ValueError when the shapes differ, or when the matrix square root has a non-negligible
  imaginary part on its diagonal (more than 1e-3), which signals a broken covariance.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f'mean vectors have different shapes: {mu1.shape} and {mu2.shape}')
  if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f'covariances must both be {(mu1.shape[0],) * 2}, '
                     f'got {sigma1.shape} and {sigma2.shape}')
  diff = mu1 - mu2
  covmean = _sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    # Singular product: offset both covariances (pytorch-fid's fallback, eps = 1e-6).
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'matrix square root has an imaginary component of size '
                       f'{np.max(np.abs(covmean.imag)):.3g}: the covariances are not valid')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    # A singular matrix warns and returns a root with inf/nan, which the caller handles.
    warnings.simplefilter('ignore')
    return scipy.linalg.sqrtm(matrix)


def feature_statistics(features: np.ndarray) -> dict[str, Any]:
  """Mean, covariance (unbiased, rows are examples) and count of (N, D) features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'features must be (N >= 2, D), got shape {features.shape}')
  return dict(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), n=features.shape[0])


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
  s1, s2 = feature_statistics(features1), feature_statistics(features2)
  return frechet_distance(s1['mu'], s1['sigma'], s2['mu'], s2['sigma'])


def frechet_distance_to_statistics(features: np.ndarray, reference: dict[str, Any]) -> float:
  """Fréchet distance between (N, D) features and reference statistics (e.g. cached real ones)."""
  stats = feature_statistics(features)
  return frechet_distance(stats['mu'], stats['sigma'], reference['mu'], reference['sigma'])


def statistics_key(*, network: str, dataset: str, split: str, image_size: int, num_examples: int,
                   **extra: Any) -> dict[str, Any]:
  """The identity of a set of real-data statistics: feature network, data, size, count (+ extra).

  `network` names the feature network and its weights, e.g. f'inception_pool3-{fingerprint}'
  or f'classifier-{fingerprint}' (see `network_fingerprint`); `extra` may add e.g. quantize.
  """
  return dict(network=str(network), dataset=str(dataset), split=str(split),
              image_size=int(image_size), num_examples=int(num_examples), **extra)


def network_fingerprint(params: Any) -> str:
  """A short hash of a parameter pytree: which feature network produced some statistics."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str((leaf.shape, leaf.dtype.str)).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def statistics_path(directory: str, key: dict[str, Any]) -> str:
  """The cache file of the statistics identified by `key` (dataset, split, size, network, ...).

  The file name carries a readable prefix and a hash of the whole key, so statistics of a
  different dataset, split, image size, example count or feature network are never reused.
  """
  canonical = json.dumps(dict(key, version=STATS_VERSION), sort_keys=True, default=str)
  digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
  readable = '_'.join(str(key[k]) for k in ('network', 'dataset', 'image_size') if k in key)
  readable = re.sub(r'[^A-Za-z0-9._-]+', '-', readable)[:80] or 'stats'
  return os.path.join(directory, f'stats_{readable}_{digest}.npz')


def save_statistics(path: str, stats: dict[str, Any], key: dict[str, Any]) -> None:
  """Writes mu, sigma, n and the key (JSON) to an .npz, atomically."""
  with pio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, mu=stats['mu'], sigma=stats['sigma'], n=np.int64(stats['n']),
               key=np.array(json.dumps(dict(key, version=STATS_VERSION), sort_keys=True, default=str)))


def load_statistics(path: str, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
  """Reads statistics written by `save_statistics`; None if absent or saved under another key."""
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    if key is not None:
      expected = json.dumps(dict(key, version=STATS_VERSION), sort_keys=True, default=str)
      if 'key' not in data or str(data['key']) != expected:
        return None
    return dict(mu=data['mu'], sigma=data['sigma'], n=int(data['n']))


def cached_statistics(directory: str, key: dict[str, Any],
                      compute_features: Callable[[], np.ndarray]) -> tuple[dict[str, Any], bool]:
  """Statistics of the real data: read from `directory` if cached under `key`, else computed.

  `compute_features()` returns the (N, D) features of the real images; it runs only on a cache
  miss. Returns (stats, was_cached).
  """
  path = statistics_path(directory, key)
  stats = load_statistics(path, key)
  if stats is not None:
    return stats, True
  stats = feature_statistics(compute_features())
  save_statistics(path, stats, key)
  return stats, False
