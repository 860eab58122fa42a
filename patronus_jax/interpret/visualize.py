"""Prototype visualisation (paper Sec. 3.3) and consistency.

For prototype j:
  1. the plausible maximum of s over held-out images (official: the maximum over a batch of
     held-out s, all prototypes together; `scope='prototype'` takes prototype j's own);
  2. real held-out images x0 are DDIM-inverted to x_T under their own s;
  3. each is regenerated from the same x_T with s_j set to that maximum (all other s_k kept);
  4. the regenerations are encoded again; the one with the highest new s_j is the prototype's
     picture, and its argmin position, mapped through the encoder's receptive field, gives
     the box around the patch that shows what p_j depicts.
The same regenerations over several images form the consistency grid. Unedited regenerations
from the same x_T are the baseline that the new s_j is compared with.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from patronus_jax.models import prototypes as proto_lib


def plausible_maximum(s_eval: np.ndarray, scope: str = 'global', quantile: float = 1.0) -> np.ndarray:
  """(P,) target activations: a quantile of held-out s, over all prototypes or per prototype."""
  s_eval = np.asarray(s_eval, np.float64)
  if scope == 'global':
    return np.full(s_eval.shape[1], np.quantile(s_eval, quantile), np.float32)
  if scope == 'prototype':
    return np.quantile(s_eval, quantile, axis=0).astype(np.float32)
  raise ValueError(f"unknown scope {scope!r}; expected 'global' or 'prototype'")


def box_of(rf: proto_lib.ReceptiveField, flat_index: int, image_size: int) -> list[int]:
  """[y0, y1, x0, x1] (end-exclusive) image box of a prototype's argmin position."""
  return [int(v) for v in proto_lib.argmin_box(rf, int(flat_index), image_size)]


def run(engine, images: np.ndarray, s: np.ndarray, prototypes: Sequence[int], targets: np.ndarray,
        rf: proto_lib.ReceptiveField, x_T: np.ndarray | None = None) -> dict:
  """Regenerates every image with each prototype raised; returns arrays and the numbers.

  Args:
    engine: a `core.Engine`.
    images: (M, H, W, C) held-out images; s: their (M, P) activations.
    prototypes: the J prototypes to visualise.
    targets: (P,) the value each prototype is raised to.
    rf: the prototype layer's receptive field.
    x_T: their inversions (computed when None).

  Returns a dict with 'x_T', 'recon' (unedited regenerations, M), 'edited' images (J, M),
  's_edited' (J, M) new s_j, 's_recon' (M, P), 'boxes' (J, M, 4), 'best' (J,) image index,
  and 'report' (JSON-ready numbers per prototype).
  """
  images = np.asarray(images, np.float32)
  s = np.asarray(s, np.float32)
  m, p = s.shape
  size = images.shape[1]
  if x_T is None:
    x_T = engine.invert(s, images, what='inverting held-out images')
  edits = np.broadcast_to(s, (len(prototypes), m, p)).copy()
  for a, j in enumerate(prototypes):
    edits[a, :, j] = targets[j]
  rows_s = np.concatenate([s, edits.reshape(-1, p)])
  rows_x = np.concatenate([x_T] * (1 + len(prototypes)))
  out = engine.generate(rows_s, rows_x, what='regenerating with raised prototypes')
  recon_images, recon_s = out['images'][:m], out['s'][:m]
  gen = out['images'][m:].reshape((len(prototypes), m) + images.shape[1:])
  gen_s = out['s'][m:].reshape(len(prototypes), m, p)
  gen_arg = out['argmin'][m:].reshape(len(prototypes), m, p)
  s_new = np.stack([gen_s[a, :, j] for a, j in enumerate(prototypes)])  # (J, M)
  boxes = np.array([[box_of(rf, gen_arg[a, i, j], size) for i in range(m)]
                    for a, j in enumerate(prototypes)], np.int32).reshape(len(prototypes), m, 4)
  best = np.argmax(s_new, axis=1)
  report = []
  for a, j in enumerate(prototypes):
    b = int(best[a])
    gain = s_new[a] - recon_s[:, j]
    report.append({
        'prototype': int(j), 'target': float(targets[j]), 'best_image': b,
        'best_box': boxes[a, b].tolist(), 'best_position': divmod(int(gen_arg[a, b, j]), rf.n),
        's_original': float(s[b, j]), 's_regenerated': float(s_new[a, b]),
        'mean_s_original': float(s[:, j].mean()), 'mean_s_reconstruction': float(recon_s[:, j].mean()),
        'mean_s_raised': float(s_new[a].mean()), 'mean_gain': float(gain.mean()),
        'fraction_raised': float(np.mean(gain > 0)),
    })
  return {'x_T': x_T, 'recon': recon_images, 's_recon': recon_s, 'edited': gen, 's_edited': s_new,
          'boxes': boxes, 'best': best, 'report': report}


def crop(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
  y0, y1, x0, x1 = box
  return image[y0:y1, x0:x1]
