"""The training system across devices: 1 vs 8 devices, parameter sharding along the model
axis, and a 2-process jax.distributed run (a separate file so that test workers share the load)."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax import config as config_lib
from patronus_jax.core import sharding
from patronus_jax.tasks.patronus import training as patronus_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mesh_of(n):
  return sharding.make_mesh(config_lib.mesh_config(), devices=jax.devices()[:n])


def test_eight_devices_match_one(shapes_config, tmp_path):
  config = shapes_config.copy_and_resolve_references()
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  one = patronus_training.train_stage1(config, str(tmp_path / 'one'), mesh_of(1))
  eight = patronus_training.train_stage1(config, str(tmp_path / 'eight'), mesh_of(8))
  assert eight.params['unet']['first']['kernel'].sharding.mesh.size == 8
  for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(eight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


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
