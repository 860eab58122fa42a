"""Are the prototypes' activations a semantic latent space? (paper Sec. 4.2)

  reconstruction:  s of a real image + its DDIM-inverted x_T  -> (almost) the image again;
  variation:       the same s with new x_T ~ N(0, I)          -> the same semantics, new details;
  extrapolation:   s_j = low_j + alpha * spread_j, alpha beyond [0, 1] -> beyond observed values;
  interpolation:   s linear and x_T spherical between two real images;
  manipulation:    s_j += amount * spread_j for chosen prototypes and amounts.
Every output is regenerated and re-encoded, so the report says how faithfully the images
carry the s they were generated from (correlation of requested and re-encoded s).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from patronus_jax.interpret import core


def _corr(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
  if a.std() == 0 or b.std() == 0:
    return 0.0
  return float(np.corrcoef(a, b)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
  rx = np.argsort(np.argsort(x))
  ry = np.argsort(np.argsort(y))
  return _corr(rx, ry)


def reconstruction(engine, images, s, x_T, num_variations: int, key_seed: int) -> dict:
  """Inverted reconstructions and `num_variations` regenerations from new noise per image."""
  r = images.shape[0]
  rng = np.random.default_rng(key_seed)
  noise = rng.standard_normal((r * num_variations,) + images.shape[1:]).astype(np.float32)
  rows_s = np.concatenate([s, np.repeat(s, num_variations, 0)])
  rows_x = np.concatenate([x_T, noise])
  out = engine.generate(rows_s, rows_x, what='reconstruction and variations')
  recon, var = out['images'][:r], out['images'][r:].reshape((r, num_variations) + images.shape[1:])
  s_recon, s_var = out['s'][:r], out['s'][r:].reshape(r, num_variations, -1)
  report = {
      'inversion_mse': float(np.mean((recon - images) ** 2)),
      'inversion_psnr': float(10 * np.log10(4.0 / max(np.mean((recon - images) ** 2), 1e-12))),
      's_correlation_reconstruction': _corr(s, s_recon),
      's_correlation_variations': _corr(np.repeat(s[:, None], num_variations, 1), s_var),
      'variation_pixel_std': float(var.std(1).mean()),
  }
  return {'recon': recon, 'variations': var, 'report': report}


def extrapolation(engine, image_s, x_T, prototypes: Sequence[int], low, spread, alphas) -> dict:
  """One image; rows = prototypes, columns = s_j = low_j + alpha * spread_j."""
  p = image_s.shape[-1]
  rows = []
  for j in prototypes:
    for alpha in alphas:
      row = np.array(image_s, np.float32).copy()
      row[j] = low[j] + alpha * spread[j]
      rows.append(row)
  rows = np.stack(rows)
  out = engine.generate(rows, np.repeat(x_T[None], len(rows), 0), what='extrapolation')
  shape = (len(prototypes), len(alphas))
  images = out['images'].reshape(shape + out['images'].shape[1:])
  s_out = out['s'].reshape(shape + (p,))
  report = []
  for a, j in enumerate(prototypes):
    requested = low[j] + np.asarray(alphas) * spread[j]
    got = s_out[a, :, j]
    report.append({'prototype': int(j), 'alphas': list(map(float, alphas)), 'requested': requested.tolist(),
                   're_encoded': got.tolist(), 'spearman': _spearman(np.asarray(alphas), got)})
  return {'images': images, 'report': report}


def manipulation(engine, s, x_T, prototypes: Sequence[int], spread, amounts) -> dict:
  """Images x prototypes x amounts: s_j += amount * spread_j from each image's inverted x_T."""
  r, p = s.shape
  rows = np.broadcast_to(s, (len(prototypes), len(amounts), r, p)).copy()
  for a, j in enumerate(prototypes):
    for b, amount in enumerate(amounts):
      rows[a, b, :, j] = s[:, j] + amount * spread[j]
  out = engine.generate(rows.reshape(-1, p), np.tile(x_T, (len(prototypes) * len(amounts), 1, 1, 1)),
                        what='manipulation')
  shape = (len(prototypes), len(amounts), r)
  images = out['images'].reshape(shape + out['images'].shape[1:])
  s_out = out['s'].reshape(shape + (p,))
  report = []
  for a, j in enumerate(prototypes):
    requested = rows[a, :, :, j]
    got = s_out[a, :, :, j]
    report.append({'prototype': int(j), 'amounts': list(map(float, amounts)),
                   'mean_requested': requested.mean(1).tolist(), 'mean_re_encoded': got.mean(1).tolist(),
                   'spearman': _spearman(np.repeat(np.asarray(amounts), r), got.ravel())})
  return {'images': images, 'report': report}


def interpolation(engine, s_a, s_b, x_a, x_b, num_steps: int) -> dict:
  """Pairs (rows) x weights: s = (1 - w) s_a + w s_b, x_T = slerp(x_a, x_b, w)."""
  weights = np.linspace(0.0, 1.0, num_steps)
  rows_s = np.concatenate([(1 - w) * s_a + w * s_b for w in weights]).astype(np.float32)
  rows_x = np.concatenate([core.slerp(x_a, x_b, float(w)) for w in weights])
  out = engine.generate(rows_s, rows_x, what='interpolation')
  pairs = s_a.shape[0]
  images = out['images'].reshape((num_steps, pairs) + out['images'].shape[1:]).swapaxes(0, 1)
  s_out = out['s'].reshape(num_steps, pairs, -1).swapaxes(0, 1)
  requested = rows_s.reshape(num_steps, pairs, -1).swapaxes(0, 1)
  steps = np.sqrt(np.mean(np.diff(images, axis=1) ** 2, axis=(2, 3, 4)))  # (pairs, steps-1)
  report = {'weights': weights.tolist(), 's_correlation': _corr(requested, s_out),
            'pixel_rms_change_per_step': steps.mean(0).tolist()}
  return {'images': images, 'report': report}
