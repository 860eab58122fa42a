"""The B-cos diffusion training task (the `Task` protocol of patronus_jax/train.py).

    task = BcosTask(config)
    batch = task.prepare_batch(numpy_batch)              # captions -> token ids, host side
    variables = task.init_variables(key, batch)          # {'params': ..., maybe 'buffers'}
    loss, metrics = task.loss_fn(params, rest, batch, key, train=True)

The loss is the simple diffusion loss of Ho et al. (MSE to eps, or to x0 for
`diffusion.prediction='x0'`) at t ~ U{1..T-1}; the conditioning is whatever `bcos.conditioning`
names (word tokens of the captions by default). `sample` generates with deterministic DDIM.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import diffusion
from patronus_jax import text as text_lib
from patronus_jax.models.bcos_unet import BcosDiffusion, bcos_model_from_config


def _dataset_info(data_config):
  try:
    from patronus_jax.data import get_info  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    return get_info(data_config)
  except Exception:  # pylint: disable=broad-except
    return None  # the data may not be prepared yet; captions then come from the batch


def build_tokenizer(config, captions=None, info=None) -> text_lib.Tokenizer:
  """The dataset's tokenizer (fixed vocabularies for shapes / CelebA, else from captions)."""
  names = tuple(info.attribute_names) if info is not None else None
  if config.data.name not in ('patronus_shapes', 'celeb_a') and captions is None:
    from patronus_jax.data import load_arrays  # pylint: disable=g-import-not-at-top
    arrays = load_arrays(config.data, config.data.train_split)
    if 'caption' not in arrays:
      raise ValueError(f"dataset {config.data.name!r} has no captions: text conditioning needs "
                       "them (or use bcos.conditioning='prototypes'/'external'/'none')")
    captions = [str(c) for c in arrays['caption']]
  return text_lib.tokenizer_for(config.data.name, captions, names, config.bcos.vocab_max_size)


class BcosTask:
  """Trains the B-cos U-Net on (image, caption) batches."""

  name = 'bcos'

  def __init__(self, config, tokenizer: Optional[text_lib.Tokenizer] = None, info: Any = None):
    self.config = config
    self.conditioning = config.bcos.conditioning
    self.prediction = config.diffusion.prediction
    self.schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    self.info = info
    if self.conditioning == 'text':
      if tokenizer is None:
        self.info = info if info is not None else _dataset_info(config.data)
        tokenizer = build_tokenizer(config, info=self.info)
      self.tokenizer = tokenizer
    else:
      self.tokenizer = None
    vocab = self.tokenizer.vocab_size if self.tokenizer is not None else 0
    self.model: BcosDiffusion = bcos_model_from_config(config, vocab)

  # ------------------------------------------------------------------ host side

  def captions(self, batch: dict) -> list[str]:
    if 'caption' in batch:
      return [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(batch['caption']).ravel()]
    if 'attributes' not in batch or self.info is None:
      raise ValueError("text conditioning needs batch['caption'] (or 'attributes' and the dataset "
                       'info to build captions from)')
    return text_lib.captions_for(self.config.data.name, batch['attributes'],
                                 self.info.attribute_names, getattr(self.info, 'attribute_values', None))

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
      if train and p > 0 and key is not None:
        ids = jnp.where(jax.random.bernoulli(key, p, ids.shape), 0, ids)
      return {'token_ids': ids}
    if self.conditioning == 'external':
      return {'text_embedding': batch['text_embedding'], 'text_mask': batch['text_mask']}
    if self.conditioning == 'prototypes':
      return {'s': batch['s']} if 's' in batch else {'x0': batch['image']}
    return {}

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
                                    loss_key, self.prediction)
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


def make_task(config, **kwargs) -> BcosTask:
  return BcosTask(config, **kwargs)
