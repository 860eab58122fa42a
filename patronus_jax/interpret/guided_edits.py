"""Emergence-guided editing: invert an image only as far as the edited prototype is undecided.

Emergence (emergence.py) says at which step k_j of a K-step deterministic sampling trajectory
(0 = noisiest) prototype j's value is fixed in x0_hat. Changing s_j can only act on the steps
before that, so an edit need not start from x_T: invert the image for K - k_j + 1 calls, up to
the level of step k_j - 1 (where j is still open), set s_j there and regenerate the remaining
K - k_j + 1 steps. A prototype that emerges late (a texture, a shape) then costs a fraction of
the 2K calls of inverting to x_T and regenerating, and the image's earlier-fixed content (the
layout, colours) is kept by construction rather than by the accuracy of a full round trip.

`edit(...)` runs both, from the same image and s, and reports per prototype the calls and what
the attribute classifier sees: whether the attribute the prototype carries changed, and whether
the other attributes stayed.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from patronus_jax.core.diffusion import SamplerSpec


def _denoiser(model, variables, s):
  return lambda x, t: model.apply(variables, x, t, s, method=model.denoise)


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'calls'))
def invert_partly(model, variables, s, x0, spec: SamplerSpec, calls: int):
  """x0 inverted under s for the first `calls` steps (least noisy first; calls = K: to x_T)."""
  return spec.invert(_denoiser(model, variables, s), x0, stop=calls)


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'calls'))
def regenerate_from(model, variables, s, x_mid, spec: SamplerSpec, calls: int):
  """The last `calls` steps of the sampler from x_mid (the output of `invert_partly(calls)`)."""
  images = spec.run(_denoiser(model, variables, s), x_mid, start=spec.num_steps - calls)
  return jax.numpy.clip(images, -1.0, 1.0)


def start_step(emergence_step: float, margin: int = 1) -> int:
  """The sampling step to regenerate from: `margin` steps before the (median) emergence step."""
  return max(int(np.floor(emergence_step)) - margin, 0)


def edited_activations(s: np.ndarray, j: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
  """s with s_j moved to the far end of its observed range (high if below the middle, else low)."""
  out = np.array(s, np.float32, copy=True)
  mid = 0.5 * (low[j] + high[j])
  out[:, j] = np.where(s[:, j] < mid, high[j], low[j])
  return out


def attribute_changes(classify, base: np.ndarray, edited: np.ndarray, attribute: int) -> dict:
  """What the classifier sees of an edit: the target attribute's class changed (fraction of
  images), the other attributes' classes kept (mean fraction), and the target's total-variation
  shift of probability."""
  p_base, p_edit = classify(base), classify(edited)
  changed = [np.argmax(a, -1) != np.argmax(b, -1) for a, b in zip(p_base, p_edit)]
  others = [c for i, c in enumerate(changed) if i != attribute]
  return {'target_changed': float(np.mean(changed[attribute])),
          'others_kept': float(1.0 - np.mean(others)) if others else 1.0,
          'target_shift': float(0.5 * np.abs(p_base[attribute] - p_edit[attribute]).sum(-1).mean())}


def edit(model, variables, spec: SamplerSpec, classify, images: np.ndarray, s: np.ndarray, prototypes,
         emergence_steps: np.ndarray, attribute_of: dict, low: np.ndarray, high: np.ndarray,
         margin: int = 1) -> list[dict]:
  """Per prototype: the edit from x_T (full inversion) against the emergence-guided one.

  Args:
    classify: images -> tuple of per-attribute (N, V) class probabilities.
    emergence_steps: (P,) median emergence step of each prototype along `spec`'s trajectories.
    attribute_of: prototype -> index of the attribute it carries (the edit's intended change).
  Each edit is judged against its own unedited regeneration (same path, s unchanged), so both
  methods are paired comparisons; `fidelity_mse` is that regeneration's error to the image.
  """
  k = spec.num_steps
  x0 = jax.numpy.asarray(images)
  cache: dict = {}

  def paths(calls):
    if calls not in cache:
      mid = invert_partly(model, variables, s, x0, spec, calls)
      cache[calls] = (mid, np.asarray(regenerate_from(model, variables, s, mid, spec, calls)))
    return cache[calls]

  out = []
  for j in prototypes:
    s_edit = edited_activations(s, j, low, high)
    start = start_step(emergence_steps[j], margin)
    row = {'prototype': int(j), 'attribute': int(attribute_of[j]), 'emergence_step': float(emergence_steps[j]),
           'start_step': start}
    for name, calls in (('from_x_T', k), ('guided', k - start)):
      mid, base = paths(calls)
      edited = np.asarray(regenerate_from(model, variables, s_edit, mid, spec, calls))
      row[name] = dict(attribute_changes(classify, base, edited, attribute_of[j]), calls=2 * calls,
                       fidelity_mse=float(np.mean((base - images) ** 2)))
    row['calls_saved'] = row['from_x_T']['calls'] / row['guided']['calls']
    out.append(row)
  return out
