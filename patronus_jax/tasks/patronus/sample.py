"""Sampling: images from prototype activations, s from the latent model, and `--mode=sample`.

  conditional (reconstruction):  s = s(x_real), x_T ~ N(0, I)  -> U-Net DDIM/DDPM -> x
  unconditional:                 z_T ~ N(0, I) -> latent DDIM (eta) -> s = z * std + mean -> x
Each call is one jitted program (the whole denoising loop is a lax.scan); batches are split
in chunks of `config.sample.batch_size` so memory stays bounded.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data
from patronus_jax.core import diffusion
from patronus_jax.core import files
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.tasks.patronus.loading import load_latent, load_stage1_variables


def _run(spec: SamplerSpec, denoise_fn, x_T, key, trajectory_fn=None):
  schedule = diffusion.make_schedule(spec.schedule, spec.timesteps)
  return diffusion.sample(denoise_fn, schedule, x_T, sampler=spec.sampler, num_steps=spec.num_steps,
                          eta=spec.eta, key=key, prediction=spec.prediction, trajectory_fn=trajectory_fn,
                          clip_x0=spec.clip_x0)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def generate(model, variables, s: jax.Array, x_T: jax.Array, key: jax.Array, spec: SamplerSpec) -> jax.Array:
  """Images conditioned on prototype activations s, from the noise x_T."""
  denoise = lambda x, t: model.apply(variables, x, t, s, method=model.denoise)
  return _run(spec, denoise, x_T, key)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def invert(model, variables, s: jax.Array, x0: jax.Array, spec: SamplerSpec) -> jax.Array:
  """Deterministic DDIM inversion x0 -> x_T under conditioning s (same strided steps)."""
  schedule = diffusion.make_schedule(spec.schedule, spec.timesteps)
  denoise = lambda x, t: model.apply(variables, x, t, s, method=model.denoise)
  return diffusion.ddim_invert(denoise, schedule, x0, num_steps=spec.num_steps, prediction=spec.prediction)


@functools.partial(jax.jit, static_argnames=('model',))
def encode(model, variables, images: jax.Array) -> jax.Array:
  return model.apply(variables, images, method=model.encode).activations


@functools.partial(jax.jit, static_argnames=('latent_model', 'spec', 'num'))
def sample_activations(latent_model, latent_variables, stats: dict, key: jax.Array, num: int,
                       spec: SamplerSpec) -> jax.Array:
  """s ~ p(s) from the latent model (standardised space, then un-standardised)."""
  noise_key, loop_key = jax.random.split(key)
  z_T = jax.random.normal(noise_key, (num, stats['s_mean'].shape[0]))
  denoise = lambda z, t: latent_model.apply(latent_variables, z, t)
  z = _run(spec, denoise, z_T, loop_key)
  return z * stats['s_std'] + stats['s_mean']


def _chunks(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(n, start + size)


def generate_batched(model, variables, s: np.ndarray, key: jax.Array, spec: SamplerSpec,
                     image_shape: tuple[int, int, int], batch_size: int = 64,
                     x_T: Optional[np.ndarray] = None, label: str = 'sampling') -> np.ndarray:
  """`generate` over any number of s in fixed-size chunks (one compilation), with progress lines.

  The last chunk is padded by repeating its final row, so every call has the same shape.
  """
  s = np.asarray(s, np.float32)
  n = s.shape[0]
  pad = lambda a, k: np.concatenate([a, np.repeat(a[-1:], k, 0)]) if k else a
  out, t0 = [], time.time()
  for i, (a, b) in enumerate(_chunks(n, batch_size)):
    noise_key, loop_key = jax.random.split(jax.random.fold_in(key, i))
    missing = batch_size - (b - a)
    if x_T is None:
      x = jax.random.normal(noise_key, (batch_size,) + tuple(image_shape))
    else:
      x = jnp.asarray(pad(np.asarray(x_T[a:b], np.float32), missing))
    images = generate(model, variables, jnp.asarray(pad(s[a:b], missing)), x, loop_key, spec)
    out.append(np.asarray(images)[:b - a])
    logging.info('%s: %d/%d images (%.1f images/s)', label, b, n, b / max(time.time() - t0, 1e-9))
  return np.concatenate(out)


def reconstruct(model, variables, images: jax.Array, key: jax.Array, diffusion_cfg) -> jax.Array:
  """Images generated from the s of `images` with new noise (the paper's reconstruction)."""
  spec = SamplerSpec.images(diffusion_cfg)
  s = encode(model, variables, images)
  noise_key, loop_key = jax.random.split(key)
  x_T = jax.random.normal(noise_key, images.shape)
  return generate(model, variables, s, x_T, loop_key, spec)


def sample_mode(config, workdir: str, mesh=None) -> dict:
  """`--mode=sample`: unconditional samples and reconstructions, as PNG grids and .npz."""
  del mesh
  model, variables, stage1_step = load_stage1_variables(config, workdir)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  latent_model, latent_vars, stats, latent_step = load_latent(config, workdir)
  status = {'stage1_step': stage1_step, 'latent_step': latent_step,
            'num_samples': config.sample.num_samples, 'num_reconstructions': config.sample.num_reconstructions,
            'sampler': config.diffusion.sampler, 'sample_steps': config.diffusion.sample_steps,
            'eta': float(config.diffusion.eta), 'clip_x0': float(config.diffusion.clip_x0),
            'latent_sample_steps': config.latent.sample_steps, 'seed': config.seed}
  key_fields = tuple(status)
  if workdir_lib.read_status(workdir, 'sample') == status:
    logging.info('sample: outputs for these checkpoints exist already; skipping.')
    return status
  out_dir = os.path.join(workdir, 'samples')
  spec = SamplerSpec.images(config.diffusion)
  key = jax.random.PRNGKey(config.seed + 2)
  t0 = time.time()
  n = config.sample.num_samples
  s_parts = []
  for i, (a, b) in enumerate(_chunks(n, config.sample.batch_size)):
    s_parts.append(np.asarray(sample_activations(
        latent_model, latent_vars, {k: jnp.asarray(v) for k, v in stats.items()},
        jax.random.fold_in(key, 10_000 + i), config.sample.batch_size, SamplerSpec.latent(config.latent)))[:b - a])
  s_uncond = np.concatenate(s_parts)
  uncond = generate_batched(model, variables, s_uncond, jax.random.fold_in(key, 1), spec, shape,
                            config.sample.batch_size, label='unconditional samples')
  m = config.sample.num_reconstructions
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=m)['image']
  s_real = np.asarray(encode(model, variables, jnp.asarray(real)))
  recon = generate_batched(model, variables, s_real, jax.random.fold_in(key, 2), spec, shape,
                           config.sample.batch_size, label='reconstructions')
  s_recon = np.asarray(encode(model, variables, jnp.asarray(recon)))
  elapsed = time.time() - t0
  if jax.process_index() == 0:
    nrow = int(np.ceil(np.sqrt(n)))
    files.save_image_grid(os.path.join(out_dir, 'unconditional.png'), uncond, nrow=nrow)
    pairs = np.stack([real, recon], 1).reshape((-1,) + real.shape[1:])  # original, reconstruction
    files.save_image_grid(os.path.join(out_dir, 'reconstruction.png'), pairs, nrow=min(16, 2 * m))
    with files.atomic_path(os.path.join(out_dir, 'samples.npz')) as tmp:
      with open(tmp, 'wb') as f:
        np.savez(f, unconditional=files.to_uint8(uncond), s_unconditional=s_uncond, real=files.to_uint8(real),
                 reconstruction=files.to_uint8(recon), s_real=s_real, s_reconstruction=s_recon)
    faithfulness = float(np.corrcoef(s_real.ravel(), s_recon.ravel())[0, 1])
    status.update(seconds=elapsed, s_faithfulness=faithfulness)
    files.write_json(os.path.join(out_dir, 'summary.json'), status)
    workdir_lib.write_status(workdir, 'sample', {k: status[k] for k in key_fields})
  logging.info('sample: %d unconditional + %d reconstructions in %.1fs -> %s', n, m, elapsed, out_dir)
  return status
