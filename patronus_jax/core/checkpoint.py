"""Orbax checkpoints of training states: save (async), keep the last K, restore the latest good.

A checkpoint is a step directory `DIR/checkpoints/<stage>/<step>/` with three items:
  state  the TrainState pytree (params, EMA, optimizer state, step, PRNG key, buffers, extras)
  data   the input iterator's state (JSON), so that a resumed run sees the same batches
  meta   JSON: the stage, the config, and anything the task adds (e.g. provenance)

Orbax writes a step into a temporary directory and renames it when complete, so a killed
process leaves no step directory behind (leftover temporaries are cleaned on start). On top
of that, a step directory only counts when its commit markers are present, and restoring
falls back to the previous step if the newest cannot be read: a crash, a kill or a bad copy
never makes a run start from a broken checkpoint, and never deletes a good one. A step that
cannot be read is set aside (renamed `broken_<step>_<time>`, logged), so it is not "latest" any
more and the next save of that step writes a fresh one.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Union

from absl import logging
import jax
import orbax.checkpoint as ocp

from patronus_jax.core.errors import CheckpointError

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

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True, writer: bool = True):
    # A reader (writer=False) creates nothing and leaves temporary directories to the writer:
    # Orbax cleans them in a background thread that can outlive a short process.
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(1, int(keep)), create=writer, enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=writer)
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

  def restore(self, abstract_state: Union[Any, Callable[[int], Any]], step: Optional[int] = None):
    """Returns (step, state, data_state, meta) of `step` or of the newest readable checkpoint.

    `abstract_state`: a pytree of jax.ShapeDtypeStruct with shardings (where to put arrays), or a
    function of the step that returns one. Returns None when there is no checkpoint. Without
    `step`, an unreadable step is set aside and the next older one tried; CheckpointError when
    none can be read.
    """
    steps = [step] if step is not None else list(reversed(self.valid_steps()))
    errors = []
    for s in steps:
      try:
        abstract = abstract_state(s) if callable(abstract_state) else abstract_state
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return s, out['state'], out['data'], out['meta']
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        if step is not None:
          raise
        reason = f'{type(e).__name__}: {_first_line(e)}'
        errors.append(f'step {s}: {reason}')
        logging.error('Cannot restore checkpoint %s/%s (%s); trying an older one.', self.directory, s, reason)
        self.set_aside(s)
    if errors:
      raise CheckpointError(f'no checkpoint in {self.directory} could be read (each is set aside as broken_*): '
                            + '; '.join(errors))
    return None

  def set_aside(self, step: int) -> None:
    """Renames an unreadable step directory to broken_<step>_<time> (process 0), so that it is no
    longer the latest and the next save of that step is written afresh."""
    if jax.process_index() == 0:
      source = os.path.join(self.directory, str(step))
      target = os.path.join(self.directory, f'broken_{step}_{time.strftime("%Y%m%d-%H%M%S")}')
      if os.path.isdir(source):
        os.replace(source, target)
        logging.warning('Set the unreadable checkpoint %s aside as %s.', source, target)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    # The start-up clean-up of temporary directories runs in a thread that close() does not join;
    # a process exiting while it runs prints a traceback after our last line.
    cleanup = getattr(self.manager, '_cleanup_tmp_directory_future', None)
    if cleanup is not None:
      cleanup.result()
    self.manager.close()


def _first_line(error: Exception) -> str:
  """The first line of an error (TensorStore messages run to hundreds of lines)."""
  text = str(error).strip()
  return (text.splitlines() or [''])[0][:300]


def abstract_like(state: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing where to restore `state`'s arrays."""
  if shardings is None:
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, 'sharding', None), state)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
