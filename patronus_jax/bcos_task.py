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
                                    self.config.diffusion.min_snr_floor)
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


# ----------------------------------------------------------------------------- evaluation

def generate(task: BcosTask, params, variables: dict, token_ids: np.ndarray, *, seed: int = 0,
             num_steps: int = 0, batch_size: int = 64) -> np.ndarray:
  """Images (N, H, W, C) in [-1, 1] for prompts given as token ids, deterministic DDIM."""
  size, c = task.config.data.image_size, task.config.data.channels
  fn = jax.jit(lambda p, v, ids, x: task.sample(p, v, {'token_ids': ids}, x, num_steps))
  out = []
  for start in range(0, len(token_ids), batch_size):
    ids = np.asarray(token_ids[start:start + batch_size])
    n = len(ids)
    if n < batch_size and start > 0:  # keep one compiled shape: pad the last batch
      ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - n, axis=0)])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
    x_T = jax.random.normal(key, (len(ids), size, size, c))
    out.append(np.asarray(fn(params, variables, jnp.asarray(ids), x_T))[:n])
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


# ----------------------------------------------------------------------------- modes

def _check_image_shape(config, info) -> None:
  expected = (config.data.image_size, config.data.image_size, config.data.channels)
  if tuple(info.image_shape) != expected:
    raise ValueError(f'dataset {info.name} yields images {tuple(info.image_shape)}, the config expects {expected}')


def vocabulary_path(workdir: str) -> str:
  import os  # pylint: disable=g-import-not-at-top
  return os.path.join(workdir, 'bcos_vocabulary.json')


def train_mode(config, workdir: str, mesh):
  """`--mode=train` for model_type='bcos': the Task through the shared training loop."""
  import os  # pylint: disable=g-import-not-at-top
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  from patronus_jax import train  # pylint: disable=g-import-not-at-top
  from patronus_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  info = data.get_info(config.data)
  _check_image_shape(config, info)
  task = BcosTask(config, info=info)
  if task.tokenizer is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    task.tokenizer.save(vocabulary_path(workdir))
  sample_fn = None
  if config.train.sample_every and task.conditioning == 'text':
    arrays = data.load_arrays(config.data, config.data.eval_split,
                              max_examples=config.train.num_sample_images)
    ids = task.encode_prompts(task.captions(arrays))

    def sample_fn(state):
      params = jax.device_get(state.ema_params if config.train.ema_decay > 0 else state.params)
      gen = generate(task, params, jax.device_get(state.variables), ids, seed=config.seed + 1,
                     batch_size=len(ids))
      return np.concatenate([arrays['image'], gen], axis=0)

  return train.run_training(task, train.LoopSettings.from_section(config.train), workdir,
                            train.image_iterator_factory(config, mesh), seed=config.seed, mesh=mesh,
                            meta={'config': workdir_lib.config_to_dict(config)}, sample_fn=sample_fn)


def load_trained(config, workdir: str, use_ema: bool = True):
  """(task, params, other variables, step) of the trained B-cos model of a workdir."""
  import os  # pylint: disable=g-import-not-at-top
  from patronus_jax import train  # pylint: disable=g-import-not-at-top
  tokenizer = None
  if config.bcos.conditioning == 'text' and os.path.exists(vocabulary_path(workdir)):
    tokenizer = text_lib.Tokenizer.load(vocabulary_path(workdir))
  task = BcosTask(config, tokenizer=tokenizer)
  state, step, _ = train.load_state(workdir, task.name)
  variables = jax.device_get(train.inference_variables(state, use_ema and config.train.ema_decay > 0))
  size, c = config.data.image_size, config.data.channels
  example = {'image': np.zeros((1, size, size, c), np.float32)}
  if task.conditioning == 'text':
    example['token_ids'] = np.zeros((1, config.bcos.max_tokens), np.int32)
  elif task.conditioning == 'external':
    example['text_embedding'] = np.zeros((1, config.bcos.max_tokens, config.bcos.external_dim), np.float32)
    example['text_mask'] = np.ones((1, config.bcos.max_tokens), bool)
  cond = jax.tree_util.tree_map(jnp.asarray, task.condition(example))
  train.check_variables(task.model, variables,
                        (jnp.asarray(example['image']), jnp.zeros((1,), jnp.int32), cond), 'bcos')
  params = variables.pop('params')
  return task, params, variables, step


def _classifier(config, workdir: str):
  try:
    from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return classifier_for_workdir(config, workdir)[0]


def explain_mode(config, workdir: str, mesh):
  """`--mode=explain`: exact explanations of generations -> workdir/explain/."""
  del mesh
  from absl import logging  # pylint: disable=g-import-not-at-top
  from patronus_jax.interpret import bcos as explain_lib  # pylint: disable=g-import-not-at-top
  task, params, variables, step = load_trained(config, workdir)
  classifier = _classifier(config, workdir) if config.data.name == 'patronus_shapes' else None
  report = explain_lib.explain_workdir(config, workdir, params, variables, classifier=classifier,
                                       task=task)
  s = report['summary']
  logging.info('explain (step %d): completeness error %.2e (%s), relevance content %.3f vs function %.3f',
               step, s['completeness_error'], 'ok' if s['completeness_ok'] else 'ABOVE TOLERANCE',
               s['content_word_relevance'] or float('nan'), s['function_word_relevance'] or float('nan'))
  if 'generation' in s:
    g = s['generation']
    logging.info('explain, whole generation: completeness error %.2e, relevance content %.3f vs '
                 'function %.3f', g['completeness_error'], g['content_word_relevance'] or float('nan'),
                 g['function_word_relevance'] or float('nan'))
  return report


def evaluate_mode(config, workdir: str, mesh):
  """`--mode=evaluate`: prompt adherence of generations (attribute classifier) -> metrics.json."""
  del mesh
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  from patronus_jax import io as pio  # pylint: disable=g-import-not-at-top
  from patronus_jax.evaluate import classifier as clf_lib  # pylint: disable=g-import-not-at-top
  task, params, variables, step = load_trained(config, workdir)
  if task.conditioning != 'text':
    raise ValueError("the B-cos evaluate mode measures prompt adherence: it needs bcos.conditioning='text'")
  info = data.get_info(config.data)
  task.info = info
  t0 = time.time()
  n = min(config.evaluate.num_samples, info.num_examples.get(config.data.eval_split, config.evaluate.num_samples))
  arrays = data.load_arrays(config.data, config.data.eval_split, max_examples=n)
  ids = task.encode_prompts(task.captions(arrays))
  images = generate(task, params, variables, ids, seed=config.seed, batch_size=config.evaluate.batch_size)
  classifier = _classifier(config, workdir)
  metrics = dict(step=step, prompt_adherence=prompt_adherence(
      clf_lib.predict(classifier, images), arrays['attributes'], info.attribute_names),
      sample_steps=config.diffusion.sample_steps, seconds=time.time() - t0)
  pio.save_image_grid(os.path.join(workdir, 'samples', 'bcos_eval.png'), images[:64])
  pio.write_json(os.path.join(workdir, 'metrics.json'), metrics)
  logging.info('B-cos prompt adherence: %s', metrics['prompt_adherence'])
  return metrics
