"""Orbax checkpoints of training states: save (async), keep the last K, restore the latest good.

A checkpoint is a step directory `DIR/checkpoints/<stage>/<step>/` with three items:
  state  the TrainState pytree (params, EMA, optimizer state, step, PRNG key, buffers, extras)
  data   the input iterator's state (JSON), so that a resumed run sees the same batches
  meta   JSON: the stage, the config, and anything the task adds (e.g. provenance)

Orbax writes a step into a temporary directory and renames it when complete, so a killed
process leaves no step directory behind (leftover temporaries are cleaned on start). On top
of that, a step directory only counts when its commit markers are present, and restoring
falls back to the previous step if the newest cannot be read: a crash, a kill or a bad copy
never makes a run start from a broken checkpoint, and never deletes a good one.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

ITEMS = ('state', 'data', 'meta')


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints', stage)


def _complete(step_dir: str) -> bool:
  if not os.path.exists(os.path.join(step_dir, '_CHECKPOINT_METADATA')):
    return False
  return all(os.path.exists(os.path.join(step_dir, item, 'commit_success.txt')) or
             os.path.exists(os.path.join(step_dir, item, '_METADATA')) or
             os.path.exists(os.path.join(step_dir, item, 'metadata'))
             for item in ITEMS if os.path.isdir(os.path.join(step_dir, item))) and \
      os.path.isdir(os.path.join(step_dir, 'state'))


class Checkpointer:
  """Orbax CheckpointManager for one stage, with validity checks and fallback on restore."""

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(1, int(keep)), create=True, enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def valid_steps(self) -> list[int]:
    steps = []
    self.manager.reload()
    for step in self.manager.all_steps():
      if _complete(os.path.join(self.directory, str(step))):
        steps.append(int(step))
      else:
        logging.warning('Ignoring incomplete checkpoint %s/%s (no commit markers).', self.directory, step)
    return sorted(steps)

  def latest_step(self) -> Optional[int]:
    steps = self.valid_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: Any = None, meta: Optional[dict] = None,
           force: bool = False) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state if data_state is not None else {}),
        meta=ocp.args.JsonSave(meta or {}))
    return self.manager.save(int(step), args=args, force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """Returns (step, state, data_state, meta) of `step` or of the newest readable checkpoint.

    `abstract_state`: a pytree of jax.ShapeDtypeStruct with shardings (where to put arrays).
    Returns None when there is no checkpoint.
    """
    steps = [step] if step is not None else list(reversed(self.valid_steps()))
    errors = []
    for s in steps:
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return s, out['state'], out['data'], out['meta']
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        errors.append(f'step {s}: {type(e).__name__}: {e}')
        logging.error('Cannot restore checkpoint %s/%s (%s); trying an older one.', self.directory, s, e)
    if errors:
      raise RuntimeError(f'no checkpoint in {self.directory} could be restored:\n  ' + '\n  '.join(errors))
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing where to restore `state`'s arrays."""
  if shardings is None:
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, 'sharding', None), state)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
