"""The generic training loop: the train state, the pure jitted step, and `run_training`.

Any model trains through `run_training(task, ...)`, given a `Task` (init, loss, batch
preparation): the loop owns the optimizer (AdamW + warm-up + clipping), the EMA, the mesh,
checkpoints and resumption (bit-identical on CPU), SIGTERM, NaN detection, metric writers,
progress lines and periodic sample grids. The Patronus stages (`tasks/patronus/training.py`)
and the B-cos model (`tasks/bcos/task.py`) are Tasks. `load_for_inference` restores a stage's
newest checkpoint for the later modes, checked against the model before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
from typing import Any, Callable, Optional, Protocol, Tuple

from absl import logging
import flax
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import files
from patronus_jax.core import sharding
from patronus_jax.core.errors import CheckpointError, CheckpointMismatch, UserError


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN/Inf; the message names the step. The last good checkpoint is kept."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint of the current step was written."""


# The collection of TrainState.variables that only a loss reads, never the model (e.g. the activations of
# earlier batches): a task's loss_fn returns its next value as metrics[MEMORY]; it is checkpointed with
# the state, so a resumed run equals an uninterrupted one, and left out of every inference variables.
MEMORY = 'memory'


def model_collections(variables: dict) -> dict:
  """The collections a model applies with: `variables` without the loop's 'extras' and MEMORY."""
  return {k: v for k, v in variables.items() if k not in ('extras', MEMORY)}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer steps taken
  params: Any
  ema_params: Any  # exponential moving average of params (used for sampling)
  opt_state: Any
  variables: Any  # non-trainable collections (e.g. 'buffers'): constant during training, except MEMORY
  rng: jax.Array  # raw PRNG key data; step keys are fold_in(rng, step)
  extras: Any  # constant arrays kept with the checkpoint (e.g. latent normalisation)

  def inference_variables(self, use_ema: bool = True) -> dict:
    return {'params': self.ema_params if use_ema else self.params, **model_collections(self.variables)}


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
  # (top-level parameter collection, multiplier) pairs: that subtree's updates are scaled (a
  # separate learning rate for one part of the model); the optimizer state keeps its structure
  lr_scales: Tuple[Tuple[str, float], ...] = ()
  # the optimizer step at which the schedule starts, and where it ends (0: num_steps): a fine-tuning
  # continues stage 1's optimizer state, whose step count is stage 1's, and may run in segments
  schedule_from: int = 0
  schedule_to: int = 0

  @classmethod
  def from_section(cls, section) -> 'LoopSettings':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: section[k] for k in section.keys() if k in names})


# ----------------------------------------------------------------------------- pure parts

LR_SCHEDULES = ('constant', 'cosine')  # what learning_rate_schedule implements (the configs' one_of)


def learning_rate_schedule(s: LoopSettings) -> optax.Schedule:
  """Linear warm-up from 0 to the learning rate, then constant (the paper uses a constant rate)
  or, with lr_schedule='cosine', a cosine decay to 0 at num_steps (short runs end sharper); both
  counted from `schedule_from` to `schedule_to` (0: num_steps) when set."""
  length = (s.schedule_to or s.num_steps) - s.schedule_from
  if s.lr_schedule == 'cosine':
    after = optax.cosine_decay_schedule(s.learning_rate, max(1, length - s.warmup_steps))
  else:
    after = optax.constant_schedule(s.learning_rate)
  if s.warmup_steps > 0:
    after = optax.join_schedules([optax.linear_schedule(0.0, s.learning_rate, s.warmup_steps), after],
                                 [s.warmup_steps])
  if s.schedule_from:
    return lambda count: after(count - s.schedule_from)
  return after


def make_optimizer(s: LoopSettings) -> optax.GradientTransformation:
  """AdamW (torch defaults: betas (0.9, 0.999), eps 1e-8) with optional global-norm clipping,
  and the updates of the subtrees named in `s.lr_scales` multiplied by their scale."""
  tx = optax.adamw(learning_rate_schedule(s), b1=0.9, b2=0.999, eps=1e-8, weight_decay=s.weight_decay)
  tx = optax.chain(optax.clip_by_global_norm(s.grad_clip), tx) if s.grad_clip > 0 else tx
  scales = {name: float(scale) for name, scale in s.lr_scales if float(scale) != 1.0}
  if not scales:
    return tx

  def update(grads, state, params=None):
    updates, state = tx.update(grads, state, params)
    missing = sorted(set(scales) - set(updates))
    if missing:
      raise ValueError(f'lr_scales name parameter collections the model does not have: {missing}; '
                       f'it has {sorted(updates)}')
    scaled = {k: jax.tree_util.tree_map(lambda u, c=scales.get(k, 1.0): u * c, v) for k, v in updates.items()}
    return type(updates)(scaled), state  # dict or FrozenDict, as the parameters

  # Same init (and so the same optimizer state) as without scales: checkpoints stay interchangeable.
  return optax.GradientTransformation(tx.init, update)


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
  memory = metrics.pop(MEMORY, None)
  variables = state.variables if memory is None else {**state.variables, MEMORY: memory}
  metrics = {**metrics, 'loss': value, 'grad_norm': optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state,
                       variables=variables), metrics


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
      # All hosts must agree on the step at which they save.
      return self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def metric_writer(workdir: str):
  """TensorBoard events in DIR/tensorboard from process 0 (other processes write nothing).

  Only the event files: the progress lines are the loop's own log lines (clu's default writer
  would log every scalar a second time).
  """
  from clu import metric_writers  # lazy: it imports TensorFlow (seconds), needed only once training runs
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard'))])


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def train_state_shardings(state: TrainState, mesh) -> TrainState:
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
  state, shardings = restore_or_init(task, tx, checkpointer, data_iter, seed=seed, mesh=mesh, extras=extras,
                                     process_data_state=process_data_state)
  start = int(state.step)
  if start >= settings.num_steps:
    logging.info('%s: already trained (%d >= %d steps); nothing to do.', task.name, start, settings.num_steps)
    checkpointer.close()
    return state
  step_fn = jit_train_step(task, tx, settings, shardings, mesh)
  log = MetricLog(task.name, settings, workdir, start, checkpointer.directory)
  logging.info('%s: training steps %d..%d, global batch %d on %d devices (mesh %s); compiling the step '
               '(the first step includes it: about a minute on a CPU).', task.name, start, settings.num_steps,
               settings.batch_size, jax.device_count(), dict(mesh.shape))
  with _Preemption() as preemption:
    try:
      state = train_steps(task, settings, state, step_fn, data_iter, checkpointer, log, preemption,
                          workdir=workdir, mesh=mesh, meta=meta, sample_fn=sample_fn)
    finally:
      checkpointer.close()
      log.close()
  return state


def restore_or_init(task: Task, tx: optax.GradientTransformation, checkpointer: ckpt_lib.Checkpointer, data_iter,
                    *, seed: int, mesh, extras: Any = None, process_data_state: bool = True):
  """(state, its shardings): the latest good checkpoint, with `data_iter` moved to where it stood,
  or a fresh state from `seed`. The first batch of `data_iter` gives the shapes; it is not consumed."""
  position = data_iter.get_state()
  example = task.prepare_batch(next(data_iter))
  data_iter.set_state(position)
  example_global = sharding.global_batch(example, mesh)
  init = functools.partial(create_train_state, task, tx)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(seed), example_global, extras)
  shardings = train_state_shardings(abstract, mesh)
  restored = checkpointer.restore(ckpt_lib.abstract_like(abstract, shardings))
  if restored is not None:
    step, state, data_state, _ = restored
    if process_data_state and data_state:
      data_iter.set_state(own_data_state(data_state, jax.process_index()))
    logging.info('%s: resumed from step %d of %s.', task.name, step, checkpointer.directory)
    return state, shardings
  logging.info('%s: no checkpoint in %s yet; initialising the parameters.', task.name, checkpointer.directory)
  t0 = time.time()
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed), example_global, extras)
  jax.block_until_ready(state)
  logging.info('%s: initialised in %.1fs (%d parameters).', task.name, time.time() - t0,
               sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
  return state, shardings


def jit_train_step(task: Task, tx: optax.GradientTransformation, settings: LoopSettings, shardings: TrainState,
                   mesh) -> Callable:
  """`train_step` jitted for `mesh`: state as `shardings`, batch split over the data axis, metrics
  replicated; the old state is donated except on CPU."""
  donate = (0,) if jax.default_backend() != 'cpu' else ()
  return jax.jit(functools.partial(train_step, task=task, tx=tx, ema_decay=settings.ema_decay),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=donate)


class MetricLog:
  """Step metrics kept on the device and fetched every `log_every` steps (fetching every step
  would stall the pipeline): the NaN check, the progress line and the metric writer."""

  def __init__(self, stage: str, settings: LoopSettings, workdir: str, start: int, checkpoint_dir: str):
    self.stage, self.settings, self.checkpoint_dir = stage, settings, checkpoint_dir
    self.writer = metric_writer(workdir) if jax.process_index() == 0 else None
    self.lr_fn = learning_rate_schedule(settings)
    self.start = start
    self.last_good = start  # step of the newest checkpoint, named when the loss goes non-finite
    self.pending: list = []  # (step, metrics) not yet fetched from the device
    self.t_log, self.step_log = None, start
    self.created = time.time()

  def record(self, step: int, metrics: dict) -> None:
    if step != self.start + 1:
      self.pending.append((step, metrics))
      return
    # The first step includes compilation: it starts the clock and is checked but not averaged.
    jax.block_until_ready(metrics)
    logging.info('%s: first step (compilation included) done in %.1fs; progress every %d steps.', self.stage,
                 time.time() - self.created, self.settings.log_every)
    self.t_log, self.step_log = time.time(), step
    if not np.isfinite(float(metrics['loss'])):
      raise NonFiniteLossError(f'{self.stage}: the loss is {float(metrics["loss"])} at step {step}; '
                               f'stopping. The last good checkpoint (step {self.last_good}) is kept.')

  def flush(self, step: int) -> None:
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    for (s, _), m in zip(self.pending, fetched):
      if not np.isfinite(m['loss']):
        raise NonFiniteLossError(
            f'{self.stage}: the loss is {m["loss"]} at step {s} (after {s - 1} good steps); stopping. The last '
            f'good checkpoint (step {self.last_good}) is kept in {self.checkpoint_dir}.')
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.time()
    rate = (step - self.step_log) / (now - self.t_log) if self.t_log is not None and now > self.t_log else float('nan')
    self.t_log, self.step_log = now, step
    means.update(learning_rate=float(self.lr_fn(step)), steps_per_sec=rate,
                 examples_per_sec=rate * self.settings.batch_size)
    num_steps = self.settings.num_steps
    eta = (num_steps - step) / rate if rate == rate and rate > 0 else float('nan')
    logging.info('%s step %d/%d (%.0f%%) loss %.5f lr %.2e %.2f steps/s %.1f ex/s ETA %s', self.stage, step,
                 num_steps, 100 * step / num_steps, means['loss'], means['learning_rate'],
                 rate, means['examples_per_sec'], _format_eta(eta) if eta == eta else '?')
    if self.writer is not None:
      self.writer.write_scalars(step, {f'{self.stage}/{k}': v for k, v in means.items() if v == v})
    self.pending = []

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()


def train_steps(task: Task, settings: LoopSettings, state: TrainState, step_fn: Callable, data_iter,
                checkpointer: ckpt_lib.Checkpointer, log: MetricLog, preemption: _Preemption, *, workdir: str,
                mesh, meta: Optional[dict] = None, sample_fn: Optional[Callable] = None) -> TrainState:
  """Steps from `state.step` (= `log.start`) to `settings.num_steps`: logs, samples, checkpoints
  every `checkpoint_every` steps and at the end, and on SIGTERM checkpoints and raises Preempted."""

  def save(step: int, force: bool = False):
    log.flush(step)  # never checkpoint a state whose loss went non-finite
    checkpointer.save(step, state, _data_state(data_iter), dict(meta or {}, stage=task.name, step=step), force=force)
    log.last_good = step

  for step in range(log.start + 1, settings.num_steps + 1):
    batch = sharding.global_batch(task.prepare_batch(next(data_iter)), mesh)
    state, metrics = step_fn(state, batch)
    log.record(step, metrics)
    if step % settings.log_every == 0:
      log.flush(step)
    if settings.sample_every and sample_fn is not None and step % settings.sample_every == 0:
      _save_samples(workdir, task.name, step, sample_fn(state), log.writer)
    if preemption.should_stop(step):
      save(step, force=True)
      checkpointer.wait()
      raise Preempted(f'{task.name}: stopped by SIGTERM at step {step}; checkpoint written.')
    if step % settings.checkpoint_every == 0 or step == settings.num_steps:
      save(step)
  return state


def own_data_state(data_state: dict, process_index: int) -> dict:
  """This process's iterator position from a checkpoint's data item.

  Orbax writes the JSON item from process 0 only, so a multi-process checkpoint holds just
  {'0': position}; every process reads the same number of records per step, so process 0's
  position is every process's (its own share follows from the process index)."""
  if str(process_index) in data_state:
    return data_state[str(process_index)]
  if '0' in data_state:
    return data_state['0']
  return data_state  # a single-process checkpoint: the position itself


def _data_state(data_iter):
  """The iterator's position, keyed by process when several processes each read their own share."""
  state = data_iter.get_state()
  return {str(jax.process_index()): state} if jax.process_count() > 1 else state


def _save_samples(workdir: str, stage: str, step: int, images: np.ndarray, writer) -> None:
  if jax.process_index() != 0 or images is None:
    return
  grid = files.save_image_grid(os.path.join(workdir, 'samples', f'{stage}_step_{step:07d}.png'), images)
  if writer is not None:
    writer.write_images(step, {f'{stage}/samples': grid[None]})


# ----------------------------------------------------------------------------- loading

def _missing_checkpoint(workdir: str, stage: str) -> CheckpointError:
  return CheckpointError(
      f'no {stage} checkpoint in {ckpt_lib.stage_dir(workdir, stage)}: run '
      f'--mode={"train_latent" if stage == "latent" else "train"} first (or import one with '
      'python -m patronus_jax.convert)')


def load_state(workdir: str, stage: str, mesh=None, step: Optional[int] = None) -> tuple[dict, int, dict]:
  """Restores a stage's checkpoint for inference: (state dict, step, meta). No template needed."""
  directory = ckpt_lib.stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    raise _missing_checkpoint(workdir, stage)
  checkpointer = ckpt_lib.Checkpointer(directory, asynchronous=False, writer=False)
  target = sharding.replicated(mesh) if mesh is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def abstract(s: int):  # the stored tree's shapes: no model template needed
    tree = checkpointer.manager.item_metadata(s)['state']
    tree = getattr(tree, 'tree', tree)
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target), tree)

  try:
    restored = checkpointer.restore(abstract, step)
    if restored is None:
      raise _missing_checkpoint(workdir, stage)
    step, state, _, meta = restored
    return state, step, meta
  finally:
    checkpointer.close()


def inference_variables(state: dict, use_ema: bool = True) -> dict:
  """{'params': EMA (or raw) params, 'buffers': ...} from a restored state dict."""
  params = state['ema_params'] if use_ema else state['params']
  return {'params': params, **model_collections(state.get('variables', {}))}


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
    raise CheckpointMismatch('\n'.join(lines))


def load_for_inference(model, workdir: str, stage: str, example_args: tuple, *, use_ema: bool = True,
                       what: str = '') -> tuple[dict, int, dict]:
  """(variables, step, state) of a stage's newest checkpoint, checked against `model` called on
  `example_args` (ValueError naming the mismatching paths before any compute)."""
  state, step, _ = load_state(workdir, stage)
  variables = inference_variables(state, use_ema)
  check_variables(model, variables, example_args, what or stage)
  return variables, step, state


def array_iterator(arrays: dict, global_batch_size: int, seed: int, process_index: Optional[int] = None,
                   process_count: Optional[int] = None):
  """Endless, reshuffled-per-epoch, per-process batches of in-memory arrays (grain, checkpointable)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  n = len(next(iter(arrays.values())))
  if n < global_batch_size:
    raise ValueError(f'{n} examples are fewer than one global batch of {global_batch_size}')
  rows = grain.MapDataset.range(n).shuffle(seed=seed % 2**32).repeat(None)
  if process_count > 1:
    rows = rows[process_index::process_count]
  # Batch the row indices, then gather each array once per batch: the same batches as a per-row
  # map + batch, ~20x less host time (45 -> 2 ms per batch of 128; grain's per-element cost
  # dominated the latent model's steps). The iterator's state counts batches.
  ds = rows.batch(global_batch_size // process_count).map(lambda i: {k: v[i] for k, v in arrays.items()})
  return iter(ds.to_iter_dataset())
