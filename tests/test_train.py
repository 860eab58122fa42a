"""The training system: loss goes down, bit-identical resume, SIGTERM, NaN, half-written
checkpoints, config errors (devices and processes: test_train_mesh.py)."""

import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core.errors import CheckpointError
from patronus_jax import config as config_lib
from patronus_jax import main
from patronus_jax.core import sharding
from patronus_jax.core import training as training_lib
from patronus_jax.tasks.patronus import training as patronus_training
from patronus_jax.core import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  return config_lib.load(os.path.join(ROOT, 'configs', name) + (f':{arg}' if arg else ''))


def mesh_of(n):
  return sharding.make_mesh(config_lib.mesh_config(), devices=jax.devices()[:n])


# ----------------------------------------------------------------------------- a toy task

class ToyTask:
  """Linear regression: fast to compile, for the generic loop's mechanics."""
  name = 'toy'

  def prepare_batch(self, batch):
    return {'x': np.asarray(batch['x'], np.float32), 'y': np.asarray(batch['y'], np.float32)}

  def init_variables(self, key, batch):
    return {'params': {'w': jax.random.normal(key, (batch['x'].shape[1],))}}

  def loss_fn(self, params, variables, batch, key, train):
    del variables, key, train
    return jnp.mean((batch['x'] @ params['w'] - batch['y']) ** 2), {}


class CountingIterator:
  """Deterministic batches k = 0, 1, ...; `poison` yields NaN inputs at batch k; `on_batch` hooks."""

  def __init__(self, batch=8, dim=4, poison=None, on_batch=None):
    self.k, self.batch, self.dim, self.poison, self.on_batch = 0, batch, dim, poison, on_batch

  def __next__(self):
    rng = np.random.default_rng(self.k)
    x = rng.normal(size=(self.batch, self.dim)).astype(np.float32)
    y = x @ np.arange(1, self.dim + 1, dtype=np.float32)
    if self.poison is not None and self.k == self.poison:
      x[:] = np.nan
    if self.on_batch is not None:
      self.on_batch(self.k)
    self.k += 1
    return {'x': x, 'y': y}

  def get_state(self):
    return {'k': self.k}

  def set_state(self, state):
    self.k = state['k']


def toy_settings(**kw):
  args = dict(batch_size=8, num_steps=10, learning_rate=0.05, log_every=2, checkpoint_every=5,
              keep_checkpoints=5)
  args.update(kw)
  return training_lib.LoopSettings(**args)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(training_lib.NonFiniteLossError) as e:
    training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path), lambda: CountingIterator(poison=6),
                       seed=0, mesh=mesh_of(1))
  assert 'step 7' in str(e.value) and 'step 5' in str(e.value)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(str(tmp_path), 'toy'))
  assert ckpt.valid_steps() == [5]
  ckpt.close()


def test_sigterm_writes_checkpoint_and_resumes(tmp_path):
  def on_batch(k):
    if k == 3:  # the 4th batch: SIGTERM arrives during step 4
      os.kill(os.getpid(), signal.SIGTERM)
  with pytest.raises(training_lib.Preempted):
    training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path), lambda: CountingIterator(on_batch=on_batch),
                       seed=0, mesh=mesh_of(1))
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(str(tmp_path), 'toy'))
  assert ckpt.valid_steps() == [4]
  ckpt.close()
  # Resuming finishes the run with exactly the parameters of an uninterrupted one.
  resumed = training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path), CountingIterator, seed=0,
                                      mesh=mesh_of(1))
  straight = training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path / 'b'), CountingIterator, seed=0,
                                mesh=mesh_of(1))
  np.testing.assert_array_equal(np.asarray(resumed.params['w']), np.asarray(straight.params['w']))
  assert int(resumed.step) == 10


def test_half_written_and_corrupt_checkpoints_are_ignored(tmp_path):
  training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path), CountingIterator, seed=0, mesh=mesh_of(1))
  directory = ckpt_lib.stage_dir(str(tmp_path), 'toy')
  # A killed writer's leftovers: a step directory without commit markers, and a temp directory.
  os.makedirs(os.path.join(directory, '15', 'state'))
  open(os.path.join(directory, '15', 'state', 'partial'), 'w').write('x')
  os.makedirs(os.path.join(directory, '20.orbax-checkpoint-tmp-1234', 'state'))
  ckpt = ckpt_lib.Checkpointer(directory)
  assert ckpt.valid_steps() == [5, 10]
  # The newest complete checkpoint unreadable (e.g. a truncated array file): fall back to 5.
  for root, _, files in os.walk(os.path.join(directory, '10', 'state')):
    for f in files:
      if root.endswith('d') and len(f) > 20:
        open(os.path.join(root, f), 'wb').write(b'garbage')
  abstract = jax.eval_shape(lambda: training_lib.create_train_state(
      ToyTask(), training_lib.make_optimizer(toy_settings()), jax.random.PRNGKey(0),
      {'x': jnp.zeros((8, 4)), 'y': jnp.zeros((8,))}))
  abstract = ckpt_lib.abstract_like(abstract, jax.tree_util.tree_map(
      lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract))
  step, state, data_state, _ = ckpt.restore(abstract)
  assert step == 5 and int(state.step) == 5 and data_state == {'k': 5}
  ckpt.close()


# ----------------------------------------------------------------------------- Patronus stages

def _fixed_loss(task, params, variables, batch, n_keys=6):
  losses = [task.loss_fn(params, variables, batch, jax.random.PRNGKey(100 + i), False)[0] for i in range(n_keys)]
  return float(np.mean(losses))


def test_stage1_reduces_loss_and_resume_is_bit_identical(shapes_config, tmp_path):
  from patronus_jax import data
  config = shapes_config.copy_and_resolve_references()
  config.train.num_steps = 30
  config.train.checkpoint_every = 15
  config.train.learning_rate = 2e-3
  task = patronus_training.PatronusTask(config)
  mesh = mesh_of(1)
  batch = task.prepare_batch(data.load_arrays(config.data, 'test', max_examples=16))
  tx = training_lib.make_optimizer(training_lib.LoopSettings.from_section(config.train))
  init = training_lib.create_train_state(task, tx, jax.random.PRNGKey(config.seed), batch)
  straight = patronus_training.train_stage1(config, str(tmp_path / 'a'), mesh)
  loss_fn = jax.jit(lambda p, v: _fixed_loss(task, p, v, batch))
  before = _fixed_loss(task, init.params, init.variables, batch)
  after = _fixed_loss(task, straight.params, straight.variables, batch)
  assert after < 0.7 * before, (before, after)
  del loss_fn
  # Interrupted at step 15 (a finished shorter run), then resumed to 30: bit-identical.
  config_b = config.copy_and_resolve_references()
  config_b.train.num_steps = 15
  patronus_training.train_stage1(config_b, str(tmp_path / 'b'), mesh)
  resumed = patronus_training.train_stage1(config, str(tmp_path / 'b'), mesh)
  for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.ema_params, straight.opt_state)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.ema_params, resumed.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_latent_stage_reduces_loss(shapes_config, tmp_path):
  config = shapes_config.copy_and_resolve_references()
  config.train.num_steps = 2
  config.latent.num_steps = 100  # the MLP of configs/shapes.py (tiny width), its rate decaying to 0
  config.latent.learning_rate = 2e-3
  workdir = str(tmp_path)
  mesh = mesh_of(1)
  patronus_training.train_stage1(config, workdir, mesh)
  state = patronus_training.train_latent(config, workdir, mesh)
  task = patronus_training.LatentTask(config)
  cached = np.load(os.path.join(workdir, 'latent', 'activations.npz'))['s']
  assert cached.shape == (256, config.model.num_prototypes)
  stats = patronus_training.latent_statistics(cached, True)
  np.testing.assert_allclose(np.asarray(state.extras['s_mean']), stats['s_mean'], rtol=1e-5)
  z = (cached[:64] - stats['s_mean']) / stats['s_std']
  tx = training_lib.make_optimizer(training_lib.LoopSettings.from_section(config.latent))
  init = training_lib.create_train_state(task, tx, jax.random.PRNGKey(config.seed + 1), {'s': z})
  before = _fixed_loss(task, init.params, init.variables, {'s': z})
  after = _fixed_loss(task, state.params, state.variables, {'s': z})
  assert after < 0.8 * before, (before, after)


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize('kind', ['constant', 'cosine'])
def test_learning_rate_schedule_warms_up_then_holds_or_decays(kind):
  s = training_lib.LoopSettings(batch_size=1, num_steps=1100, learning_rate=2e-3, warmup_steps=100, lr_schedule=kind)
  lr = np.array([float(training_lib.learning_rate_schedule(s)(i)) for i in (0, 50, 100, 600, 1100)])
  np.testing.assert_allclose(lr[:3], [0.0, 1e-3, 2e-3], rtol=1e-6)
  # cosine: half-way through the decay the rate is half, at num_steps it is 0
  expected = [2e-3, 2e-3] if kind == 'constant' else [1e-3, 0.0]
  np.testing.assert_allclose(lr[3:], expected, rtol=1e-6, atol=1e-12)


def test_a_schedule_counted_from_a_later_step_starts_there_and_ends_at_schedule_to():
  # a fine-tuning continues stage 1's optimizer state (its step count, 4,000) for 1,000 steps, and may
  # run in segments (num_steps = the segment's end): the cosine spans 4,000..5,000 in every segment
  for end in (4500, 5000):
    s = training_lib.LoopSettings(batch_size=1, num_steps=end, learning_rate=4e-3, lr_schedule='cosine',
                                  schedule_from=4000, schedule_to=5000)
    lr = np.array([float(training_lib.learning_rate_schedule(s)(i)) for i in (4000, 4250, 4500, 5000)])
    np.testing.assert_allclose(lr, 4e-3 * np.array([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0]),
                               rtol=1e-5, atol=1e-12)


def test_config_load_with_overrides():
  config = load_config('shapes.py', 'tiny')
  assert config.train.num_steps == 20
  path = os.path.join(ROOT, 'configs', 'shapes.py:tiny')
  assert config_lib.load(path, {'train.num_steps': 3}).train.num_steps == 3
  with pytest.raises(config_lib.ConfigError, match="did you mean 'train.num_steps'"):
    config_lib.load(path, {'train.numsteps': 3})


def test_config_errors_name_the_field():
  config = config_lib.base_config()
  config.train.batchsize = 3
  with pytest.raises(config_lib.ConfigError,
                     match="unknown config field 'train.batchsize'; did you mean 'train.batch_size'"):
    config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match="'train.learning_rate' must be float"):
    config_lib.check_fields(config_lib.ConfigDict({'train': {'learning_rate': 'fast'}}))
  for field, value, message in [
      ('model.encoder_kernels', (3, 3), "'model.encoder_kernels' has 2 entries"),
      ('diffusion.sample_steps', 2000, "'diffusion.sample_steps' must be in 1..1000"),
      ('model.base_channels', 12, 'multiple of 8'),
      ('train.dtype', 'float16', "'train.dtype' must be one of"),
      ('diffusion.min_snr_gamma', -1.0, "'diffusion.min_snr_gamma' must be >= 0"),
      ('train.lr_schedule', 'linear', "'train.lr_schedule' must be one of"),
      ('diffusion.min_snr_floor', 1.0, "'diffusion.min_snr_floor' must be 0 or in"),
  ]:
    config = config_lib.base_config()
    section, name = field.split('.')
    config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(config)


def test_every_config_file_loads_and_validates():
  import glob
  names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
  assert {'celeba.py', 'cifar10.py', 'fmnist.py', 'mnist.py', 'ffhq.py', 'chexpert.py', 'celeba_bias.py',
          'shapes.py', 'quickstart.py'} <= set(names)
  folder_configs = {'ffhq.py', 'chexpert.py'}  # read image folders: the user names the path
  for name in names:
    for arg in (None, 'tiny'):
      if name in folder_configs:
        with pytest.raises(config_lib.ConfigError, match='data.folder.path'):
          load_config(name, arg)
        spec = os.path.join(ROOT, 'configs', name) + (f':{arg}' if arg else '')
        config_lib.load(spec, {'data.folder.path': '/data/images'})
      else:
        load_config(name, arg)  # loads and validates
  with pytest.raises(ValueError, match='unknown variant'):
    load_config('celeba.py', 'huge')


def test_command_line_rejects_unknown_field_before_running(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'patronus_jax.main', '--config=configs/shapes.py:tiny',
                        f'--workdir={tmp_path}', '--config.train.batchsize=3'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "error: unknown config field 'train.batchsize' (section 'train' has no field 'batchsize'); "
      "did you mean 'train.batch_size'?"), out.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_scripts_with_their_own_flags_can_import_main():
  """experiments/ scripts define --config/--workdir and then call patronus_jax.main.run."""
  code = ("from absl import flags; flags.DEFINE_string('config', None, ''); "
          "flags.DEFINE_string('workdir', None, ''); from patronus_jax import main; main.define_flags(); "
          "print('ok', main.run.__name__)")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and 'ok run' in out.stdout, out.stderr[-2000:]


def test_command_line_without_config_needs_a_workdir_config(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'patronus_jax.main', f'--workdir={tmp_path / "new"}', '--mode=sample'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert '--config is required' in out.stderr and 'holds no config.json' in out.stderr, out.stderr
  assert not os.path.exists(tmp_path / 'new')


def test_workdir_conflicts_name_the_fields(tmp_path):
  config = config_lib.base_config()
  workdir_lib.check_and_write_config(str(tmp_path), config)
  longer = config.copy_and_resolve_references()
  longer.train.num_steps = 5
  changed = workdir_lib.check_and_write_config(str(tmp_path), longer)
  assert [c[0] for c in changed] == ['train.num_steps']
  other = config.copy_and_resolve_references()
  other.model.num_prototypes = 7
  other.data.image_size = 48
  with pytest.raises(workdir_lib.ConfigConflict) as e:
    workdir_lib.check_and_write_config(str(tmp_path), other)
  assert 'model.num_prototypes: workdir has 100, this run has 7' in str(e.value)
  assert 'data.image_size' in str(e.value)
  restored = config_lib.load_workdir_config(str(tmp_path))
  assert restored.train.num_steps == 5 and isinstance(restored.model.channel_mults, tuple)



def test_every_config_comparison_knows_the_defaults_of_fields_added_later(tmp_path):
  # the B-cos run's check of its vanilla baseline compares configs too (not only main's resume)
  from patronus_jax.core import files
  from patronus_jax.tasks.bcos import modes as bcos_modes
  config = config_lib.load('configs/bcos_shapes.py')
  vanilla_dir = os.path.join(str(tmp_path), 'vanilla')
  vanilla = config.copy_and_resolve_references()
  vanilla.bcos.vanilla = True
  workdir_lib.check_and_write_config(vanilla_dir, vanilla)
  old = files.read_json(workdir_lib.config_path(vanilla_dir))
  del old['model']['s_sketch'], old['model']['s_decoder_width']  # written before these fields existed
  files.write_json(workdir_lib.config_path(vanilla_dir), old)
  assert bcos_modes._vanilla_config(config, str(tmp_path)).bcos.vanilla is True
  other = config.copy_and_resolve_references()
  other.model.s_sketch = True  # not the default: the baseline was not trained like this
  with pytest.raises(workdir_lib.WorkdirError, match='model.s_sketch'):
    bcos_modes._vanilla_config(other, str(tmp_path))

# ----------------------------------------------------------------------------- multi-process


def _corrupt(step_dir):
  """Truncates the array files of a checkpoint's state (as a bad copy or a full disk would)."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      if root.endswith('d') and len(f) > 20:
        open(os.path.join(root, f), 'wb').write(b'garbage')


def test_unreadable_newest_checkpoint_is_set_aside_and_rewritten(tmp_path):
  workdir = str(tmp_path)
  training_lib.run_training(ToyTask(), toy_settings(), workdir, CountingIterator, seed=0, mesh=mesh_of(1))
  directory = ckpt_lib.stage_dir(workdir, 'toy')
  _corrupt(os.path.join(directory, '10'))
  # Inference (sample/interpret/evaluate load this way) uses the newest readable step ...
  state, step, _ = training_lib.load_state(workdir, 'toy')
  assert step == 5 and int(state['step']) == 5
  # ... and the broken one is set aside, so it is no longer 'latest' ...
  assert [n for n in os.listdir(directory) if n.startswith('broken_10_')]
  ckpt = ckpt_lib.Checkpointer(directory)
  assert ckpt.valid_steps() == [5]
  ckpt.close()
  # ... and a resumed run writes step 10 afresh, equal to an uninterrupted run.
  resumed = training_lib.run_training(ToyTask(), toy_settings(), workdir, CountingIterator, seed=0, mesh=mesh_of(1))
  straight = training_lib.run_training(ToyTask(), toy_settings(), str(tmp_path / 'b'), CountingIterator, seed=0,
                                       mesh=mesh_of(1))
  np.testing.assert_array_equal(np.asarray(resumed.params['w']), np.asarray(straight.params['w']))
  state, step, _ = training_lib.load_state(workdir, 'toy')
  assert step == 10
  np.testing.assert_array_equal(np.asarray(state['params']['w']), np.asarray(straight.params['w']))


def test_all_checkpoints_unreadable_is_one_short_error(tmp_path):
  workdir = str(tmp_path)
  training_lib.run_training(ToyTask(), toy_settings(), workdir, CountingIterator, seed=0, mesh=mesh_of(1))
  directory = ckpt_lib.stage_dir(workdir, 'toy')
  for step in ('5', '10'):
    _corrupt(os.path.join(directory, step))
  with pytest.raises(CheckpointError, match='no checkpoint in .* could be read') as e:
    training_lib.load_state(workdir, 'toy')
  assert len(str(e.value)) < 1500 and str(e.value).count('\n') == 0


@pytest.mark.parametrize('override, expected', [
    ('trian.num_steps', "unknown config field 'trian.num_steps'; did you mean 'train.num_steps'?"),
    ('train.num_step', "unknown config field 'train.num_step' (section 'train' has no field 'num_step'); "
                       "did you mean 'train.num_steps'?"),
])
def test_a_misspelled_section_or_field_gets_the_whole_corrected_name(override, expected):
  # a misspelled section was answered "did you mean 'trian.train'?"
  config = ml_collections.ConfigDict({'train': {'num_steps': 1}})
  with pytest.raises(AttributeError) as error:
    for part in override.split('.'):
      config = getattr(config, part)
  assert main.config_override_error(error.value, [f'--config.{override}=5']) == expected


def test_a_mode_of_the_other_model_type_stops_before_anything_is_written(tmp_path):
  # --mode=explain on a Patronus config printed the whole flag help and rewrote config.json first
  config = load_config('shapes.py', 'tiny')
  workdir = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError, match=r"^--mode=explain does not apply to model_type='patronus' "
                                                   r"\(it needs model_type='bcos'\); modes: train, "):
    main.run(config, str(workdir), 'explain')
  assert not workdir.exists()
