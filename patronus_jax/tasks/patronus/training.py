"""The two Patronus training stages, as Tasks of the generic loop (`core.training`).

Stage 1 (`train_stage1`, paper Sec. 3.2): the prototype encoder and the U-Net are trained
jointly on  E ||eps - eps_theta(x_t, t, s(x_0))||^2  with s computed from the clean image
(gradients flow into the encoder), optionally plus the prototype-distinct loss.
Stage 2 (`train_latent`): the stage-1 encoder is frozen, s is computed over the training
set, standardised (statistics stored with the checkpoint), and the latent UNet1D learns
p(s) with the same epsilon objective.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data
from patronus_jax.core import diffusion
from patronus_jax.core import files
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.training import MEMORY, LoopSettings, TrainState, array_iterator, model_collections, run_training
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.models.latent import latent_from_config
from patronus_jax.models import unet as unet_lib
from patronus_jax.models.unet import patronus_from_config
from patronus_jax.tasks.patronus import sample as sample_lib
from patronus_jax.tasks.patronus.loading import load_stage1_variables

# ----------------------------------------------------------------------------- stage 1

class PatronusTask:
  """Stage 1: joint prototype network + U-Net on the diffusion loss."""
  name = 'stage1'

  def __init__(self, config):
    self.config = config
    self.model = patronus_from_config(config)
    self.schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.timesteps)

  def prepare_batch(self, batch: dict) -> dict:
    return {'image': np.asarray(batch['image'], np.float32)}

  def init_variables(self, key, batch):
    x = batch['image']
    variables = self.model.init({'params': key}, x, jnp.zeros((x.shape[0],), jnp.int32))
    size = self.config.train.s_decorrelation_memory
    if size:  # the s of earlier batches, for the penalties on s (not the model's)
      s = jax.eval_shape(lambda: self.model.apply(variables, x, method=self.model.encode).activations)
      variables = {**variables, MEMORY: proto_lib.empty_memory(size, s.shape[-1])}
    return variables

  def loss_fn(self, params, variables, batch, key, train):
    loss, metrics, _ = self.loss_terms(params, variables, batch, key, train)
    return loss, metrics

  def loss_terms(self, params, variables, batch, key, train):
    """(loss, metrics, s of the batch): `loss_fn` and the activations it computed (for penalties on s)."""
    memory = variables.get(MEMORY) if train else None  # evaluation scores its batch alone
    variables = self.model_variables(params, variables)
    x0 = batch['image']
    diff_key, drop_key = jax.random.split(key)
    encoded = self.model.apply(variables, x0, method=self.model.encode)
    s = encoded.activations

    p_drop = self.config.train.cond_dropout
    cond_mask = None
    if train and p_drop > 0:  # some examples train the unconditional model (guidance at sampling)
      cond_mask = jax.random.bernoulli(jax.random.fold_in(drop_key, 1), 1.0 - p_drop, (x0.shape[0],))

    def decode(activations):  # the decoder's picture of s (also of the penalties' perturbed s below)
      return self.model.apply(variables, activations, method=self.model.decode_activations)

    weight = self.config.train.s_decoder_weight
    decoded = decode(s) if weight > 0 else None

    # with model.s_sketch the U-Net's sketch is this same picture (the decoder runs once per step)
    sketch = unet_lib.resize_sketch(decoded, x0.shape) if self.model.s_sketch else None

    def denoise(x_t, t):
      return self.model.apply(variables, x_t, t, s, train, cond_mask, sketch, rngs={'dropout': drop_key},
                              method=self.model.denoise)

    d = self.config.diffusion
    loss = diffusion.diffusion_loss(denoise, self.schedule, x0, diff_key, d.prediction, d.min_snr_gamma,
                                    d.min_snr_floor, d.edge_weight)
    metrics = {'diffusion_loss': loss, 's_mean': jnp.mean(s), 's_std': jnp.std(s)}
    if weight > 0:
      metrics['s_decoder_loss'] = self.decoder_loss(decoded, x0)
      loss = loss + weight * metrics['s_decoder_loss']
    weight = self.config.train.s_decoder_hessian_weight
    if weight > 0:
      metrics['s_decoder_hessian'] = proto_lib.hessian_penalty(
          decode, s, jax.random.fold_in(drop_key, 2), self.config.train.s_decoder_hessian_step)
      loss = loss + weight * metrics['s_decoder_hessian']
    weight = self.config.train.edit_cycle_weight
    if weight > 0:
      metrics['edit_cycle_loss'] = proto_lib.edit_cycle_loss(
          s, jax.random.fold_in(drop_key, 3),
          lambda edited: unet_lib.resize_sketch(decode(edited), x0.shape),
          lambda picture: self.model.apply(variables, picture, method=self.model.encode).activations)
      loss = loss + weight * metrics['edit_cycle_loss']
    weight = self.config.train.s_decorrelation_weight
    if weight > 0:
      metrics['s_correlation'] = proto_lib.decorrelation_loss(s, self.config.train.s_decorrelation_threshold, memory)
      loss = loss + weight * metrics['s_correlation']
    weight = self.config.train.s_spread_weight
    if weight > 0:
      metrics['s_spread_loss'] = proto_lib.spread_loss(s, self.config.train.s_spread_floor, memory)
      loss = loss + weight * metrics['s_spread_loss']
    if memory is not None:
      metrics[MEMORY] = proto_lib.remember(memory, s)
    weight = self.config.train.patch_cluster_weight
    if weight > 0:
      metrics['patch_cluster_loss'] = proto_lib.patch_cluster_loss(encoded.distances)
      loss = loss + weight * metrics['patch_cluster_loss']
    weight = self.config.train.distinct_loss_weight
    if weight > 0:
      distinct = proto_lib.prototype_distinct_loss(
          params['prototypes']['prototype_vectors'], self.config.train.distinct_margin)
      metrics['distinct_loss'] = distinct
      loss = loss + weight * distinct
    return loss, metrics, s

  @staticmethod
  def model_variables(params, variables) -> dict:
    """What the model applies with: the parameters and the model's collections (`model_collections`)."""
    return {'params': params, **model_collections(variables)}

  def decoder_loss(self, decoded, x0):
    """The auxiliary decoder's loss: its picture of s against the image's block means, each pixel
    weighted by train.s_decoder_edge_weight's outline weights."""
    target = diffusion.downsample_mean(x0, decoded.shape[1])
    return jnp.mean(diffusion.edge_weights(target, self.config.train.s_decoder_edge_weight) * (decoded - target) ** 2)


def make_sample_fn(config, task: PatronusTask, mesh) -> Optional[Callable]:
  """Grid of held-out images (top) and images generated from their s (bottom) for monitoring."""
  if not config.train.sample_every:
    return None
  n = config.train.num_sample_images
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=n)['image']

  def fn(state: TrainState):
    variables = state.inference_variables(use_ema=config.train.ema_decay > 0)
    variables = jax.device_get(variables)
    generated = sample_lib.reconstruct(task.model, variables, jnp.asarray(real),
                                       jax.random.PRNGKey(config.seed + 1), config.diffusion)
    return np.concatenate([real, np.asarray(generated)], axis=0)

  return fn


def stage1_settings(config) -> LoopSettings:
  """How stage 1 trains: `config.train`, with the prototype network's own learning-rate scale."""
  return dataclasses.replace(LoopSettings.from_section(config.train),
                             lr_scales=(('prototypes', float(config.train.prototype_lr_scale)),))


def train_stage1(config, workdir: str, mesh) -> TrainState:
  """`--mode=train` for Patronus."""
  info = data.get_info(config.data)
  data.check_image_shape(config.data, info)
  if info.bias_report is not None and jax.process_index() == 0:
    files.write_json(os.path.join(workdir, 'data_bias.json'), info.bias_report)
    logging.info('Planted bias: %s', info.bias_report)
  task = PatronusTask(config)
  settings = stage1_settings(config)
  batches = data.training_iterator_factory(config.data, config.train.batch_size, config.seed)
  return run_training(task, settings, workdir, batches, seed=config.seed,
                      mesh=mesh, meta={'config': workdir_lib.config_to_dict(config)},
                      sample_fn=make_sample_fn(config, task, mesh))


# ----------------------------------------------------------------------------- stage 2

class LatentTask:
  """Stage 2: the latent UNet1D on standardised prototype activations."""
  name = 'latent'

  def __init__(self, config):
    self.config = config
    self.model = latent_from_config(config, dtype='float32')
    self.schedule = diffusion.make_schedule(config.latent.schedule, config.latent.timesteps)

  def prepare_batch(self, batch: dict) -> dict:
    return {'s': np.asarray(batch['s'], np.float32)}

  def init_variables(self, key, batch):
    s = batch['s']
    return self.model.init({'params': key}, s, jnp.zeros((s.shape[0],), jnp.int32))

  def loss_fn(self, params, variables, batch, key, train):
    variables = {'params': params, **model_collections(variables)}
    diff_key, drop_key = jax.random.split(key)
    denoise = lambda z, t: self.model.apply(variables, z, t, train, rngs={'dropout': drop_key})
    loss = diffusion.diffusion_loss(denoise, self.schedule, batch['s'], diff_key)
    return loss, {}


def pass_over_split(config, split: str, num: Optional[int], batch_size: int, *,
                    encode: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                    features: Optional[dict[str, Callable[[np.ndarray], np.ndarray]]] = None,
                    num_features: Optional[int] = None, label: str = '') -> dict[str, np.ndarray]:
  """One in-order pass over the first `num` images of a split (all when None).

  Returns 'attributes', 'num_examples', 's' (when `encode`), and per `features` entry the
  features of the first `num_features` images (all when None). Images are never held all at once.
  """
  features = features or {}
  it = data.make_iterator(config.data, split, global_batch_size=batch_size, seed=0, shuffle=False,
                          num_epochs=1, drop_remainder=False, process_index=0, process_count=1)
  out = {'attributes': [], 's': [], **{name: [] for name in features}}
  total = num if num is not None else data.get_info(config.data).num_examples.get(split)
  done, progress = 0, timing.Progress(label or f'reading {split}', total)
  for batch in it:
    images = batch['image'] if num is None else batch['image'][:num - done]
    if len(images) == 0:
      break
    out['attributes'].append(np.asarray(batch['attributes'][:len(images)]))
    if encode is not None:
      out['s'].append(encode(images))
    for name, fn in features.items():
      keep = len(images) if num_features is None else max(0, min(len(images), num_features - done))
      if keep:
        out[name].append(fn(images[:keep]))
    done += len(images)
    progress(done)
    if num is not None and done >= num:
      break
  result = {name: np.concatenate(parts) for name, parts in out.items() if parts}
  result['num_examples'] = done
  return result


def compute_activations(config, model, variables, split: str, batch_size: int = 256,
                        max_examples: Optional[int] = None) -> dict:
  """s (and attributes) of every example of a split, in order, streamed (progress lines)."""
  encode = lambda images: sample_lib.encode_batched(model, variables, images, batch_size)
  return pass_over_split(config, split, max_examples, batch_size, encode=encode, label=f'computing s over {split}')


def latent_statistics(s: np.ndarray, normalize: bool) -> dict:
  if not normalize:
    return {'s_mean': np.zeros(s.shape[1], np.float32), 's_std': np.ones(s.shape[1], np.float32)}
  return {'s_mean': s.mean(0).astype(np.float32), 's_std': np.maximum(s.std(0), 1e-6).astype(np.float32)}


def train_latent(config, workdir: str, mesh) -> TrainState:
  """`--mode=train_latent`: s of the training set under the frozen stage-1 encoder -> UNet1D."""
  model, variables, stage1_step = load_stage1_variables(config, workdir)
  cache = os.path.join(workdir, 'latent', 'activations.npz')
  if os.path.exists(cache) and int(np.load(cache)['stage1_step']) == stage1_step:
    with np.load(cache) as f:
      s = f['s']
    logging.info('latent: using cached s of %d training images (%s).', len(s), cache)
  else:
    s = compute_activations(config, model, variables, config.data.train_split)['s']
    if jax.process_index() == 0:
      with files.atomic_path(cache) as tmp:
        with open(tmp, 'wb') as f:
          np.savez(f, s=s, stage1_step=stage1_step)
  stats = latent_statistics(s, config.latent.normalize)
  z = (s - stats['s_mean']) / stats['s_std']
  task = LatentTask(config)
  settings = LoopSettings.from_section(config.latent)
  settings = dataclasses.replace(settings, weight_decay=0.0)  # Adam, as the official latent training
  extras = {k: jnp.asarray(v) for k, v in stats.items()}
  return run_training(task, settings, workdir, lambda: array_iterator({'s': z}, settings.batch_size, config.seed),
                      seed=config.seed + 1, mesh=mesh, extras=extras,
                      meta={'config': workdir_lib.config_to_dict(config), 'stage1_step': stage1_step})
