"""The training system across devices: 1 vs 8 devices, parameter sharding along the model
axis, and a 2-process jax.distributed run (a separate file so that test workers share the load)."""

import functools
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax import config as config_lib
from patronus_jax import data
from patronus_jax.core import sharding
from patronus_jax.core import training as training_lib
from patronus_jax.tasks.patronus import training as patronus_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mesh_of(n):
  return sharding.make_mesh(config_lib.mesh_config(), devices=jax.devices()[:n])


def _assert_trees_close(a, b, what, rtol=2e-4, atol=2e-6):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b), what
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize('model_axis', [1, 2])
def test_eight_devices_match_one(shapes_config, tmp_path, model_axis):
  """8 devices (data 8, or data 4 x model 2) train exactly like one: the gradient is the global
  batch's mean. No warm-up and several steps, and the optimizer state is compared too: Adam's
  update is scale-free, so a sum instead of a mean shows in its moments and in the gradient norm."""
  config = shapes_config.copy_and_resolve_references()
  config.train.num_steps = 4
  config.train.checkpoint_every = 4
  config.train.warmup_steps = 0
  config.train.grad_clip = 0.0  # clipping to norm 1 would hide a gradient's scale as well
  config.mesh.model = model_axis
  one = patronus_training.train_stage1(config, str(tmp_path / 'one'), mesh_of(1))
  many_mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:8])
  many = patronus_training.train_stage1(config, str(tmp_path / 'many'), many_mesh)
  assert many.params['unet']['first']['kernel'].sharding.mesh.size == 8
  assert int(one.step) == int(many.step) == 4
  # Adam turns reduction-order rounding in near-zero gradients into updates of up to lr per step,
  # hence the absolute tolerance; a sum over devices would scale Adam's moments by 8 and 64.
  _assert_trees_close(one.params, many.params, 'params', rtol=1e-3, atol=3e-4)
  _assert_trees_close(one.ema_params, many.ema_params, 'ema_params', rtol=1e-3, atol=3e-4)
  _assert_trees_close(one.opt_state, many.opt_state, 'opt_state', rtol=2e-2, atol=1e-6)
  # One more step from the same state: loss and gradient norm of the global batch.
  task = patronus_training.PatronusTask(config)
  tx = training_lib.make_optimizer(training_lib.LoopSettings.from_section(config.train))
  batch = task.prepare_batch(data.load_arrays(config.data, 'train', max_examples=config.train.batch_size))
  step = functools.partial(training_lib.train_step, task=task, tx=tx, ema_decay=config.train.ema_decay)
  host_state = jax.device_get(one)
  _, m1 = jax.jit(step)(host_state, batch)
  shardings = training_lib.train_state_shardings(host_state, many_mesh)
  _, m8 = jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(many_mesh)))(
      jax.device_put(host_state, shardings), sharding.global_batch(batch, many_mesh))
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose(float(m1[key]), float(m8[key]), rtol=1e-4, err_msg=key)


def test_parameters_sharded_along_model_axis(shapes_config, tmp_path):
  config = shapes_config.copy_and_resolve_references()
  config.train.num_steps = 1
  config.mesh.model = 2
  state = patronus_training.train_stage1(config, str(tmp_path), sharding.make_mesh(config.mesh))
  kernel = state.params['unet']['up_0']['conv_1']['kernel']
  assert kernel.sharding.spec.count(sharding.MODEL) == 1
  assert len({s.data.shape for s in kernel.addressable_shards}) == 1
  assert kernel.addressable_shards[0].data.size * 2 == kernel.size


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_process_distributed_run(tmp_path):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'distributed_worker.py'),
                             f'localhost:{port}', str(i), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  if any('UNSUPPORTED' in o for o in outs):
    pytest.skip('this JAX build has no CPU collectives: ' + outs[0][-300:])
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  assert all('DONE step=4 processes=2 devices=4' in o for o in outs), outs
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(str(tmp_path), 'toy'))
  assert ckpt.valid_steps() == [4]
  ckpt.close()
