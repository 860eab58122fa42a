"""The B-cos diffusion training task (the `Task` protocol of `core.training`).

    task = BcosTask(config)
    batch = task.prepare_batch(numpy_batch)              # captions -> token ids, host side
    variables = task.init_variables(key, batch)          # {'params': ..., maybe 'buffers'}
    loss, metrics = task.loss_fn(params, rest, batch, key, train=True)

The loss is the simple diffusion loss of Ho et al. (MSE to eps, or to x0 for
`diffusion.prediction='x0'`) at t ~ U{1..T-1}; the conditioning is whatever `bcos.conditioning`
names (word tokens of the captions by default). `sample` generates with deterministic DDIM.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data
from patronus_jax.core import diffusion
from patronus_jax.core.training import load_for_inference
from patronus_jax.data.captions import captions_for
from patronus_jax.models.bcos_unet import BcosDiffusion, bcos_model_from_config
from patronus_jax.tasks.bcos import tokenizer as text_lib


def _dataset_info(data_config):
  try:
    return data.get_info(data_config)
  except Exception:  # pylint: disable=broad-except
    return None  # the data may not be prepared yet; captions then come from the batch


def build_tokenizer(config, captions=None, info=None) -> text_lib.Tokenizer:
  """The dataset's tokenizer (fixed vocabularies for shapes / CelebA, else from captions)."""
  names = tuple(info.attribute_names) if info is not None else None
  if config.data.name not in ('patronus_shapes', 'celeb_a') and captions is None:
    arrays = data.load_arrays(config.data, config.data.train_split)
    if 'caption' not in arrays:
      raise ValueError(f"dataset {config.data.name!r} has no captions: text conditioning needs "
                       "them (or use bcos.conditioning='prototypes'/'external'/'none')")
    captions = [str(c) for c in arrays['caption']]
  return text_lib.tokenizer_for(config.data.name, captions, names, config.bcos.vocab_max_size,
                               config.bcos.start_token)


class BcosTask:
  """Trains the B-cos U-Net on (image, caption) batches."""

  name = 'bcos'

  def __init__(self, config, tokenizer: Optional[text_lib.Tokenizer] = None, info: Any = None):
    self.config = config
    self.conditioning = config.bcos.conditioning
    self.prediction = config.diffusion.prediction
    self.schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    self._info = info
    if self.conditioning == 'text':
      if tokenizer is None:
        # Shapes and CelebA have fixed vocabularies: no need to open the dataset.
        needs_info = config.data.name not in ('patronus_shapes', 'celeb_a')
        tokenizer = build_tokenizer(config, info=self.info if needs_info else None)
      self.tokenizer = tokenizer
    else:
      self.tokenizer = None
    vocab = self.tokenizer.vocab_size if self.tokenizer is not None else 0
    self.model: BcosDiffusion = bcos_model_from_config(config, vocab)

  @property
  def info(self):
    """The dataset's DatasetInfo (opened on first use; None when it cannot be opened)."""
    if self._info is None:
      self._info = _dataset_info(self.config.data)
    return self._info

  @info.setter
  def info(self, value):
    self._info = value

  # ------------------------------------------------------------------ host side

  def captions(self, batch: dict) -> list[str]:
    if 'caption' in batch:
      return [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(batch['caption']).ravel()]
    if 'attributes' not in batch or self.info is None:
      raise ValueError("text conditioning needs batch['caption'] (or 'attributes' and the dataset "
                       'info to build captions from)')
    return captions_for(self.config.data.name, batch['attributes'], self.info.attribute_names,
                        getattr(self.info, 'attribute_values', None))

  def encode_prompts(self, prompts) -> np.ndarray:
    """Token ids (N, max_tokens) int32 of prompts."""
    return self.tokenizer.encode_batch(list(prompts), self.config.bcos.max_tokens)[0]

  def prepare_batch(self, batch: dict) -> dict:
    """Numpy batch -> numpy arrays only: image float32 NHWC, token ids / embeddings."""
    image = np.asarray(batch['image'], np.float32)
    expected = (self.config.data.image_size, self.config.data.image_size, self.config.data.channels)
    if image.ndim != 4 or image.shape[1:] != expected:
      raise ValueError(f'BcosTask: images must be (B, {", ".join(map(str, expected))}), '
                       f'got {image.shape}')
    out = {'image': image}
    if self.conditioning == 'text':
      out['token_ids'] = self.encode_prompts(self.captions(batch))
    elif self.conditioning == 'external':
      if 'text_embedding' not in batch:
        raise ValueError("bcos.conditioning='external' needs batch['text_embedding'] "
                         f'(B, L, {self.config.bcos.external_dim}) from the external text encoder')
      emb = np.asarray(batch['text_embedding'], np.float32)
      if emb.ndim != 3 or emb.shape[-1] != self.config.bcos.external_dim:
        raise ValueError(f'text_embedding must be (B, L, {self.config.bcos.external_dim}), got {emb.shape}')
      out['text_embedding'] = emb
      out['text_mask'] = np.asarray(batch.get('text_mask', np.ones(emb.shape[:2], bool)), bool)
    return out

  # ------------------------------------------------------------------ device side

  def condition(self, batch: dict, key: Optional[jax.Array] = None, train: bool = False) -> dict:
    """The model's `cond` dict of a prepared batch (word dropout when training)."""
    if self.conditioning == 'text':
      ids = batch['token_ids']
      p = self.config.bcos.token_dropout
      if train and (p > 0 or self.config.bcos.token_subsample > 0) and key is not None:
        drop = jax.random.uniform(key, ids.shape) < self.drop_probability(ids)
        if self.tokenizer.start_id is not None:
          drop &= ids != self.tokenizer.start_id  # the start token is always there
        ids = jnp.where(drop, 0, ids)
      return {'token_ids': ids}
    if self.conditioning == 'external':
      return {'text_embedding': batch['text_embedding'], 'text_mask': batch['text_mask']}
    if self.conditioning == 'prototypes':
      return {'s': batch['s']} if 's' in batch else {'x0': batch['image']}
    return {}

  def drop_probability(self, ids: jax.Array) -> jax.Array:
    """Training word-dropout probability of every token of `ids` (B, L): `token_dropout`, raised
    for words frequent in this batch's captions when `token_subsample` = t > 0 (word2vec's
    subsampling, 1 - sqrt(t / f) for a word in a fraction f of the captions). The batch's own
    frequencies need no pass over the data; under a data-parallel mesh f is the global batch's."""
    p = jnp.float32(self.config.bcos.token_dropout)
    t = self.config.bcos.token_subsample
    if t <= 0:
      return jnp.full(ids.shape, p)
    vocab = self.tokenizer.vocab_size
    present = jnp.zeros((ids.shape[0], vocab), jnp.float32).at[
        jnp.arange(ids.shape[0])[:, None], ids].max(1.0)  # captions containing each word
    freq = jnp.mean(present, axis=0)[ids]  # (B, L); > 0 for every word present
    return jnp.maximum(p, 1.0 - jnp.sqrt(t / jnp.maximum(freq, 1e-6)))

  def init_variables(self, key: jax.Array, batch: dict) -> dict:
    x = jnp.asarray(batch['image'])
    t = jnp.zeros((x.shape[0],), jnp.int32)
    cond = jax.tree_util.tree_map(jnp.asarray, self.condition(batch))
    return dict(self.model.init(key, x, t, cond))

  def apply(self, params, variables: dict, x_t, t, cond, explain: bool = False):
    return self.model.apply({'params': params, **variables}, x_t, t, cond, explain=explain)

  def loss_fn(self, params, variables: dict, batch: dict, key: jax.Array, train: bool):
    """(simple diffusion loss, {'loss', 'mse_eps'/'mse_x0'})."""
    drop_key, loss_key = jax.random.split(key)
    cond = self.condition(batch, drop_key, train)
    denoise = lambda x_t, t: self.apply(params, variables, x_t, t, cond)
    loss = diffusion.diffusion_loss(denoise, self.schedule, batch['image'].astype(jnp.float32),
                                    loss_key, self.prediction, self.config.diffusion.min_snr_gamma,
                                    self.config.diffusion.min_snr_floor, self.config.diffusion.edge_weight)
    return loss, {'loss': loss}

  # ------------------------------------------------------------------ sampling

  def denoise_fn(self, params, variables: dict, cond: dict, explain: bool = False):
    return lambda x_t, t: self.apply(params, variables, x_t, t, cond, explain)

  def sample(self, params, variables: dict, cond: dict, x_T: jax.Array, num_steps: int = 0,
             trajectory: bool = False):
    """Deterministic DDIM (eta = 0) from x_T; with `trajectory`, also x_t at every step
    (S, B, H, W, C) in sampling order and the int32 timestep of each step (S,)."""
    num_steps = num_steps or self.config.diffusion.sample_steps
    fn = self.denoise_fn(params, variables, cond)
    if not trajectory:
      return diffusion.ddim_sample(fn, self.schedule, x_T, num_steps=num_steps, eta=0.0,
                                   prediction=self.prediction)
    x0, (xs, ts) = diffusion.ddim_sample(
        fn, self.schedule, x_T, num_steps=num_steps, eta=0.0, prediction=self.prediction,
        trajectory_fn=lambda x_t, x0_hat, t: (x_t, t[0]))
    return x0, xs, ts




# ----------------------------------------------------------------------------- evaluation

def generation_batches(config, token_ids: np.ndarray, seed: int, batch_size: int):
  """(start, n, ids, x_T) of each batch of `generate`: the last batch padded to `batch_size` (one
  compiled shape), x_T from `seed` folded with the batch's start; explanations of the same
  generations (`adherence.py`) draw the same x_T from here."""
  size, c = config.data.image_size, config.data.channels
  for start in range(0, len(token_ids), batch_size):
    ids = np.asarray(token_ids[start:start + batch_size])
    n = len(ids)
    if n < batch_size and start > 0:
      ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - n, axis=0)])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
    yield start, n, jnp.asarray(ids), jax.random.normal(key, (len(ids), size, size, c))


def generate(task: BcosTask, params, variables: dict, token_ids: np.ndarray, *, seed: int = 0,
             num_steps: int = 0, batch_size: int = 64) -> np.ndarray:
  """Images (N, H, W, C) in [-1, 1] for prompts given as token ids, deterministic DDIM."""
  fn = jax.jit(lambda p, v, ids, x: task.sample(p, v, {'token_ids': ids}, x, num_steps))
  out = [np.asarray(fn(params, variables, ids, x_T))[:n]
         for _, n, ids, x_T in generation_batches(task.config, token_ids, seed, batch_size)]
  return np.concatenate(out)


def prompt_adherence(predicted: dict, attributes: np.ndarray, attribute_names) -> dict:
  """Accuracy of the classifier's attributes of generations against their prompts' labels.

  `predicted`: {name: (N, K) probabilities or (N,) labels}; `attributes`: (N, A) prompt labels.
  Returns {'accuracy': {name: acc}, 'mean_accuracy', and for shapes 'color_and_shape'}.
  """
  attributes = np.asarray(attributes)
  labels = {n: np.asarray(v).argmax(-1) if np.asarray(v).ndim == 2 else np.asarray(v)
            for n, v in predicted.items()}
  acc = {n: float(np.mean(labels[n] == attributes[:, i])) for i, n in enumerate(attribute_names)
         if n in labels}
  out = dict(accuracy=acc, mean_accuracy=float(np.mean(list(acc.values()))) if acc else None,
             num_prompts=int(len(attributes)))
  names = list(attribute_names)
  if 'color' in labels and 'shape' in labels and 'color' in names and 'shape' in names:
    both = (labels['color'] == attributes[:, names.index('color')]) & (
        labels['shape'] == attributes[:, names.index('shape')])
    out['color_and_shape'] = float(np.mean(both))
  return out


def vocabulary_path(workdir: str) -> str:
  return os.path.join(workdir, 'bcos_vocabulary.json')


def load_trained(config, workdir: str, use_ema: bool = True):
  """(task, params, other variables, step) of the trained B-cos model of a workdir."""
  tokenizer = None
  if config.bcos.conditioning == 'text' and os.path.exists(vocabulary_path(workdir)):
    tokenizer = text_lib.Tokenizer.load(vocabulary_path(workdir))
  task = BcosTask(config, tokenizer=tokenizer)
  size, c = config.data.image_size, config.data.channels
  example = {'image': np.zeros((1, size, size, c), np.float32)}
  if task.conditioning == 'text':
    example['token_ids'] = np.zeros((1, config.bcos.max_tokens), np.int32)
  elif task.conditioning == 'external':
    example['text_embedding'] = np.zeros((1, config.bcos.max_tokens, config.bcos.external_dim), np.float32)
    example['text_mask'] = np.ones((1, config.bcos.max_tokens), bool)
  cond = jax.tree_util.tree_map(jnp.asarray, task.condition(example))
  args = (jnp.asarray(example['image']), jnp.zeros((1,), jnp.int32), cond)
  variables, step, _ = load_for_inference(task.model, workdir, task.name, args, what='bcos',
                                          use_ema=use_ema and config.train.ema_decay > 0)
  variables = jax.device_get(variables)
  params = variables.pop('params')
  return task, params, variables, step
