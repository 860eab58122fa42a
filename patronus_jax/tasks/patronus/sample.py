"""Sampling: images from prototype activations, s from the latent model, and `--mode=sample`.

  conditional (reconstruction):  s = s(x_real), x_T ~ N(0, I)  -> U-Net DDIM/DDPM/DPM-Solver++ -> x
  unconditional:                 z_T ~ N(0, I) -> latent DDIM (eta) or DPM-Solver++ -> s = z * std + mean -> x
Each call is one jitted program (the whole denoising loop is a lax.scan); batches are split
in chunks of `config.sample.batch_size` so memory stays bounded.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data
from patronus_jax.core import batching
from patronus_jax.core import files
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.evaluate import semantics
from patronus_jax.models import unet as unet_lib
from patronus_jax.tasks.patronus.loading import load_latent, load_stage1_variables


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def generate(model, variables, s: jax.Array, x_T: jax.Array, key: jax.Array, spec: SamplerSpec) -> jax.Array:
  """Images conditioned on prototype activations s, from the noise x_T."""
  denoise = unet_lib.denoiser(model, variables, s, x_T.shape, spec)
  return spec.run(denoise, x_T, key)


@functools.partial(jax.jit, static_argnames=('model', 'spec'))
def invert(model, variables, s: jax.Array, x0: jax.Array, spec: SamplerSpec) -> jax.Array:
  """Deterministic inversion x0 -> x_T under conditioning s with the spec's sampler (ddim or
  dpmpp2m; same timesteps as its sampling, which retraces x0)."""
  denoise = unet_lib.denoiser(model, variables, s, x0.shape, spec)
  return spec.invert(denoise, x0)


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
  z = spec.run(denoise, z_T, loop_key)
  return z * stats['s_std'] + stats['s_mean']


def encode_batched(model, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """s of any number of images, in batches of `batch_size` (the last zero-padded: one compilation)."""
  fn = lambda _, x: encode(model, variables, jnp.asarray(x))
  return batching.padded_map(fn, np.asarray(images, np.float32), batch_size).astype(np.float32)


def generate_batched(model, variables, s: np.ndarray, key: jax.Array, spec: SamplerSpec,
                     image_shape: tuple[int, int, int], batch_size: int = 64,
                     x_T: Optional[np.ndarray] = None, label: str = 'sampling') -> np.ndarray:
  """`generate` over any number of s in fixed-size chunks (one compilation), with progress lines.

  Chunk i draws its noise and sampler randomness from fold_in(key, i). The last chunk is
  padded by repeating its final row.
  """
  s = np.asarray(s, np.float32)

  def chunk(i, s_i, *x_i):
    noise_key, loop_key = jax.random.split(jax.random.fold_in(key, i))
    x = jnp.asarray(x_i[0]) if x_i else jax.random.normal(noise_key, (batch_size,) + tuple(image_shape))
    return generate(model, variables, jnp.asarray(s_i), x, loop_key, spec)

  inputs = (s,) if x_T is None else (s, np.asarray(x_T, np.float32))
  progress = timing.Progress(label, s.shape[0], every=0.0)
  return batching.padded_map(chunk, inputs, batch_size, pad='edge', progress=progress)


def sample_activations_batched(latent_model, latent_variables, stats: dict, key: jax.Array, num: int,
                               batch_size: int, spec: SamplerSpec, label: str = '') -> np.ndarray:
  """`num` s from the latent model, `batch_size` at a time; chunk i uses fold_in(key, 10_000 + i).

  (Unconditional images of these s use fold_in(key, 1), see `sample_mode`.)
  """
  stats = {k: jnp.asarray(v) for k, v in stats.items()}
  chunk = lambda i, _: sample_activations(latent_model, latent_variables, stats, jax.random.fold_in(key, 10_000 + i),
                                          batch_size, spec)
  progress = timing.Progress(label, num, 'activations') if label else None
  return batching.padded_map(chunk, np.arange(num), batch_size, pad=None, progress=progress)


def reconstruct(model, variables, images: jax.Array, key: jax.Array, diffusion_cfg) -> jax.Array:
  """Images generated from the s of `images` with new noise (the paper's reconstruction)."""
  spec = SamplerSpec.images(diffusion_cfg)
  s = encode(model, variables, images)
  noise_key, loop_key = jax.random.split(key)
  x_T = jax.random.normal(noise_key, images.shape)
  return generate(model, variables, s, x_T, loop_key, spec)


def sketch_consistency_key(diffusion_cfg) -> dict:
  """The sketch consistency's part of a skip key: empty when off, so keys written before it existed
  stay valid."""
  d = diffusion_cfg
  if not d.sketch_consistency:
    return {}
  return {'sketch_consistency': float(d.sketch_consistency),
          'sketch_consistency_min_t': float(d.sketch_consistency_min_t)}


def _sample_status(config, stage1_step: int, latent_step: int) -> dict:
  """What `--mode=sample` computes from (its skip key)."""
  return {'stage1_step': stage1_step, 'latent_step': latent_step,
          'num_samples': config.sample.num_samples, 'num_reconstructions': config.sample.num_reconstructions,
          'sampler': config.diffusion.sampler, 'sample_steps': config.diffusion.sample_steps,
          'eta': float(config.diffusion.eta), 'clip_x0': float(config.diffusion.clip_x0),
          'latent_sample_steps': config.latent.sample_steps, 'seed': config.seed,
          **sketch_consistency_key(config.diffusion),
          **({'spacing': config.diffusion.spacing} if config.diffusion.sampler == 'dpmpp2m' else {}),
          **({'latent_sampler': config.latent.sampler, 'latent_spacing': config.latent.spacing}
             if config.latent.sampler == 'dpmpp2m' else {})}


def _write_samples(config, out_dir: str, arrays: dict[str, np.ndarray]) -> None:
  """The PNG grids and samples.npz (images as 8-bit)."""
  uncond, real, recon = arrays['unconditional'], arrays['real'], arrays['reconstruction']
  nrow = int(np.ceil(np.sqrt(config.sample.num_samples)))
  files.save_image_grid(os.path.join(out_dir, 'unconditional.png'), uncond, nrow=nrow)
  pairs = np.stack([real, recon], 1).reshape((-1,) + real.shape[1:])  # original, reconstruction
  nrow = min(16, 2 * config.sample.num_reconstructions)
  files.save_image_grid(os.path.join(out_dir, 'reconstruction.png'), pairs, nrow=nrow)
  with files.atomic_path(os.path.join(out_dir, 'samples.npz')) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, unconditional=files.to_uint8(uncond), s_unconditional=arrays['s_unconditional'],
               real=files.to_uint8(real), reconstruction=files.to_uint8(recon), s_real=arrays['s_real'],
               s_reconstruction=arrays['s_reconstruction'])


def sample_mode(config, workdir: str, mesh=None) -> dict:
  """`--mode=sample`: unconditional samples and reconstructions, as PNG grids and .npz."""
  del mesh
  model, variables, stage1_step = load_stage1_variables(config, workdir)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  latent_model, latent_vars, stats, latent_step = load_latent(config, workdir)
  status = _sample_status(config, stage1_step, latent_step)
  if workdir_lib.is_done(workdir, 'sample', status):
    logging.info('sample: outputs for these checkpoints exist already; skipping.')
    return status
  out_dir = os.path.join(workdir, 'samples')
  spec = SamplerSpec.images(config.diffusion)
  key = jax.random.PRNGKey(config.seed + 2)
  batch_size = config.sample.batch_size
  watch = timing.Stopwatch()
  s_uncond = sample_activations_batched(latent_model, latent_vars, stats, key, config.sample.num_samples,
                                        batch_size, SamplerSpec.latent(config.latent))
  uncond = generate_batched(model, variables, s_uncond, jax.random.fold_in(key, 1), spec, shape, batch_size,
                            label='unconditional samples')
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=config.sample.num_reconstructions)['image']
  s_real = np.asarray(encode(model, variables, jnp.asarray(real)))
  recon = generate_batched(model, variables, s_real, jax.random.fold_in(key, 2), spec, shape, batch_size,
                           label='reconstructions')
  s_recon = np.asarray(encode(model, variables, jnp.asarray(recon)))
  elapsed = watch.seconds()
  if jax.process_index() == 0:
    _write_samples(config, out_dir, dict(unconditional=uncond, s_unconditional=s_uncond, real=real,
                                         reconstruction=recon, s_real=s_real, s_reconstruction=s_recon))
    consistency = semantics.s_consistency(s_real, s_recon)
    # s_faithfulness (pooled r) stays near 1 when only the prototypes' typical values survive;
    # s_faithfulness_per_prototype (each prototype across images) says whether the image's own s does
    summary = dict(status, seconds=elapsed, s_faithfulness=consistency['pearson_pooled'],
                   s_faithfulness_per_prototype=consistency['pearson_per_prototype_mean'])
    files.write_json(os.path.join(out_dir, 'summary.json'), summary)
    workdir_lib.record_done(workdir, 'sample', status)
    status = summary
  logging.info('sample: %d unconditional + %d reconstructions in %.1fs -> %s', config.sample.num_samples,
               config.sample.num_reconstructions, elapsed, out_dir)
  return status
