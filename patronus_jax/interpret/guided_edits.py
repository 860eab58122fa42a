"""Emergence-guided editing: invert an image only as far as the edited attribute is still open.

An edit moves a prototype s_j and regenerates. Editing from x_T inverts the image all the way
(K calls of a K-step deterministic sampler) and regenerates (K calls). But once the sampling
trajectory has committed to an attribute, changing s no longer changes it; before that, x_t
does not yet fix it. So an edit of a late-committing attribute (a texture, a shape) can invert
only up to the level of step k and regenerate from there: 2 (K - k) calls, and the content that
was fixed earlier (layout, colours) is kept by construction rather than by the accuracy of a full
round trip.

Two readings of "where the attribute emerges" give k:
  x0_hat emergence   Patronus's: the first step from which the attribute classifier's label of
                     the predicted clean image x0_hat equals the final image's (`stats.settling_steps`).
                     Along a trajectory conditioned on s, x0_hat shows what s asks for from the
                     first steps on, so this reading can say "step 0" for everything.
  commitment         causal: sample trajectories with s, switch s to the edited s at step k and
                     finish; `switch_curve[k]` is the fraction of trajectories whose attribute
                     label then changes. The commitment step is the first step from which that
                     fraction stays below (1 - tolerance) of the switch at step 0: from there on,
                     x_t has fixed the attribute. Measured once per model and edit on sampled
                     trajectories (no held-out image), it costs sum_k (K - k) calls per trajectory.

`edit_from(...)` edits held-out images from a given start step and judges each edit against the
same path's unedited regeneration, so every start is a paired comparison.

Carrying the picture (`carry=True` in `edit_from` and `switch_curve`: `carry_picture`; for a model with
the decoder of s): at the start step
x_k = sqrt(abar) x0 + sqrt(1 - abar) eps already holds the old image's coarse layout, which a
switch of s from there on can no longer undo (the sketch consistency moves x0_hat's block means,
but eps_hat, re-derived from x_k, keeps the old ones). So the edit also moves x_k by
sqrt(abar_k) (picture(s_edit) - picture(s)), upsampled: x_k becomes the same noise on an image whose
block means moved as the decoder's picture of s moved. It costs no network call (the decoder runs
once per image), and without an edit (s_edit = s) it changes nothing.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax.core import diffusion
from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.interpret import stats
from patronus_jax.models import unet as unet_lib

Labels = Callable[[np.ndarray], np.ndarray]  # images -> (N, A) attribute labels
Judge = Callable[[np.ndarray, np.ndarray], dict]  # (base labels, edited labels) -> scores


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'calls'))
def invert_partly(model, variables, s, x0, spec: SamplerSpec, calls: int):
  """x0 inverted under s for the first `calls` steps (least noisy first; calls = K: to x_T)."""
  return spec.invert(unet_lib.denoiser(model, variables, s, x0.shape, spec), x0, stop=calls)


@functools.partial(jax.jit, static_argnames=('model', 'spec', 'calls'))
def regenerate_from(model, variables, s, x_mid, spec: SamplerSpec, calls: int):
  """The last `calls` steps of the sampler from x_mid (at the level of step K - calls)."""
  images = spec.run(unet_lib.denoiser(model, variables, s, x_mid.shape, spec), x_mid, start=spec.num_steps - calls)
  return jnp.clip(images, -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def sample_states(model, variables, s, x_T, spec: SamplerSpec):
  """Samples of (s, x_T) and the state x at the level of every step: (images, (K, B, ...))."""
  denoise = unet_lib.denoiser(model, variables, s, x_T.shape, spec)
  images, states = spec.run(denoise, x_T, trajectory_fn=lambda x, x0_hat, t: x)
  return jnp.clip(images, -1.0, 1.0), states


@functools.partial(jax.jit, static_argnames=('model', 'shape'))
def picture_change(model, variables, s, s_edit, shape: tuple):
  """upsample(picture(s_edit) - picture(s)) for images of `shape`: how the edit moves the block means."""
  new, old = jnp.split(model.apply(variables, jnp.concatenate([s_edit, s]), method=model.decode_activations), 2)
  return diffusion.upsample(new - old, shape)


def signal_scale(spec: SamplerSpec, step: int) -> float:
  """sqrt(abar_t) at sampling step `step`'s timestep t: the weight of the clean image in x_t."""
  t = int(spec.timesteps_used()[step])
  return float(np.sqrt(diffusion.make_schedule(spec.schedule, spec.timesteps).alphas_cumprod[t]))


def carry_picture(model, variables, s, s_edit, x_mid, spec: SamplerSpec, step: int, change=None):
  """x_mid, the state at the level of sampling step `step`, with its clean image's block means moved
  from the decoder's picture of s to that of s_edit: x_mid + sqrt(abar_t) upsample(picture(s_edit) -
  picture(s)), t the step's timestep (see the module's docstring). `change`: that upsampled
  difference when already computed (`picture_change`), so that the decoder runs once per s, s_edit."""
  if change is None:
    change = picture_change(model, variables, s, s_edit, tuple(x_mid.shape))
  return x_mid + signal_scale(spec, step) * change.astype(x_mid.dtype)


def has_picture(model) -> bool:
  """Whether the model has the decoder of s, whose picture `carry_picture` carries."""
  return getattr(model, 's_decoder_size', 0) > 0


def start_step(emergence_step: float, margin: int) -> int:
  """The sampling step to regenerate from: `margin` steps before the (median) emergence step."""
  return max(int(np.floor(emergence_step)) - margin, 0)


def switch_curve(model, variables, spec: SamplerSpec, labels: Labels, states, base_labels: np.ndarray, s_edit,
                 attribute: int, s=None, carry: bool = False) -> np.ndarray:
  """(K,) fraction of the trajectories of `sample_states` (their `states`, and `base_labels` the
  labels of their images) whose label of `attribute` changes when s is switched to s_edit at step
  k (k = 0: sampled with s_edit throughout). One sampling serves every edit of the same s.
  `carry`: the switch also carries the picture's change into the state (`carry_picture`; needs the
  trajectories' s)."""
  k_steps, s_edit = spec.num_steps, jnp.asarray(s_edit)
  _check_carry(model, s, carry)
  # the same change at every step, only its weight sqrt(abar) differs: the decoder runs once
  change = picture_change(model, variables, jnp.asarray(s), s_edit, tuple(states.shape[1:])) if carry else None
  curve = []
  for k in range(k_steps):
    state = carry_picture(model, variables, s, s_edit, states[k], spec, k, change) if carry and k else states[k]
    switched = regenerate_from(model, variables, s_edit, state, spec, k_steps - k)
    curve.append(float(np.mean(labels(np.asarray(switched))[:, attribute] != base_labels[:, attribute])))
  return np.asarray(curve)


def commitment_step(curve: np.ndarray, tolerance: float, min_effect: float = 0.25) -> int:
  """First step from which the switch changes the attribute in less than (1 - tolerance) of the
  trajectories that a switch at step 0 changes (len(curve) when it never falls).

  0 when the switch at step 0 changes the attribute in fewer than `min_effect` of the
  trajectories: such an edit does not control the attribute, and its curve is sampling noise (on
  the quickstart a shape edit that changed 23% of 64 trajectories read "committed at the last step"
  from one late blip), so it starts from x_T."""
  curve = np.asarray(curve, np.float64)
  if curve[0] < max(min_effect, 1e-12):
    return 0
  return int(stats.first_stable_index(curve < (1.0 - tolerance) * curve[0]))


def x0_emergence_step(probs_trajectory: np.ndarray) -> float:
  """Median over trajectories of the step from which x0_hat's label equals the final one."""
  return float(np.median(stats.settling_steps(probs_trajectory)))


def _check_carry(model, s, carry: bool) -> None:
  if carry and not has_picture(model):
    raise ValueError('carrying the picture needs a model with the decoder of s (train.s_decoder_weight > 0)')
  if carry and s is None:
    raise ValueError("carrying the picture needs the trajectories' s")


def edit_from(model, variables, spec: SamplerSpec, labels: Labels, judge: Judge, images, s, s_edit,
              start: int, cache: dict | None = None, carry: bool = False, keep_images: bool = False) -> dict:
  """Edit `images` (their s -> s_edit) by inverting to the level of step `start` and regenerating;
  `carry`: the edit also moves the start state by the picture's change (`carry_picture`).

  Returns judge(base labels, edited labels) with `calls` (2 (K - start)) and `fidelity_mse` (the
  unedited regeneration's error to the images), and with `keep_images` the `edited` and `base`
  (unedited) regenerations. `cache` reuses the inversion and the unedited regeneration across edits
  from the same start."""
  _check_carry(model, s, carry)
  calls = spec.num_steps - start
  cache = {} if cache is None else cache
  if calls not in cache:
    mid = invert_partly(model, variables, jnp.asarray(s), jnp.asarray(images), spec, calls)
    base = np.asarray(regenerate_from(model, variables, jnp.asarray(s), mid, spec, calls))
    cache[calls] = (mid, base, labels(base))
  mid, base, base_labels = cache[calls]
  if carry and start:
    mid = carry_picture(model, variables, jnp.asarray(s), jnp.asarray(s_edit), mid, spec, start)
  edited = np.asarray(regenerate_from(model, variables, jnp.asarray(s_edit), mid, spec, calls))
  out = dict(judge(base_labels, labels(edited)), start_step=int(start), calls=2 * calls,
             fidelity_mse=float(np.mean((base - np.asarray(images)) ** 2)))
  return dict(out, edited=edited, base=base) if keep_images else out
