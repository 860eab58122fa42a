"""A run killed with SIGKILL in the middle of training (not after it finished) resumes to exactly
the parameters of an uninterrupted run: stage 1 with grain worker processes reading the data,
and the latent stage. The command line is the one users run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from patronus_jax import config as config_lib
from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import training as training_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 60, 10


def _command(workdir, data_dir, mode):
  return [sys.executable, '-m', 'patronus_jax.main', f'--config={os.path.join(ROOT, "configs", "shapes.py")}:tiny',
          f'--workdir={workdir}', f'--mode={mode}', f'--config.data.data_dir={data_dir}',
          '--config.data.shapes.num_train=256', '--config.data.shapes.num_test=32', '--config.data.num_workers=2',
          f'--config.train.num_steps={STEPS}', f'--config.train.checkpoint_every={EVERY}',
          f'--config.latent.num_steps={STEPS}', f'--config.latent.checkpoint_every={EVERY}']


def _run(workdir, data_dir, mode):
  result = subprocess.run(_command(workdir, data_dir, mode), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]


def _kill_after_first_checkpoint(workdir, data_dir, mode, stage):
  """Starts the mode and SIGKILLs it as soon as its first checkpoint is complete (mid-run)."""
  proc = subprocess.Popen(_command(workdir, data_dir, mode), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  directory = ckpt_lib.stage_dir(str(workdir), stage)
  deadline = time.time() + 900
  try:
    while time.time() < deadline and proc.poll() is None:
      if os.path.isdir(os.path.join(directory, str(EVERY))) and ckpt_lib._complete(  # pylint: disable=protected-access
          os.path.join(directory, str(EVERY))):
        break
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  if proc.returncode == 0:
    pytest.fail(f'{mode} finished before it could be killed mid-run: raise STEPS')
  checkpointer = ckpt_lib.Checkpointer(directory)
  steps = checkpointer.valid_steps()
  checkpointer.close()
  assert steps and max(steps) < STEPS, f'{mode} was not killed mid-run: checkpoints {steps}'


def _final(workdir, stage):
  state, step, _ = training_lib.load_state(str(workdir), stage)
  assert step == STEPS
  return state


def test_sigkill_mid_run_resumes_bit_identically(tmp_path):
  data_dir = tmp_path / 'tfds'
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  _run(straight, data_dir, 'train')
  _run(straight, data_dir, 'train_latent')
  _kill_after_first_checkpoint(killed, data_dir, 'train', 'stage1')
  _run(killed, data_dir, 'train')
  _kill_after_first_checkpoint(killed, data_dir, 'train_latent', 'latent')
  _run(killed, data_dir, 'train_latent')
  for stage in ('stage1', 'latent'):
    a, b = _final(straight, stage), _final(killed, stage)
    for key in ('params', 'ema_params', 'opt_state'):
      leaves_a = [np.asarray(x) for x in jax.tree_util.tree_leaves(a[key])]
      leaves_b = [np.asarray(x) for x in jax.tree_util.tree_leaves(b[key])]
      assert len(leaves_a) == len(leaves_b)
      for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=f'{stage} {key}')
  assert config_lib.load_workdir_config(str(killed)).data.num_workers == 2
