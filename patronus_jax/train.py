"""Training: the train state, pure jitted steps, and the loops of both Patronus stages.

Stage 1 (`train_stage1`, paper Sec. 3.2): the prototype encoder and the U-Net are trained
jointly on  E ||eps - eps_theta(x_t, t, s(x_0))||^2  with s computed from the clean image
(gradients flow into the encoder), optionally plus the prototype-distinct loss.
Stage 2 (`train_latent`): the stage-1 encoder is frozen, s is computed over the training
set, standardised (statistics stored with the checkpoint), and the latent UNet1D learns
p(s) with the same epsilon objective.

Any model trains through `run_training(task, ...)`, given a `Task` (init, loss, batch
preparation): the loop owns the optimizer (AdamW + warm-up + clipping), the EMA, the mesh,
checkpoints and resumption (bit-identical on CPU), SIGTERM, NaN detection, metric writers,
progress lines and periodic sample grids. The B-cos model is one more Task.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
from typing import Any, Callable, Optional, Protocol

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from patronus_jax import checkpoint as ckpt_lib
from patronus_jax import diffusion
from patronus_jax import io
from patronus_jax import sharding
from patronus_jax import workdir as workdir_lib
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.models.latent import latent_from_config
from patronus_jax.models.unet import patronus_from_config


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step. The last good checkpoint is kept."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint of the current step was written."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer steps taken
  params: Any
  ema_params: Any  # exponential moving average of params (used for sampling)
  opt_state: Any
  variables: Any  # non-trainable collections (e.g. 'buffers'): constant during training
  rng: jax.Array  # raw PRNG key data; step keys are fold_in(rng, step)
  extras: Any  # constant arrays kept with the checkpoint (e.g. latent normalisation)

  def inference_variables(self, use_ema: bool = True) -> dict:
    return {'params': self.ema_params if use_ema else self.params, **self.variables}


class Task(Protocol):
  """What a model contributes to `run_training`."""
  name: str  # checkpoints in workdir/checkpoints/<name>

  def prepare_batch(self, batch: dict) -> dict:
    """Host side: a data-layer batch -> numpy arrays for the device."""

  def init_variables(self, key: jax.Array, batch: dict) -> dict:
    """{'params': ..., other collections...} for a prepared batch."""

  def loss_fn(self, params, variables: dict, batch: dict, key: jax.Array, train: bool):
    """Pure: (scalar loss, dict of scalar metrics)."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How long and how a task trains (from `config.train` or `config.latent`)."""
  batch_size: int
  num_steps: int
  learning_rate: float
  warmup_steps: int = 0
  lr_schedule: str = 'constant'
  weight_decay: float = 0.0
  grad_clip: float = 0.0
  ema_decay: float = 0.0
  log_every: int = 50
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  sample_every: int = 0

  @classmethod
  def from_section(cls, section) -> 'LoopSettings':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: section[k] for k in section.keys() if k in names})


# ----------------------------------------------------------------------------- pure parts

def learning_rate_schedule(s: LoopSettings) -> optax.Schedule:
  """Linear warm-up from 0 to the learning rate, then constant (the paper uses a constant rate)
  or, with lr_schedule='cosine', a cosine decay to 0 at num_steps (short runs end sharper)."""
  if s.lr_schedule == 'cosine':
    after = optax.cosine_decay_schedule(s.learning_rate, max(1, s.num_steps - s.warmup_steps))
  else:
    after = optax.constant_schedule(s.learning_rate)
  if s.warmup_steps > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, s.learning_rate, s.warmup_steps), after],
                                [s.warmup_steps])
  return after


def make_optimizer(s: LoopSettings) -> optax.GradientTransformation:
  """AdamW (torch defaults: betas (0.9, 0.999), eps 1e-8) with optional global-norm clipping."""
  tx = optax.adamw(learning_rate_schedule(s), b1=0.9, b2=0.999, eps=1e-8, weight_decay=s.weight_decay)
  return optax.chain(optax.clip_by_global_norm(s.grad_clip), tx) if s.grad_clip > 0 else tx


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): the average is useful after few steps too."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def create_train_state(task: Task, tx: optax.GradientTransformation, key: jax.Array, batch: dict,
                       extras: Any = None) -> TrainState:
  init_key, rng = jax.random.split(key)
  variables = dict(task.init_variables(init_key, batch))
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params), opt_state=tx.init(params),
                    variables=variables, rng=rng, extras=extras if extras is not None else {})


def train_step(state: TrainState, batch: dict, *, task: Task, tx: optax.GradientTransformation,
               ema_decay: float):
  """One optimizer step: (state, batch) -> (state, metrics). Pure; jit it."""
  key = jax.random.fold_in(state.rng, state.step)
  loss = functools.partial(training_loss, task=task, state=state, batch=batch, key=key)
  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if ema_decay > 0:
    d = ema_decay_at(state.step, ema_decay)
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
  else:
    ema = params
  metrics = {**metrics, 'loss': value, 'grad_norm': optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics


def training_loss(params, *, task: Task, state: TrainState, batch: dict, key: jax.Array):
  """(loss, metrics) of `params` on `batch` in training mode: what `train_step` differentiates."""
  return task.loss_fn(params, {**state.variables, **_extras_collection(state)}, batch, key, True)


def _extras_collection(state: TrainState) -> dict:
  return {'extras': state.extras} if state.extras else {}


# ----------------------------------------------------------------------------- the loop

class _Preemption:
  """Turns SIGTERM into a flag the loop checks every step (then checkpoints and stops)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: checkpointing at the end of this step.')
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      # All hosts must agree on the step at which they save.
      return self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _writer(workdir: str):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(
      os.path.join(workdir, 'tensorboard'), just_logging=jax.process_index() > 0)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def _state_shardings(state: TrainState, mesh) -> TrainState:
  rep = sharding.replicated(mesh)
  return TrainState(
      step=rep, params=sharding.state_shardings(state.params, mesh),
      ema_params=sharding.state_shardings(state.ema_params, mesh),
      opt_state=sharding.state_shardings(state.opt_state, mesh),
      variables=jax.tree_util.tree_map(lambda _: rep, state.variables), rng=rep,
      extras=jax.tree_util.tree_map(lambda _: rep, state.extras))


def run_training(task: Task, settings: LoopSettings, workdir: str, make_data_iterator: Callable[[], Any],
                 *, seed: int, mesh, extras: Any = None, meta: Optional[dict] = None,
                 sample_fn: Optional[Callable[[TrainState], np.ndarray]] = None,
                 process_data_state: bool = True) -> TrainState:
  """Trains `task` to `settings.num_steps`, resuming from the latest good checkpoint.

  `make_data_iterator()` returns an iterator of this process's (unprepared) batches with
  get_state()/set_state(). `sample_fn(state)` returns images to save every `sample_every` steps.
  Returns the final state (replicated/sharded on `mesh`).
  """
  sharding.check_batch_size(settings.batch_size, mesh,
                            'latent.batch_size' if task.name == 'latent' else 'train.batch_size')
  tx = make_optimizer(settings)
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(workdir, task.name), settings.keep_checkpoints)
  data_iter = make_data_iterator()
  start_state = data_iter.get_state()
  example = task.prepare_batch(next(data_iter))
  data_iter.set_state(start_state)

  rep = sharding.replicated(mesh)
  example_global = sharding.global_batch(example, mesh)
  init = functools.partial(create_train_state, task, tx)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(seed), example_global, extras)
  shardings = _state_shardings(abstract, mesh)
  abstract = ckpt_lib.abstract_like(abstract, shardings)

  restored = checkpointer.restore(abstract)
  if restored is not None:
    step, state, data_state, _ = restored
    if process_data_state and data_state:
      data_iter.set_state(data_state.get(str(jax.process_index()), data_state))
    logging.info('%s: resumed from step %d of %s.', task.name, step, checkpointer.directory)
  else:
    t0 = time.time()
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed), example_global, extras)
    jax.block_until_ready(state)
    logging.info('%s: initialised in %.1fs (%d parameters).', task.name, time.time() - t0,
                 sum(x.size for x in jax.tree_util.tree_leaves(state.params)))

  start = int(state.step)
  if start >= settings.num_steps:
    logging.info('%s: already trained (%d >= %d steps); nothing to do.', task.name, start, settings.num_steps)
    checkpointer.close()
    return state

  donate = (0,) if jax.default_backend() != 'cpu' else ()
  step_fn = jax.jit(functools.partial(train_step, task=task, tx=tx, ema_decay=settings.ema_decay),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, rep), donate_argnums=donate)
  writer = _writer(workdir) if jax.process_index() == 0 else None
  lr_fn = learning_rate_schedule(settings)
  pending: list = []  # (step, metrics) not yet fetched from the device
  last_good = start
  t_log, step_log = None, start

  def data_state():
    state_ = data_iter.get_state()
    return {str(jax.process_index()): state_} if jax.process_count() > 1 else state_

  def flush(step: int):
    nonlocal pending, t_log, step_log, last_good
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not np.isfinite(m['loss']):
        raise NonFiniteLossError(
            f'{task.name}: the loss is {m["loss"]} at step {s} (after {s - 1} good steps); '
            f'stopping. The last good checkpoint (step {last_good}) is kept in {checkpointer.directory}.')
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.time()
    rate = (step - step_log) / (now - t_log) if t_log is not None and now > t_log else float('nan')
    t_log, step_log = now, step
    means.update(learning_rate=float(lr_fn(step)), steps_per_sec=rate,
                 examples_per_sec=rate * settings.batch_size)
    eta = (settings.num_steps - step) / rate if rate == rate and rate > 0 else float('nan')
    logging.info('%s step %d/%d (%.0f%%) loss %.5f lr %.2e %.2f steps/s %.1f ex/s ETA %s', task.name, step,
                 settings.num_steps, 100 * step / settings.num_steps, means['loss'], means['learning_rate'],
                 rate, means['examples_per_sec'], _format_eta(eta) if eta == eta else '?')
    if writer is not None:
      writer.write_scalars(step, {f'{task.name}/{k}': v for k, v in means.items() if v == v})
    pending = []

  def save(step: int, force: bool = False):
    nonlocal last_good
    flush(step)  # never checkpoint a state whose loss went non-finite
    checkpointer.save(step, state, data_state(), dict(meta or {}, stage=task.name, step=step), force=force)
    last_good = step

  logging.info('%s: training steps %d..%d, global batch %d on %d devices (mesh %s).', task.name, start,
               settings.num_steps, settings.batch_size, jax.device_count(), dict(mesh.shape))
  with _Preemption() as preemption:
    try:
      for step in range(start + 1, settings.num_steps + 1):
        batch = sharding.global_batch(task.prepare_batch(next(data_iter)), mesh)
        state, metrics = step_fn(state, batch)
        pending.append((step, metrics))
        if step == start + 1:
          jax.block_until_ready(metrics)  # the first step includes compilation
          t_log, step_log = time.time(), step
          flush_first = pending.pop()
          if not np.isfinite(float(flush_first[1]['loss'])):
            raise NonFiniteLossError(f'{task.name}: the loss is {float(flush_first[1]["loss"])} at step {step}; '
                                     f'stopping. The last good checkpoint (step {last_good}) is kept.')
        if step % settings.log_every == 0:
          flush(step)
        if settings.sample_every and sample_fn is not None and step % settings.sample_every == 0:
          _save_samples(workdir, task.name, step, sample_fn(state), writer)
        if preemption.should_stop(step):
          save(step, force=True)
          checkpointer.wait()
          raise Preempted(f'{task.name}: stopped by SIGTERM at step {step}; checkpoint written.')
        if step % settings.checkpoint_every == 0 or step == settings.num_steps:
          save(step)
    finally:
      checkpointer.close()
      if writer is not None:
        writer.flush()
  return state


def _save_samples(workdir: str, stage: str, step: int, images: np.ndarray, writer) -> None:
  if jax.process_index() != 0 or images is None:
    return
  grid = io.save_image_grid(os.path.join(workdir, 'samples', f'{stage}_step_{step:07d}.png'), images)
  if writer is not None:
    writer.write_images(step, {f'{stage}/samples': grid[None]})


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
    return self.model.init({'params': key}, x, jnp.zeros((x.shape[0],), jnp.int32))

  def loss_fn(self, params, variables, batch, key, train):
    variables = {'params': params, **{k: v for k, v in variables.items() if k != 'extras'}}
    x0 = batch['image']
    diff_key, drop_key = jax.random.split(key)
    s = self.model.apply(variables, x0, method=self.model.encode).activations

    def denoise(x_t, t):
      return self.model.apply(variables, x_t, t, s, train, rngs={'dropout': drop_key},
                              method=self.model.denoise)

    d = self.config.diffusion
    loss = diffusion.diffusion_loss(denoise, self.schedule, x0, diff_key, d.prediction, d.min_snr_gamma,
                                    d.min_snr_floor)
    metrics = {'diffusion_loss': loss, 's_mean': jnp.mean(s), 's_std': jnp.std(s)}
    weight = self.config.train.distinct_loss_weight
    if weight > 0:
      distinct = proto_lib.prototype_distinct_loss(
          params['prototypes']['prototype_vectors'], self.config.train.distinct_margin)
      metrics['distinct_loss'] = distinct
      loss = loss + weight * distinct
    return loss, metrics


def image_iterator_factory(config, mesh):
  """Infinite shuffled stream of this process's share of the training batches."""
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  del mesh
  return lambda: data.make_iterator(config.data, config.data.train_split,
                                    global_batch_size=config.train.batch_size, seed=config.seed,
                                    shuffle=True, num_epochs=None)


def make_sample_fn(config, task: PatronusTask, mesh) -> Optional[Callable]:
  """Grid of held-out images (top) and images generated from their s (bottom) for monitoring."""
  if not config.train.sample_every:
    return None
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  from patronus_jax import sample as sample_lib  # pylint: disable=g-import-not-at-top
  n = config.train.num_sample_images
  real = data.load_arrays(config.data, config.data.eval_split, max_examples=n)['image']

  def fn(state: TrainState):
    variables = state.inference_variables(use_ema=config.train.ema_decay > 0)
    variables = jax.device_get(variables)
    generated = sample_lib.reconstruct(task.model, variables, jnp.asarray(real),
                                       jax.random.PRNGKey(config.seed + 1), config.diffusion)
    return np.concatenate([real, np.asarray(generated)], axis=0)

  return fn


def train_stage1(config, workdir: str, mesh) -> TrainState:
  """`--mode=train` for Patronus."""
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  info = data.get_info(config.data)
  expected = (config.data.image_size, config.data.image_size, config.data.channels)
  if tuple(info.image_shape) != expected:
    raise ValueError(f'dataset {info.name} yields images {info.image_shape}, the config expects {expected}')
  if info.bias_report is not None and jax.process_index() == 0:
    io.write_json(os.path.join(workdir, 'data_bias.json'), info.bias_report)
    logging.info('Planted bias: %s', info.bias_report)
  task = PatronusTask(config)
  settings = LoopSettings.from_section(config.train)
  return run_training(task, settings, workdir, image_iterator_factory(config, mesh), seed=config.seed,
                      mesh=mesh, meta={'config': workdir_lib.config_to_dict(config)},
                      sample_fn=make_sample_fn(config, task, mesh))


# ----------------------------------------------------------------------------- loading

def load_state(workdir: str, stage: str, mesh=None, step: Optional[int] = None) -> tuple[dict, int, dict]:
  """Restores a stage's checkpoint for inference: (state dict, step, meta). No template needed."""
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(workdir, stage), asynchronous=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f'no {stage} checkpoint in {ckpt_lib.stage_dir(workdir, stage)}: run '
          f'--mode={"train_latent" if stage == "latent" else "train"} first (or import one with '
          'python -m patronus_jax.convert)')
    tree = checkpointer.manager.item_metadata(step)['state']
    tree = getattr(tree, 'tree', tree)
    target = sharding.replicated(mesh) if mesh is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target), tree)
    _, state, _, meta = checkpointer.restore(abstract, step)
    return state, step, meta
  finally:
    checkpointer.close()


def inference_variables(state: dict, use_ema: bool = True) -> dict:
  """{'params': EMA (or raw) params, 'buffers': ...} from a restored state dict."""
  params = state['ema_params'] if use_ema else state['params']
  return {'params': params, **state.get('variables', {})}


def check_variables(model, variables: dict, example_args: tuple, what: str) -> None:
  """Fails with the offending paths when restored variables do not fit `model` (before compute)."""
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_args))
  exp = {'/'.join(str(getattr(k, 'key', k)) for k in p): v.shape
         for p, v in jax.tree_util.tree_leaves_with_path(dict(expected))}
  got = {'/'.join(str(getattr(k, 'key', k)) for k in p): tuple(v.shape)
         for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  missing = sorted(set(exp) - set(got))
  extra = sorted(set(got) - set(exp))
  wrong = sorted(k for k in set(exp) & set(got) if tuple(exp[k]) != tuple(got[k]))
  if missing or extra or wrong:
    lines = [f'the {what} checkpoint does not match the model the config describes:']
    lines += [f'  missing: {k} {tuple(exp[k])}' for k in missing[:20]]
    lines += [f'  unexpected: {k} {got[k]}' for k in extra[:20]]
    lines += [f'  shape: {k} checkpoint {got[k]} vs model {tuple(exp[k])}' for k in wrong[:20]]
    raise ValueError('\n'.join(lines))


def load_stage1_variables(config, workdir: str, use_ema: bool = True):
  """(model, variables, step) of the trained stage-1 model, checked against the config."""
  model = patronus_from_config(config, dtype='float32')
  state, step, _ = load_state(workdir, 'stage1')
  variables = inference_variables(state, use_ema and config.train.ema_decay > 0)
  size, c = config.data.image_size, config.data.channels
  check_variables(model, variables, (jnp.zeros((1, size, size, c)), jnp.zeros((1,), jnp.int32)), 'stage-1')
  return model, variables, step


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
    variables = {'params': params, **{k: v for k, v in variables.items() if k != 'extras'}}
    diff_key, drop_key = jax.random.split(key)
    denoise = lambda z, t: self.model.apply(variables, z, t, train, rngs={'dropout': drop_key})
    loss = diffusion.diffusion_loss(denoise, self.schedule, batch['s'], diff_key)
    return loss, {}


def array_iterator(arrays: dict, global_batch_size: int, seed: int, process_index: Optional[int] = None,
                   process_count: Optional[int] = None):
  """Endless, reshuffled-per-epoch, per-process batches of in-memory arrays (grain, checkpointable)."""
  import grain  # pylint: disable=g-import-not-at-top
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  n = len(next(iter(arrays.values())))
  if n < global_batch_size:
    raise ValueError(f'{n} examples are fewer than one global batch of {global_batch_size}')
  rows = grain.MapDataset.range(n).shuffle(seed=seed % 2**32).repeat(None)
  if process_count > 1:
    rows = rows[process_index::process_count]
  ds = rows.map(lambda i: {k: v[i] for k, v in arrays.items()})
  return iter(ds.to_iter_dataset().batch(global_batch_size // process_count))


def compute_activations(config, model, variables, split: str, batch_size: int = 256,
                        max_examples: Optional[int] = None) -> dict:
  """s (and attributes) of every example of a split, in order, streamed (progress lines)."""
  from patronus_jax import data  # pylint: disable=g-import-not-at-top
  info = data.get_info(config.data)
  total = info.num_examples.get(split)
  if max_examples is not None:
    total = min(total, max_examples) if total else max_examples
  it = data.make_iterator(config.data, split, global_batch_size=batch_size, seed=0, shuffle=False,
                          num_epochs=1, drop_remainder=False, process_index=0, process_count=1)
  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode).activations)
  s_all, attrs, done, t0, last = [], [], 0, time.time(), time.time()
  for batch in it:
    images = batch['image']
    if max_examples is not None:
      images = images[:max_examples - done]
    if len(images) == 0:
      break
    pad = batch_size - len(images)
    x = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]) if pad else images
    s_all.append(np.asarray(encode(variables, x))[:len(images)])
    attrs.append(batch['attributes'][:len(images)])
    done += len(images)
    if time.time() - last > 10 or (total and done >= total):
      last = time.time()
      logging.info('computing s over %s: %d/%s images (%.0f images/s)', split, done, total or '?',
                   done / max(last - t0, 1e-9))
    if max_examples is not None and done >= max_examples:
      break
  return {'s': np.concatenate(s_all).astype(np.float32), 'attributes': np.concatenate(attrs)}


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
      with io.atomic_path(cache) as tmp:
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


def load_latent(config, workdir: str, use_ema: bool = True):
  """(model, variables, stats {'s_mean','s_std'}, step) of the trained latent model."""
  model = latent_from_config(config, dtype='float32')
  state, step, _ = load_state(workdir, 'latent')
  variables = inference_variables(state, use_ema and config.latent.ema_decay > 0)
  p = config.model.num_prototypes
  check_variables(model, variables, (jnp.zeros((1, p)), jnp.zeros((1,), jnp.int32)), 'latent')
  stats = {k: np.asarray(v) for k, v in state['extras'].items()}
  return model, variables, stats, step


# ----------------------------------------------------------------------------- imports

def write_imported_state(stage: str, workdir: str, config, variables: dict, source: str) -> int:
  """Saves imported weights as a finished checkpoint of `stage` (so later modes just load it)."""
  workdir_lib.check_and_write_config(workdir, config)
  variables = dict(variables)
  params = variables.pop('params')
  if stage == 'stage1':
    settings = LoopSettings.from_section(config.train)
    extras = {}
  else:
    settings = LoopSettings.from_section(config.latent)
    p = config.model.num_prototypes
    extras = {'s_mean': jnp.zeros((p,), jnp.float32), 's_std': jnp.ones((p,), jnp.float32)}
  tx = make_optimizer(settings)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  state = TrainState(step=jnp.asarray(settings.num_steps, jnp.int32), params=params, ema_params=params,
                     opt_state=tx.init(params), variables=jax.tree_util.tree_map(jnp.asarray, variables),
                     rng=jax.random.PRNGKey(config.seed), extras=extras)
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(workdir, stage), asynchronous=False)
  checkpointer.save(settings.num_steps, state, {}, {'stage': stage, 'imported_from': source,
                                                    'config': workdir_lib.config_to_dict(config)}, force=True)
  checkpointer.close()
  return settings.num_steps
