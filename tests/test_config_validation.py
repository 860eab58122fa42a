"""Impossible config values fail at start with the field's name, and a user error through the
command line ends in one line with exit status 2, before anything is created."""

import os
import subprocess
import sys

import pytest

from patronus_jax import config as config_lib
from patronus_jax import main as main_lib
from patronus_jax.core import files
from patronus_jax.core import sharding
from patronus_jax.core import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny():
  return config_lib.load(os.path.join(ROOT, 'configs', 'shapes.py') + ':tiny')


@pytest.mark.parametrize('field, value, words', [
    ('train.learning_rate', -1.0, 'must be positive'),
    ('latent.learning_rate', 0.0, 'must be positive'),
    ('train.checkpoint_every', 0, 'must be >= 1'),
    ('train.log_every', 0, 'must be >= 1'),
    ('latent.checkpoint_every', 0, 'must be >= 1'),
    ('latent.log_every', 0, 'must be >= 1'),
    ('latent.architecture', 'transformer', "one of \\('unet1d', 'mlp'\\)"),
    ('latent.mlp_width', 0, 'must be positive'),
    ('data.image_size', 17, 'divisible by 2'),
    ('data.image_size', 4, 'too small for the prototype encoder'),
])
def test_impossible_values_name_their_field(field, value, words):
  config = _tiny()
  config_lib.set_field(config, field, value)
  with pytest.raises(config_lib.ConfigError, match=words) as e:
    config_lib.validate(config)
  assert f"'{field}'" in str(e.value)


def test_image_size_divisibility_follows_the_levels():
  config = _tiny()
  config.model.channel_mults = (1, 2, 2)
  config.model.attention = (False, False, False)
  config.data.image_size = 34  # divisible by 2, not by 4
  with pytest.raises(config_lib.ConfigError, match='divisible by 4'):
    config_lib.validate(config)
  config.data.image_size = 40
  config_lib.validate(config)


def test_user_error_is_one_line_exit_2_and_creates_nothing(tmp_path):
  workdir = tmp_path / 'never'
  cmd = [sys.executable, '-m', 'patronus_jax.main', f'--workdir={workdir}',
         f'--config={os.path.join(ROOT, "configs", "shapes.py")}:tiny', '--config.train.learning_rate=-1.0']
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert lines == ["error: config field 'train.learning_rate' must be positive (a negative rate ascends the "
                   "loss), got -1.0"]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_help_exits_0():
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.main', '--help'], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  assert result.returncode == 0
  assert '--workdir' in result.stdout + result.stderr


def _main(tmp_path, *args):
  cmd = [sys.executable, '-m', 'patronus_jax.main', f'--config={os.path.join(ROOT, "configs", "shapes.py")}:tiny',
         *args]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_mistyped_workdir_is_named_and_not_created(tmp_path):
  workdir = tmp_path / 'tpyo'
  result = _main(tmp_path, f'--workdir={workdir}', '--mode=sample')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {workdir} does not exist: --mode=sample reads a trained model from its workdir '
      '(check the path, or run --mode=train first)')
  assert not workdir.exists()


def test_a_missing_checkpoint_is_one_line(tmp_path):
  workdir = tmp_path / 'empty'
  workdir.mkdir()
  result = _main(tmp_path, f'--workdir={workdir}', '--mode=sample')
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no stage1 checkpoint in') and '--mode=train' in last, last
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'checkpoints').exists()  # a reader creates no checkpoint directories


def test_an_empty_checkpoint_directory_is_one_line_without_a_late_traceback(tmp_path):
  # Orbax's start-up clean-up thread used to print a traceback after the error line (flaky in CI).
  workdir = tmp_path / 'empty'
  (workdir / 'checkpoints' / 'stage1').mkdir(parents=True)
  for _ in range(3):
    result = _main(tmp_path, f'--workdir={workdir}', '--mode=sample')
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith('error: no stage1 checkpoint in'), result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('config, expected', [
    ('configs/nope.py', 'error: --config: config file configs/nope.py not found'),
    ('configs/shapes.py:bogus', "error: flag --config=configs/shapes.py:bogus: ValueError: unknown variant(s) "
                                "['bogus'] of configs/shapes.py"),
])
def test_a_config_file_that_cannot_be_loaded_is_one_line(tmp_path, config, expected):
  workdir = tmp_path / 'never'
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.main', f'--config={config}', f'--workdir={workdir}'],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(expected), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and not workdir.exists()


def test_a_truncated_workdir_config_is_named(tmp_path):
  (tmp_path / 'config.json').write_text('{"name": "x", "mod')
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.main', f'--workdir={tmp_path}', '--mode=sample'],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path / "config.json"} is not valid JSON')


def test_every_mode_has_a_work_estimate_and_the_job_eta_scales_with_it():
  for model_type, modes in main_lib.MODES.items():
    config = config_lib.load('configs/bcos_shapes.py' if model_type == 'bcos' else 'configs/quickstart.py')
    for mode in modes:
      assert main_lib.mode_work(config, mode) > 0, (model_type, mode)
  config = config_lib.load('configs/quickstart.py')
  done, todo = ('train',), ('train_latent', 'sample', 'interpret', 'evaluate')
  # 10 min for stage 1 -> the rest at the same seconds per image call
  expected = 10 * sum(main_lib.mode_work(config, m) for m in todo) / main_lib.mode_work(config, 'train')
  line = main_lib._job_progress(config, done, todo, 600.0)
  assert f'about {expected:.0f} min still to run (train_latent, sample, interpret, evaluate)' in line, line
  assert main_lib._job_progress(config, done + todo, (), 1260.0) == ' job finished in 21.0 min'


def test_a_workdir_written_before_interpret_sampler_loads_as_ddim_at_its_steps(tmp_path):
  """config.json of older workdirs names interpret.ddim_steps; it means DDIM at that many steps."""
  values = workdir_lib.config_to_dict(config_lib.base_config())
  values['interpret'].pop('sampler')
  values['interpret'].pop('sample_steps')
  values['interpret']['ddim_steps'] = 37
  files.write_json(workdir_lib.config_path(str(tmp_path)), values)
  loaded = config_lib.load_workdir_config(str(tmp_path))
  assert (loaded.interpret.sampler, loaded.interpret.sample_steps) == ('ddim', 37)
  assert config_lib.base_config().interpret.sampler == 'dpmpp2m'  # new workdirs: the faster solver


def _workdir_with_config(path):
  files.write_json(workdir_lib.config_path(str(path)), workdir_lib.config_to_dict(_tiny()))
  return path


def test_overrides_without_config_apply_to_the_workdirs_config(tmp_path):
  workdir = _workdir_with_config(tmp_path)
  argv = ['main', f'--workdir={workdir}', '--config.diffusion.guidance=2']
  assert main_lib._overridden_workdir_config(argv).name == _tiny().name  # what the flag then starts from
  assert main_lib._overridden_workdir_config(argv[:2]) is None  # nothing to override: config.json as is
  assert main_lib._overridden_workdir_config(argv + ['--config=configs/shapes.py']) is None
  # the override reaches the config: its validation names it, before any compute
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.main', '--workdir', str(workdir), '--mode=sample',
                           '--config.diffusion.guidance=-1'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: config field 'diffusion.guidance' must be >= 0")
  assert 'Traceback' not in result.stderr and sorted(os.listdir(workdir)) == ['config.json']


@pytest.mark.parametrize('holds_config, expected', [
    (True, "error: unknown config field 'diffusion.guidence'"),
    (False, "error: --config.diffusion.guidence overrides a field of --config or of the workdir's config.json"),
])
def test_a_bad_override_without_config_is_one_line(tmp_path, holds_config, expected):
  workdir = _workdir_with_config(tmp_path) if holds_config else tmp_path
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.main', f'--workdir={workdir}', '--mode=sample',
                           '--config.diffusion.guidence=2'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-2000:]


def test_an_override_given_twice_is_one_line(tmp_path):
  # ml_collections joins repeated tuple overrides: this ran both mitigation methods
  result = _main(tmp_path, f'--workdir={tmp_path / "never"}', '--mode=mitigate',
                 "--config.mitigation.methods=('rebalance',)", "--config.mitigation.methods=('decorrelate',)")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --config.mitigation.methods is given 2 times; give each config field once'), result.stderr[-2000:]
  assert not (tmp_path / 'never').exists()


def test_a_data_mistake_stops_before_config_json_is_written(tmp_path):
  # config.json fixes data.folder.path: written before the data check, it refused the corrected run
  workdir = tmp_path / 'run'
  result = _main(tmp_path, f'--workdir={workdir}', '--mode=train', '--config.data.name=folder',
                 f'--config.data.folder.path={tmp_path / "tpyo"}')
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: image folder '{tmp_path / 'tpyo'}' for dataset "
                                                           "'folder' does not exist"), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()  # nor the workdir or its log.txt


def test_a_batch_or_mesh_that_does_not_fit_the_devices_is_a_config_error():
  # a ValueError here ended the run in a traceback with exit status 1 (after config.json was written)
  mesh_cfg = config_lib.mesh_config()
  mesh_cfg.model = 3
  with pytest.raises(config_lib.ConfigError, match=r"'mesh.model'=3 must divide the number of devices \(8\)"):
    sharding.make_mesh(mesh_cfg)
  mesh = sharding.make_mesh(config_lib.mesh_config())
  with pytest.raises(config_lib.ConfigError, match=r"'train.batch_size'=6 must be divisible by the 8 devices"):
    sharding.check_batch_size(6, mesh)


@pytest.mark.parametrize('where', ['a_file', 'a_file/run'])
def test_a_workdir_that_cannot_be_a_directory_is_one_line(tmp_path, where):
  (tmp_path / 'a_file').write_text('not a directory')
  workdir = tmp_path / where
  result = _main(tmp_path, f'--workdir={workdir}', '--mode=train')
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: cannot use {workdir} as the workdir'), (
      result.stderr[-2000:])
  assert 'Traceback' not in result.stderr
  assert (tmp_path / 'a_file').read_text() == 'not a directory'
