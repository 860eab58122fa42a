r"""Entry point: `python -m patronus_jax.main --config=configs/celeba.py --workdir=DIR [--mode=all]`.

Modes (each reads and writes the one workdir; each resumes or skips what it already holds):
  train         stage 1: prototype network + U-Net (or the B-cos U-Net when model_type='bcos')
  train_latent  stage 2: the latent diffusion model over prototype activations s
  sample        unconditional samples (s from the latent model) and reconstructions
  interpret     prototype visualisation, consistency, emergence, manipulation, shortcut diagnosis
  evaluate      FID (or a named classifier-feature distance), attribute probes, TAD, DCI
  mitigate      fine-tune stage 1 so that the diagnosed shortcuts go, diagnose again, compare
                (not part of 'all'; --config.mitigation.use=True runs sample / interpret /
                evaluate on the mitigated model, in DIR/mitigation/<method>/; docs/mitigation.md)
  explain       B-cos explanations: exact pixel and token contributions
  all           every mode that applies to the model, in order (the default)

Override any field on the command line: --config.train.batch_size=32; unknown fields and
wrong types fail before anything runs. Without --config, the workdir's config.json is used
(`python -m patronus_jax.main --workdir=IMPORTED --mode=sample` after `patronus_jax.convert`).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from patronus_jax import config as config_lib
from patronus_jax import data as data_lib
from patronus_jax.core import sharding
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.errors import ConfigError, UserError, WorkdirError
from patronus_jax.core.training import Preempted
from patronus_jax.tasks.bcos import modes as bcos_modes
from patronus_jax.tasks.patronus import evaluate_mode
from patronus_jax.tasks.patronus import interpret_mode
from patronus_jax.tasks.patronus import mitigate_mode
from patronus_jax.tasks.patronus import sample as sample_lib
from patronus_jax.tasks.patronus import training as patronus_training

FLAGS = flags.FLAGS
# What each mode runs, per model type, in the order of --mode=all.
MODES = {
    'patronus': {
        'train': patronus_training.train_stage1,
        'train_latent': patronus_training.train_latent,
        'sample': sample_lib.sample_mode,
        'interpret': interpret_mode.interpret_mode,
        'evaluate': evaluate_mode.evaluate_mode,
        'mitigate': mitigate_mode.mitigate_mode,
    },
    'bcos': {
        'train': bcos_modes.train_mode,
        'explain': bcos_modes.explain_mode,
        'evaluate': bcos_modes.evaluate_mode,
    },
}
NOT_IN_ALL = ('mitigate',)  # changes the model: asked for by name only
PATRONUS_MODES = tuple(m for m in MODES['patronus'] if m not in NOT_IN_ALL)
BCOS_MODES = tuple(MODES['bcos'])
MODE_NAMES = tuple(dict.fromkeys(tuple(MODES['patronus']) + BCOS_MODES)) + ('all',)


CONFIG_HELP = ('Config file: configs/<name>.py[:variant]. Optional for a workdir that already holds '
               'config.json (e.g. an imported checkpoint); --config.<field>=<value> then overrides its fields.')
_workdir_config_flag = False  # --config holds the workdir's config.json (overrides without --config)


def define_flags() -> None:
  """The command-line flags; only for the command line, so that scripts (experiments/) can
  import this module and define their own --config / --workdir."""
  global _workdir_config_flag
  if 'workdir' in FLAGS:
    return
  workdir_config = _overridden_workdir_config(sys.argv)
  _workdir_config_flag = workdir_config is not None
  if _workdir_config_flag:  # absl knows --config.<field> only as overrides of a config flag's value
    try:  # the flag reads the command line's overrides as it is defined
      config_flags.DEFINE_config_dict('config', workdir_config, CONFIG_HELP, lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      usage_error(config_override_error(e, sys.argv))
  else:
    config_flags.DEFINE_config_file('config', None, CONFIG_HELP, lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, samples, figures, metrics.')
  flags.DEFINE_enum('mode', 'all', list(MODE_NAMES), 'What to run.')
  flags.DEFINE_bool('verbose', False, 'Show the traceback of a user error (bad config, data, workdir, checkpoint) '
                    'too; by default it is reported in one message.')
  flags.mark_flags_as_required(['workdir'])



def _overridden_workdir_config(argv):
  """The workdir's config.json when the command line overrides fields (--config.<field>=<value>)
  without --config; None otherwise, or when it cannot be read (main then reports that in one line)."""
  args = list(argv[1:])
  if any(a == '--config' or a.startswith('--config=') for a in args) or not any(
      a.startswith('--config.') for a in args):
    return None
  workdir = next((a.split('=', 1)[1] for a in args if a.startswith('--workdir=')), None)
  if workdir is None and '--workdir' in args[:-1]:
    workdir = args[args.index('--workdir') + 1]
  workdir = os.path.abspath(workdir) if workdir else ''
  if not workdir or not os.path.exists(workdir_lib.config_path(workdir)):
    return None
  try:
    return config_lib.load_workdir_config(workdir)
  except UserError:
    return None


def modes_for(config, mode: str) -> tuple[str, ...]:
  if mode != 'all':
    return (mode,)
  return BCOS_MODES if config.model_type == 'bcos' else PATRONUS_MODES


def check_mode(config, mode: str) -> None:
  """ConfigError (one line, before anything is written) for a mode of the other model type."""
  modes = MODES[config.model_type]
  if mode != 'all' and mode not in modes:
    other = 'patronus' if config.model_type == 'bcos' else 'bcos'
    needs = f' (it needs model_type={other!r})' if mode in MODES[other] else ''
    raise ConfigError(f"--mode={mode} does not apply to model_type={config.model_type!r}{needs}; "
                      f'modes: {", ".join(modes)}')


def run_mode(mode: str, config, workdir: str, mesh) -> None:
  """Runs one mode: MODES[config.model_type][mode](config, workdir, mesh) (`run` checked the mode)."""
  modes = MODES[config.model_type]
  if config.model_type == 'patronus' and config.mitigation.use and mode in mitigate_mode.LATER_MODES:
    # the mitigated model through its view workdir: the mode unchanged, its outputs apart from the original's
    config, workdir = mitigate_mode.use_view(config, workdir)
    logging.info('mitigation.use: --mode=%s on the mitigated model in %s', mode, workdir)
  modes[mode](config, workdir, mesh)


class _LibraryInfoFilter(std_logging.Filter):
  """Drops the INFO chatter of Orbax and grain (one line per file written); keeps warnings."""
  NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}grain{os.sep}', f'{os.sep}tensorflow_datasets{os.sep}')

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def _log_to_file(workdir: str) -> None:
  """Also append log lines to DIR/log.txt (absl logs to stderr)."""
  handler = std_logging.FileHandler(os.path.join(workdir, 'log.txt'))
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(_LibraryInfoFilter())
  logging.get_absl_logger().addHandler(handler)


def run(config, workdir: str, mode: str = 'all') -> None:
  """Programmatic entry (notebooks, tests): validate, set up devices, run the modes."""
  config_lib.validate(config)
  check_mode(config, mode)
  sharding.initialize_distributed(config.mesh)
  mesh = sharding.make_mesh(config.mesh)
  # Every mode reads the data: a data mistake (a missing folder or CSV column, a bias naming no
  # attribute) stops here, before config.json fixes data.folder.path and data.bias in the workdir
  # (the corrected run would be refused there). The index is cached for the modes.
  data_lib.get_info(config.data)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    changed = workdir_lib.check_and_write_config(workdir, config)
    for name, old, new in changed:
      logging.info('config field %s changed since the last run: %r -> %r', name, old, new)
  todo = modes_for(config, mode)
  job_start = time.time()
  for i, m in enumerate(todo):
    t0 = time.time()
    logging.info('=== mode %s (%s; %d of %d) ===', m, config.name, i + 1, len(todo))
    run_mode(m, config, workdir, mesh)
    logging.info('=== mode %s done in %.1fs ===%s', m, time.time() - t0,
                 _job_progress(config, todo[:i + 1], todo[i + 1:], time.time() - job_start))


# A whole-job ETA: each mode's work in image-network calls (one U-Net forward on one image; a training
# step is ~3 per example), timed by this job's own measured seconds per call so far. The counts
# mirror what each mode runs; on the quickstart they put the remaining time after stage 1 within
# ~20% of the measured one (benchmarks/RESULTS.md). Compilation is amortised in the measured rate.
LATENT_CALL = 1 / 20  # a latent-model call on one s vector, in image calls (measured on the quickstart)
ENCODER_CALL = 0.3  # the prototype network alone on one image
TRAIN_SPLIT_SIZES = {'celeb_a': 162_770, 'cifar10': 50_000, 'fashion_mnist': 60_000, 'mnist': 60_000}


def mode_work(config, mode: str) -> float:
  """Estimated image-network calls of one mode (0 for an unknown mode)."""
  steps = config.diffusion.sample_steps
  if mode == 'train':
    return 3.0 * config.train.num_steps * config.train.batch_size
  if config.model_type == 'bcos':
    if mode == 'explain':  # a generation plus the exact contributions at each explained step
      return 4.0 * config.bcos.num_explain * steps
    if mode == 'evaluate':  # plus the whole-generation explanations of the adherence detector (measured: 19x)
      adherence = 19.0 if config.bcos.explain_adherence and not config.bcos.vanilla else 0.0
      return float(config.evaluate.num_samples * steps * (1.0 + adherence))
    return 0.0
  if mode == 'train_latent':  # s of the training images, then the latent model's steps
    shapes = config.data.name == 'patronus_shapes'
    images = config.data.shapes.num_train if shapes else TRAIN_SPLIT_SIZES.get(config.data.name, 0)
    return ENCODER_CALL * images + 3.0 * LATENT_CALL * config.latent.num_steps * config.latent.batch_size
  if mode == 'sample':
    return float((config.sample.num_samples + config.sample.num_reconstructions) * steps)
  if mode == 'interpret':  # inversion + regeneration of the eval images; each prototype raised and lowered
    it = config.interpret
    return it.sample_steps * (2.0 * it.num_eval_images + 2.0 * config.model.num_prototypes * it.num_diagnosis_samples)
  if mode == 'mitigate':  # per method: fine-tuning, stage 2 again, a diagnosis and unconditional samples
    m = config.mitigation
    it = config.interpret
    diagnosis = it.sample_steps * 2.0 * config.model.num_prototypes * it.num_diagnosis_samples
    per_method = (mode_work(config, 'train') * m.steps_fraction + mode_work(config, 'train_latent') + diagnosis
                  + config.evaluate.num_samples * steps)
    return len(m.methods) * per_method + mode_work(config, 'interpret')
  if mode == 'evaluate':
    ev = config.evaluate
    work = ev.num_samples * len(ev.samples) * steps
    if 'semantics' in ev.metrics:  # k generations per image and about one edit per attribute (shapes: 6)
      work += ev.semantics_images * (ev.semantics_generations + 4) * steps
      # choosing the edited prototypes: each prototype edited on the first selection images
      work += ev.semantics_selection_images * (config.model.num_prototypes + 1) * steps
    return float(work)
  return 0.0


def _job_progress(config, done: tuple[str, ...], remaining: tuple[str, ...], elapsed: float) -> str:
  """' job: 12.1 min so far; about 9 min still to run (train_latent, sample, ...)' ('... finished' at the end)."""
  if not remaining:
    return f' job finished in {elapsed / 60:.1f} min'
  done_work = sum(mode_work(config, m) for m in done)
  todo_work = sum(mode_work(config, m) for m in remaining)
  names = ', '.join(remaining)
  if done_work <= 0:
    return f' job: {elapsed / 60:.1f} min so far; still to run: {names}'
  eta = elapsed / done_work * todo_work
  return f' job: {elapsed / 60:.1f} min so far; about {eta / 60:.0f} min still to run ({names})'


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    _main(os.path.abspath(FLAGS.workdir), _flag_config(), FLAGS.mode)
  except UserError as e:
    if FLAGS.verbose:
      raise
    # A mistake the user can fix: its message alone (the traceback with --verbose).
    print(f'error: {e}', file=sys.stderr)
    sys.exit(e.exit_status)


def _flag_config():
  """The --config value (None without one); a file that is missing or fails to load is a
  ConfigError naming it (ml_collections loads it lazily and raises a long OSError)."""
  if _workdir_config_flag:
    return FLAGS.config
  if not FLAGS['config'].present:
    return None
  spec = config_flags.get_config_filename(FLAGS['config'])
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    raise ConfigError(f'--config: config file {path} not found (from {os.getcwd()}); expected '
                      'configs/<name>.py[:variant]')
  try:
    return FLAGS.config
  except OSError as e:  # the file raised while loading (e.g. an unknown variant)
    cause = e.__cause__ or e.__context__ or e
    raise ConfigError(f'--config={spec}: {type(cause).__name__}: {cause}') from e


def _main(workdir: str, config, mode: str) -> None:
  if config is None and not os.path.exists(workdir_lib.config_path(workdir)):
    raise ConfigError(f'--config is required: {workdir} holds no config.json yet '
                      '(give --config=configs/<name>.py for a new workdir)')
  from_workdir = config is None
  if from_workdir:
    config = config_lib.load_workdir_config(workdir)
  config_lib.validate(config)  # before anything is created or written
  check_mode(config, mode)
  if mode not in ('train', 'all') and not os.path.isdir(workdir):
    raise WorkdirError(f'{workdir} does not exist: --mode={mode} reads a trained model from its workdir '
                       '(check the path, or run --mode=train first)')
  quiet_library_logs()
  logging.set_verbosity(logging.INFO)
  # A data mistake is the user's commonest; it stops before the workdir or its log.txt is made
  # (opened once: the index is cached for run's own check and the modes)
  data_lib.get_info(config.data)
  try:
    os.makedirs(workdir, exist_ok=True)
    _log_to_file(workdir)
  except OSError as e:  # a file of that name, a read-only or foreign directory
    raise WorkdirError(f'cannot use {workdir} as the workdir ({type(e).__name__}: {e.strerror or e}); '
                       '--workdir must be a directory that can be created and written') from e
  if from_workdir:
    logging.info('using the config of %s (config.json)', workdir)
  try:
    run(config, workdir, mode)
  except Preempted as e:
    # Not a crash: the checkpoint is written and the same command resumes. 143 = 128 + SIGTERM,
    # the status schedulers expect from a terminated job (so they restart it).
    logging.warning('%s Re-run the same command to resume.', e)
    sys.exit(143)


HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def parse_flags(argv):
  """absl flag parsing (main and the scripts): --help exits 0; a bad flag or --config override is
  one line and exit status 2."""
  overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  repeated = sorted({o for o in overrides if overrides.count(o) > 1})
  if repeated:  # ml_collections would join two tuples (two methods run) and keep the last scalar
    usage_error(f'{repeated[0]} is given {overrides.count(repeated[0])} times; give each config field once')
  try:
    return FLAGS(argv)
  except SystemExit:
    if any(a in HELP_FLAGS for a in argv[1:]):  # absl exits 1 after printing help: asking is no error
      sys.exit(0)
    raise
  except flags.Error as e:
    if 'config' not in FLAGS or not (FLAGS['config'].present or _workdir_config_flag):
      override = overrides[0] if overrides else None
      if override and override[2:] in str(e):
        usage_error(f'{override} overrides a field of --config or of the workdir\'s config.json; give '
                    '--config=configs/<name>.py[:variant], or a --workdir that holds config.json')
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1:  # e.g. a config file that raised: its flag, then the exception's last line
      usage_error(f'{lines[0].split(": ")[0]}: {lines[-1]}')
    usage_error(f'{e} (--helpshort lists the flags)')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    usage_error(config_override_error(e, argv))


def usage_error(message: str) -> None:
  """A usage mistake on the command line: one line, exit status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def config_override_error(error: Exception, argv) -> str:
  """One line for a bad --config.FIELD=VALUE: the dotted field, its section and a close match."""
  text = str(error).replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
  if not isinstance(error, (AttributeError, KeyError)):
    return f'invalid --config override: {text}'
  match = re.search(r"(\w+)'?\s*Did you mean \"(\w+)\"", text)
  name = match[1] if match else text.strip('\'" ')
  given = [a.split('=', 1)[0][len('--config.'):] for a in argv if a.startswith('--config.')]
  dotted = next((g for g in given if name in g.split('.')), name)
  parts = dotted.split('.')
  at = parts.index(name) if name in parts else len(parts) - 1  # the unknown part: a section or the field
  section = '.'.join(parts[:at])
  message = f"unknown config field '{dotted}'"
  if section:
    message += f" (section '{section}' has no field '{parts[at]}')"
  if match:
    message += f"; did you mean '{'.'.join(parts[:at] + [match[2]] + parts[at + 1:])}'?"
  return message


def _console() -> None:
  """Console-script entry point (`patronus-jax --config=... --workdir=...`)."""
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  _console()
