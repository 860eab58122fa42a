"""Loading the trained Patronus models of a workdir (and writing imported ones as checkpoints).

Each loader checks the restored variables against the model the config describes before any
compute (`core.training.load_for_inference`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.training import LoopSettings, TrainState, load_for_inference, make_optimizer
from patronus_jax.models.latent import latent_from_config
from patronus_jax.models.unet import patronus_from_config


def load_stage1_variables(config, workdir: str, use_ema: bool = True):
  """(model, variables, step) of the trained stage-1 model, checked against the config."""
  model = patronus_from_config(config, dtype='float32')
  size, c = config.data.image_size, config.data.channels
  example = (jnp.zeros((1, size, size, c)), jnp.zeros((1,), jnp.int32))
  variables, step, _ = load_for_inference(model, workdir, 'stage1', example, what='stage-1',
                                          use_ema=use_ema and config.train.ema_decay > 0)
  return model, variables, step


def load_latent(config, workdir: str, use_ema: bool = True):
  """(model, variables, stats {'s_mean','s_std'}, step) of the trained latent model."""
  model = latent_from_config(config, dtype='float32')
  p = config.model.num_prototypes
  example = (jnp.zeros((1, p)), jnp.zeros((1,), jnp.int32))
  variables, step, state = load_for_inference(model, workdir, 'latent', example,
                                              use_ema=use_ema and config.latent.ema_decay > 0)
  stats = {k: np.asarray(v) for k, v in state['extras'].items()}
  return model, variables, stats, step


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


def write_imported_stage1(workdir: str, config, variables: dict, source: str) -> int:
  """Writes imported stage-1 weights as a finished stage-1 checkpoint of this project."""
  return write_imported_state('stage1', workdir, config, variables, source)


def write_imported_latent(workdir: str, config, variables: dict, source: str) -> int:
  """Writes an imported latent UNet1D (trained on raw s: identity normalisation)."""
  return write_imported_state('latent', workdir, config, variables, source)
