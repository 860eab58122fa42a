r"""What the scripts in experiments/ and benchmarks/ share: one flag style, train-then-interpret, timing.

Every script parses its command line the way `python -m patronus_jax.main` does, with absl flags:

  --config=configs/<name>.py[:variant]   an ml_collections config file (`config_flags`): its
                                         `get_config(variant)`, with any field overridden by
                                         --config.interpret.sample_steps=20 (unknown fields fail)
  --workdir=DIR                          the experiment's directory (where one is needed)
  --<script's own flags>                 DEFINE_* at the top of the script (e.g. --num_explain=16,
                                         --batch_sizes=16,64); `--flag=value` and `--flag value`
                                         both parse, booleans also as --flag / --noflag
  --help                                 every flag with its default

and runs `app.run(main)`. Scripts import the installed package (`pip install -e .`), never edit
`sys.path`, and run from any directory (`--config` paths are relative to the working directory;
the experiments' defaults are found next to the script).

An interpret experiment (emergence, prototype visualisation, semantics, shortcut diagnosis) is
a function that prints a report and one call:

    if __name__ == '__main__':
      experiment.main(('emergence',), show, default_config=experiment.repo_config(__file__, 'shapes.py:tiny'))

`main` defines --config, --workdir and --train, then `run_parts(config, workdir, parts)`
trains stage 1 (and the latent model, when a part needs it) if the workdir has no checkpoint
of it yet, runs `--mode=interpret` restricted to those parts (parts already done for the same
checkpoint and config are reused) and hands the report to `show`.

Benchmarks share `timed` (median-ready repeat timings) and `training_setup` (the real jitted
stage-1 training step on synthetic images).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from patronus_jax import main as main_lib
from patronus_jax.core import files
from patronus_jax.core import sharding
from patronus_jax.core import training as training_lib
from patronus_jax.core.errors import UserError
from patronus_jax.tasks.patronus import training as patronus_training

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- flags


def parse_positional(fv: flags.FlagValues, argv, usage: str, help_intro: str = '') -> tuple[list, int | None]:
  """(positional arguments, None) of a script with its own FlagValues, or ([], exit status) after
  printing the help (0) or a usage error (2). argv: the arguments after the program name (None:
  the command line)."""
  try:
    positional = fv([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))[1:]
  except flags.Error as e:
    print(f'{usage}\nerror: {e}', file=sys.stderr)
    return [], 2
  if fv.help:
    print(f'{usage}\n\n{help_intro}{fv.get_help()}')
    return [], 0
  return positional, None


def repo_config(script: str, spec: str) -> str:
  """'configs/<spec>' of the repository holding `script` (an experiment's default --config)."""
  return os.path.join(os.path.dirname(os.path.abspath(script)), '..', 'configs', spec)


def define_config_flags(default_config: str | None,
                        config_help: str = 'Config file[:variant] of the model.') -> None:
  """--config (a config file, with --config.<field>=<value> overrides) and the required --workdir."""
  config_flags.DEFINE_config_file('config', default_config, config_help, lock_config=True)
  flags.DEFINE_string('workdir', None, 'Experiment directory.', required=True)
  _list_in_help('config', 'workdir')


def _list_in_help(*names: str) -> None:
  """--help lists the flags of the script being run; these are defined here on its behalf."""
  for name in names:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def config_filename() -> str:
  """The --config argument as given (file[:variant]), e.g. for a results header."""
  return config_flags.get_config_filename(FLAGS['config'])


def run_app(main_fn: Callable[[list], Any]) -> None:
  """`app.run(main_fn)` with main's flag parsing: --help exits 0, a bad --config override is one
  line, and a user error (bad config, data, workdir) prints one line unless --verbose is given."""
  if 'verbose' not in FLAGS:
    flags.DEFINE_bool('verbose', False, 'Show the traceback of a user error too.')

  def guarded(argv):
    try:
      return main_fn(argv)
    except UserError as e:
      if FLAGS.verbose:
        raise
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_status)

  app.run(guarded, flags_parser=main_lib.parse_flags)


def main(parts: Sequence[str], show: Callable[[dict], None], default_config: str) -> None:
  """Command line of an interpret experiment: flags, train what is missing, run `parts`, `show`."""
  try:  # a default --config applies the command line's overrides when the flag is defined
    define_config_flags(default_config)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    main_lib.usage_error(main_lib.config_override_error(e, sys.argv))
  flags.DEFINE_bool('train', True, 'Train the model first if the workdir has no checkpoint.')
  _list_in_help('train')

  def run(argv):
    del argv
    show(run_parts(FLAGS.config, FLAGS.workdir, parts, train_missing=FLAGS.train))

  run_app(run)


# ----------------------------------------------------------------------------- experiments


def _has_checkpoint(workdir: str, stage: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints', stage)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def run_parts(config, workdir: str, parts: Sequence[str], train_missing: bool = True) -> dict:
  config = config.copy_and_resolve_references()
  wants_latent = 'emergence' in parts and config.interpret.emergence_source in ('latent',)
  if train_missing:
    if not _has_checkpoint(workdir, 'stage1'):
      logging.info('%s has no stage-1 checkpoint: training %d steps first', workdir, config.train.num_steps)
      main_lib.run(config, workdir, 'train')
    if wants_latent and not _has_checkpoint(workdir, 'latent'):
      main_lib.run(config, workdir, 'train_latent')
  config.interpret.parts = tuple(parts)
  t0 = time.time()
  main_lib.run(config, workdir, 'interpret')
  report = files.read_json(os.path.join(workdir, 'interpret', 'report.json'))
  report['experiment_seconds'] = round(time.time() - t0, 1)
  return report


def print_json(title: str, obj) -> None:
  print(f'\n=== {title} ===')
  print(json.dumps(obj, indent=1, default=str))


# ----------------------------------------------------------------------------- benchmarks


def timed(fn, *args, repeats: int, warmup: int) -> list[float]:
  """Seconds of each of `repeats` calls of fn(*args) (results awaited), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return times


def training_setup(config, batch_size: int, dtype: str = 'float32', remat: bool = False):
  """(task, state, global batch of synthetic images, pure training-step function) for a config."""
  config = config.copy_and_resolve_references()
  config.train.dtype = dtype
  config.train.batch_size = batch_size
  config.model.remat = remat
  task = patronus_training.PatronusTask(config)
  settings = training_lib.LoopSettings.from_section(config.train)
  tx = training_lib.make_optimizer(settings)
  size, channels = config.data.image_size, config.data.channels
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)}
  gbatch = sharding.global_batch(batch, sharding.make_mesh(config.mesh))
  state = jax.jit(functools.partial(training_lib.create_train_state, task, tx))(jax.random.PRNGKey(0), gbatch)
  step_fn = functools.partial(training_lib.train_step, task=task, tx=tx, ema_decay=settings.ema_decay)
  return task, state, gbatch, step_fn
