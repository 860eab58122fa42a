"""The operations every analysis is built from: encode, invert, regenerate, trace, classify.

All of them are jitted functions of (variables, batch) with the model, the sampling loop and
the classifier architecture static, and `Engine` runs them over any number of rows in
fixed-size chunks (the last one padded), so each compiles once per run whatever the number
of images. Sampling is deterministic (`interpret.sampler`: DDIM or DPM-Solver++(2M), eta = 0) over
`interpret.sample_steps` model calls: an inversion followed by a regeneration with the same s
retraces the image, and a
regeneration with an edited s from the same x_T is a *paired* counterfactual of it.

The model is anything with `encode(images) -> PrototypeOutput` and
`denoise(x_t, t, s) -> eps or x0` methods (the `Patronus` module; tests pass small stand-ins).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.core import sharding
from patronus_jax.models import unet as unet_lib


def deterministic_spec(diffusion_cfg, num_steps: int, sampler: str = 'ddim') -> SamplerSpec:
  """`sampler` ('ddim' or 'dpmpp2m') with eta = 0 over `num_steps` calls of the model's noise schedule."""
  return SamplerSpec.images(diffusion_cfg, sampler=sampler, num_steps=int(num_steps), eta=0.0, clip_x0=0.0)


def _encoded(model, variables, images):
  out = model.apply(variables, images, method=model.encode)
  return {'s': out.activations, 'argmin': out.argmin}


def _class_probs(classifier, images):
  """Softmax probabilities per attribute (a tuple, in the classifier's attribute order)."""
  _, logits = classifier.net.apply({'params': classifier.params}, images.astype(jnp.float32))
  return tuple(jax.nn.softmax(l, axis=-1) for l in logits)


@functools.partial(jax.jit, static_argnames=('model',))
def encode_batch(model, variables, images):
  """{'s': (B, P), 'argmin': (B, P)} of images."""
  return _encoded(model, variables, images)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def invert_batch(model, variables, s, x0, spec: SamplerSpec):
  """x_T of images x0 under their conditioning s (the deterministic inversion of spec's sampler)."""
  return spec.invert(unet_lib.denoiser(model, variables, s, x0.shape, spec), x0)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def generate_batch(model, variables, s, x_T, spec: SamplerSpec):
  """Images from (s, x_T) by the deterministic sampler of spec, and their re-encoded s and argmins."""
  images = spec.run(unet_lib.denoiser(model, variables, s, x_T.shape, spec), x_T)
  images = jnp.clip(images, -1.0, 1.0)
  return {'images': images, **_encoded(model, variables, images)}


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def trajectory_batch(model, variables, classifier, s, x_T, spec: SamplerSpec):
  """The deterministic sampler of spec from (s, x_T), tracing x0_hat at every step.

  Returns {'images', 's_final', 's_traj' (B, K, P), 'x0_traj' (B, K, H, W, C) uint8
  [, 'probs_traj' tuple of (B, K, V_a)]}: the prototype activations (and attribute
  probabilities, when a classifier is given) of the predicted clean image x0_hat (clipped to
  [-1, 1]) at each of the K steps, noisiest first, and x0_hat itself in 8 bits.
  """
  def trace(x_t, x0_hat, t):
    del x_t, t
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    out = {'s': model.apply(variables, x0_hat, method=model.encode).activations,
           'x0_hat': to_uint8(x0_hat)}
    if classifier is not None:
      out['probs'] = _class_probs(classifier, x0_hat)
    return out

  images, traj = spec.run(unet_lib.denoiser(model, variables, s, x_T.shape, spec), x_T, trajectory_fn=trace)
  images = jnp.clip(images, -1.0, 1.0)
  batch_major = lambda a: jnp.swapaxes(a, 0, 1)
  out = {'images': images, 's_final': model.apply(variables, images, method=model.encode).activations,
         's_traj': batch_major(traj['s']), 'x0_traj': batch_major(traj['x0_hat'])}
  if classifier is not None:
    out['probs_traj'] = tuple(batch_major(p) for p in traj['probs'])
  return out


@jax.jit
def classify_batch(classifier, images):
  return _class_probs(classifier, images)


def to_uint8(images):
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def slerp(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
  """Spherical interpolation between two noise tensors (rows), for weight in [0, 1]."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  cos = np.sum(fa * fb, -1) / np.maximum(np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1), 1e-12)
  theta = np.arccos(np.clip(cos, -1.0, 1.0))
  sin = np.sin(theta)
  small = sin < 1e-6
  wa = np.where(small, 1.0 - weight, np.sin((1.0 - weight) * theta) / np.where(small, 1.0, sin))
  wb = np.where(small, weight, np.sin(weight * theta) / np.where(small, 1.0, sin))
  out = wa[:, None] * fa + wb[:, None] * fb
  return out.reshape(a.shape).astype(np.float32)


@dataclasses.dataclass
class Engine:
  """A trained model's jitted operations, run over any number of rows in fixed-size chunks.

  Attributes:
    model: the static module (encode / denoise methods).
    variables: its variables.
    spec: the deterministic sampling loop of regenerations and inversions.
    batch_size: rows per jitted call.
    classifier: an `AttributeClassifier` (optional: emergence by attribute, diagnosis).
    mesh: optional device mesh; chunks are sharded over its 'data' axis when they divide.
  """
  model: Any
  variables: Any
  spec: SamplerSpec
  batch_size: int = 64
  classifier: Any = None
  mesh: Any = None
  label: str = 'interpret'
  calls: dict = dataclasses.field(default_factory=dict)  # model calls made, per operation

  def _put(self, x):
    if self.mesh is None or x.shape[0] % self.mesh.shape.get('data', 1):
      return jnp.asarray(x)
    return jax.device_put(x, sharding.batch_sharding(self.mesh))

  def __post_init__(self):
    if self.mesh is not None and self.mesh.devices.size > 1:
      self.variables = jax.device_put(self.variables, sharding.replicated(self.mesh))
      if self.classifier is not None:
        self.classifier = jax.device_put(self.classifier, sharding.replicated(self.mesh))

  def map(self, fn: Callable, *arrays, what: str = '', model_calls_per_row: int = 0,
          post: Optional[Callable] = None):
    """fn(*chunks) over the rows of `arrays`, in fixed-size padded chunks; numpy pytree out.

    Every output of `fn` must have the batch as its leading axis. `post(output)` (optional)
    transforms each chunk's output on the device before it is fetched.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0]
    if n == 0:
      raise ValueError(f'{self.label}: nothing to {what or "compute"} (0 rows)')
    size = self.batch_size
    outs, t0, last = [], time.time(), time.time()
    for start in range(0, n, size):
      stop = min(n, start + size)
      chunk = [a[start:stop] for a in arrays]
      missing = size - (stop - start)
      if missing:
        chunk = [np.concatenate([c, np.repeat(c[-1:], missing, 0)]) for c in chunk]
      out = fn(*[self._put(c) for c in chunk])
      if post is not None:
        out = post(out)
      outs.append((jax.device_get(out), stop - start))
      if what and (time.time() - last > 20 or stop == n):
        last = time.time()
        logging.info('%s: %s %d/%d (%.1f rows/s)', self.label, what, stop, n, stop / max(last - t0, 1e-9))
    if model_calls_per_row:
      self.calls[what or 'other'] = self.calls.get(what or 'other', 0) + n * model_calls_per_row

    def cat(*leaves):
      return np.concatenate([np.asarray(l)[:k] for l, (_, k) in zip(leaves, outs)])

    return jax.tree_util.tree_map(cat, *[o for o, _ in outs])

  # ---------------------------------------------------------------- operations

  def encode(self, images) -> dict:
    return self.map(lambda x: encode_batch(self.model, self.variables, x), images)

  def invert(self, s, images, what: str = 'inverting') -> np.ndarray:
    return self.map(lambda a, x: invert_batch(self.model, self.variables, a, x, self.spec), s, images,
                    what=what, model_calls_per_row=self.spec.num_steps)

  def generate(self, s, x_T, what: str = 'regenerating', classify: bool = False,
               uint8: bool = False) -> dict:
    """{'images', 's', 'argmin'[, 'probs']} of deterministic samples from (s, x_T).

    classify: add the attribute classifier's probabilities of the images (a tuple per
    attribute); uint8: return the images in 8 bits (a quarter of the memory).
    """
    if classify and self.classifier is None:
      raise ValueError(f'{self.label}: no attribute classifier was given')

    def post(out):
      out = dict(out)
      if classify:
        out['probs'] = classify_batch(self.classifier, out['images'])
      if uint8:
        out['images'] = to_uint8(out['images'])
      return out

    out = self.map(lambda a, x: generate_batch(self.model, self.variables, a, x, self.spec), s, x_T,
                   what=what, model_calls_per_row=self.spec.num_steps, post=post)
    if 'probs' in out:
      out['probs'] = tuple(out['probs'])
    return out

  def trajectory(self, s, x_T, num_steps: Optional[int] = None, what: str = 'tracing') -> dict:
    """`trajectory_batch` over any number of rows: the U-Net's own denoising, without the sketch
    consistency of `diffusion.sketch_consistency`, which sets x0_hat's block means to the decoder's
    picture of s from the first guided step, so every attribute would seem to emerge there."""
    spec = dataclasses.replace(self.spec, low_pass_strength=0.0, low_pass_min_t=0.0,
                               num_steps=int(num_steps) if num_steps else self.spec.num_steps)
    out = self.map(lambda a, x: trajectory_batch(self.model, self.variables, self.classifier, a, x, spec),
                   s, x_T, what=what, model_calls_per_row=spec.num_steps)
    if 'probs_traj' in out:
      out['probs_traj'] = tuple(out['probs_traj'])
    return out

  def classify(self, images) -> tuple:
    if self.classifier is None:
      raise ValueError(f'{self.label}: no attribute classifier was given')
    return tuple(self.map(lambda x: classify_batch(self.classifier, x), images))
