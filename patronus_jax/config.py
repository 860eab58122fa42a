"""The configuration schema: every field, its default and its type, and validation.

Each `configs/<name>.py` starts from `base_config()` and changes values; it never adds
fields. `validate(config)` runs at start (before any data is read or anything compiled) and
fails with the dotted name of the first unknown field, wrong type or impossible value.

Sections are defined next to the code that reads them (data, evaluation, B-cos) and
assembled here, so that one idea lives in one place.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A configuration field is unknown, of the wrong type, or has an impossible value."""


def model_config() -> ConfigDict:
  """The Patronus networks (defaults: the paper's CelebA 64x64 model)."""
  return ConfigDict(dict(
      num_prototypes=100,
      # Prototype encoder: Conv+ReLU layers; `encoder_channels` excludes the image channels.
      encoder_channels=(32, 64, 64, 128),
      encoder_kernels=(3, 3, 3, 3),
      encoder_strides=(2, 1, 1, 1),
      encoder_paddings=(1, 0, 0, 0),
      activation='log',  # 'log': s = log((d+1)/(d+1e-4)); 'linear': s = -d
      # Conditional U-Net.
      base_channels=64,
      channel_mults=(1, 2, 4, 4),
      num_res_blocks=2,
      attention=(False, False, False, False),  # self-attention per level
      num_heads=4,
      dropout=0.1,
      time_mult=4,  # embedding width = time_mult * base_channels
      time_table_size=1000,  # rows of the frozen sinusoid table (official: 1000); >= timesteps
      remat=False,  # jax.checkpoint each residual block (memory for compute)
  ))


def diffusion_config() -> ConfigDict:
  return ConfigDict(dict(
      timesteps=1000,
      schedule='linear',  # 'linear' (paper, 1e-4 -> 0.02 scaled by 1000/T) or 'cosine'
      prediction='eps',  # what the network predicts: 'eps' (paper), 'x0' or 'v' (sqrt(abar) eps - sqrt(1-abar) x0)
      sampler='ddim',  # 'ddim' or 'ddpm'
      sample_steps=100,  # strided DDIM steps (ddpm always uses every step)
      eta=0.0,  # DDIM stochasticity for image sampling
      clip_x0=0.0,  # > 0: clip x0_hat to [-clip_x0, clip_x0] at every sampling step (0: official, unclipped)
      min_snr_gamma=0.0,  # > 0: min-SNR-gamma loss weighting of the image denoiser (Hang et al. 2023); 0: the paper's unweighted loss
      min_snr_floor=0.0,  # with min_snr_gamma: weight clip(SNR, floor, gamma) x x0-error; 1 keeps the noisiest steps at weight 1
  ))


def train_config() -> ConfigDict:
  """Stage 1: joint prototype encoder + U-Net training."""
  return ConfigDict(dict(
      batch_size=64,  # global, split over all devices
      num_steps=100_000,
      learning_rate=1e-5,
      warmup_steps=0,
      lr_schedule='constant',  # after warm-up: 'constant' (paper) or 'cosine' (decays to 0 at num_steps)
      weight_decay=0.01,  # torch.optim.AdamW default, as the official training
      grad_clip=0.0,  # global-norm clipping; 0 disables
      ema_decay=0.9999,  # 0 disables the EMA (sampling then uses the raw parameters)
      dtype='float32',  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
      distinct_loss_weight=0.0,  # prototype-distinct loss (official default: off)
      distinct_margin=0.2,
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      sample_every=0,  # sample grid to PNG/TensorBoard every M steps; 0 disables
      num_sample_images=16,
  ))


def latent_config() -> ConfigDict:
  """Stage 2: the latent DDIM over prototype activations (official UNet1D)."""
  return ConfigDict(dict(
      base_channels=64,
      channel_mults=(1, 2, 4),
      num_res_blocks=3,
      dropout=0.2,
      timesteps=100,
      schedule='linear',
      skip_connections=False,  # the official UNet1D concatenates none
      normalize=True,  # standardise s with training-set mean/std (saved with the checkpoint)
      batch_size=256,
      num_steps=20_000,
      learning_rate=1e-4,
      warmup_steps=0,
      lr_schedule='constant',  # after warm-up: 'constant' (official) or 'cosine'
      grad_clip=0.0,
      ema_decay=0.0,
      eta=0.1,
      sample_steps=100,
      log_every=100,
      checkpoint_every=2000,
  ))


def sample_config() -> ConfigDict:
  return ConfigDict(dict(
      num_samples=64,  # unconditional samples (s from the latent model)
      num_reconstructions=16,  # conditional samples (s of real images, new noise)
      batch_size=64,
  ))


def mesh_config() -> ConfigDict:
  return ConfigDict(dict(
      data=-1,  # devices along the data axis; -1: all that remain
      model=1,  # devices along the parameter-sharding axis (1: replicate parameters)
      distributed=False,  # call jax.distributed.initialize() (multi-host TPU/GPU)
      coordinator_address='',
      num_processes=0,  # 0: let jax.distributed infer (TPU, SLURM, ...)
      process_id=-1,
  ))


def base_config() -> ConfigDict:
  """All fields with their defaults. Config files change values, never add fields."""
  # Imported here: these modules import heavy dependencies and may import this module.
  from patronus_jax.data.config import data_config
  from patronus_jax.evaluate.config import evaluate_config
  from patronus_jax.interpret.config import interpret_config
  from patronus_jax.models.bcos_config import bcos_config

  config = ConfigDict()
  config.name = 'default'
  config.seed = 0
  config.model_type = 'patronus'  # 'patronus' or 'bcos'
  config.data = data_config()
  config.model = model_config()
  config.diffusion = diffusion_config()
  config.train = train_config()
  config.latent = latent_config()
  config.sample = sample_config()
  config.interpret = interpret_config()
  config.evaluate = evaluate_config()
  config.bcos = bcos_config()
  config.mesh = mesh_config()
  return config


_NUMBER = (int, float)


def _type_name(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    inner = sorted({type(v).__name__ for v in value})
    return f'sequence of {"/".join(inner) or "anything"}'
  return type(value).__name__


def _compatible(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, _NUMBER)
  if isinstance(default, int):
    return isinstance(value, int)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      return False
    if not default:
      return True
    return all(_compatible(default[0], v) for v in value)
  return True


def check_fields(config: ConfigDict, schema: ConfigDict | None = None, prefix: str = '') -> None:
  """Raises ConfigError for the first field not in the schema or of the wrong type."""
  schema = base_config() if schema is None else schema
  for key in config.keys():
    name = f'{prefix}{key}'
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f"; did you mean '{prefix}{close[0]}'?" if close else ''
      raise ConfigError(f"unknown config field '{name}'{hint}")
    value, default = config[key], schema[key]
    if isinstance(default, ConfigDict):
      if not isinstance(value, (ConfigDict, dict)):
        raise ConfigError(f"config field '{name}' must be a section (ConfigDict), got {_type_name(value)}")
      check_fields(ConfigDict(value) if isinstance(value, dict) else value, default, name + '.')
    elif not _compatible(default, value):
      raise ConfigError(
          f"config field '{name}' must be {_type_name(default)} (like the default {default!r}), "
          f'got {_type_name(value)} {value!r}')


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _one_of(config: ConfigDict, name: str, choices: tuple[str, ...]) -> None:
  value = config
  for part in name.split('.'):
    value = value[part]
  _require(value in choices, f"config field '{name}' must be one of {choices}, got {value!r}")


def validate(config: ConfigDict) -> ConfigDict:
  """Checks fields, types and values; returns the config for chaining. Fails fast."""
  check_fields(config)
  m, d, t, lt = config.model, config.diffusion, config.train, config.latent
  _one_of(config, 'model_type', ('patronus', 'bcos'))
  _one_of(config, 'model.activation', ('log', 'linear'))
  _one_of(config, 'diffusion.schedule', ('linear', 'cosine'))
  _one_of(config, 'latent.schedule', ('linear', 'cosine'))
  _one_of(config, 'diffusion.prediction', ('eps', 'x0', 'v'))
  _require(config.model_type != 'bcos' or d.prediction in ('eps', 'x0'),
           "config field 'diffusion.prediction' must be 'eps' or 'x0' for model_type='bcos' "
           f"(its output preconditioning is defined for those), got {d.prediction!r}")
  _one_of(config, 'diffusion.sampler', ('ddim', 'ddpm'))
  _one_of(config, 'train.dtype', ('float32', 'bfloat16'))
  _one_of(config, 'train.lr_schedule', ('constant', 'cosine'))
  _one_of(config, 'latent.lr_schedule', ('constant', 'cosine'))
  n_enc = len(m.encoder_channels)
  _require(n_enc > 0, "config field 'model.encoder_channels' must name at least one layer")
  for field in ('encoder_kernels', 'encoder_strides', 'encoder_paddings'):
    _require(len(m[field]) == n_enc,
             f"config field 'model.{field}' has {len(m[field])} entries but "
             f"'model.encoder_channels' has {n_enc}: one per encoder layer is expected")
  _require(len(m.attention) == len(m.channel_mults),
           f"config field 'model.attention' has {len(m.attention)} entries but "
           f"'model.channel_mults' has {len(m.channel_mults)}: one per level is expected")
  for name, value in (('model.num_prototypes', m.num_prototypes), ('model.base_channels', m.base_channels),
                      ('model.num_res_blocks', m.num_res_blocks), ('diffusion.timesteps', d.timesteps),
                      ('train.batch_size', t.batch_size), ('latent.batch_size', lt.batch_size),
                      ('latent.timesteps', lt.timesteps), ('data.image_size', config.data.image_size)):
    _require(value > 0, f"config field '{name}' must be positive, got {value}")
  for name, value in (('train.num_steps', t.num_steps), ('latent.num_steps', lt.num_steps)):
    _require(value >= 0, f"config field '{name}' must be >= 0, got {value}")
  _require(m.base_channels % 8 == 0,
           f"config field 'model.base_channels' must be a multiple of 8 (GroupNorm(8)), got {m.base_channels}")
  _require(lt.base_channels % 8 == 0,
           f"config field 'latent.base_channels' must be a multiple of 8 (GroupNorm(8)), got {lt.base_channels}")
  heads_ok = all((m.base_channels * k) % m.num_heads == 0 for k in m.channel_mults)
  _require(heads_ok, f"'model.num_heads'={m.num_heads} must divide every level's channel count")
  _require(m.time_table_size >= d.timesteps,
           f"config field 'model.time_table_size' ({m.time_table_size}) must be >= "
           f"'diffusion.timesteps' ({d.timesteps})")
  _require(0 < d.sample_steps <= d.timesteps,
           f"config field 'diffusion.sample_steps' must be in 1..{d.timesteps}, got {d.sample_steps}")
  _require(d.min_snr_gamma >= 0.0,
           f"config field 'diffusion.min_snr_gamma' must be >= 0 (0: unweighted loss), got {d.min_snr_gamma}")
  _require(d.min_snr_floor == 0.0 or 0.0 < d.min_snr_floor <= d.min_snr_gamma,
           "config field 'diffusion.min_snr_floor' must be 0 or in (0, diffusion.min_snr_gamma] "
           f"(it needs min_snr_gamma > 0), got floor {d.min_snr_floor} with gamma {d.min_snr_gamma}")
  _require(d.clip_x0 >= 0.0, f"config field 'diffusion.clip_x0' must be >= 0 (0: no clipping), got {d.clip_x0}")
  _require(0 < lt.sample_steps <= lt.timesteps,
           f"config field 'latent.sample_steps' must be in 1..{lt.timesteps}, got {lt.sample_steps}")
  _require(0.0 <= t.ema_decay < 1.0, f"config field 'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
  _require(0.0 <= lt.ema_decay < 1.0, f"config field 'latent.ema_decay' must be in [0, 1), got {lt.ema_decay}")
  _require(0.0 <= m.dropout < 1.0, f"config field 'model.dropout' must be in [0, 1), got {m.dropout}")
  _require(config.mesh.model >= 1, f"config field 'mesh.model' must be >= 1, got {config.mesh.model}")
  # Subsystems check their own sections.
  from patronus_jax.data.config import validate_data_config
  from patronus_jax.evaluate.config import validate_evaluate_config
  from patronus_jax.interpret.config import validate_interpret_config
  from patronus_jax.models.bcos_config import validate_bcos_config
  validate_data_config(config.data)
  validate_evaluate_config(config.evaluate)
  validate_interpret_config(config.interpret)
  validate_bcos_config(config.bcos)
  return config


def tiny_variant(config: ConfigDict, image_size: int | None = None) -> ConfigDict:
  """Shrinks any config to a model and run length that finish in about a minute on a CPU.

  Same data, same code paths (both stages, sampling, interpretation, evaluation); only sizes
  and step counts change. Used by every config's ':tiny' variant and by the tests.
  """
  if image_size is not None:
    config.data.image_size = image_size
  m = config.model
  m.num_prototypes = min(m.num_prototypes, 8)
  m.encoder_channels = (8, 16, 16, 16) if len(m.encoder_channels) == 4 else (8, 16, 16, 16, 16)
  m.base_channels = 16
  m.channel_mults = (1, 2)
  m.num_res_blocks = 1
  m.attention = (False, False)
  config.train.batch_size = 8
  config.train.num_steps = 20
  config.train.learning_rate = 1e-3
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.train.sample_every = 0
  config.train.ema_decay = 0.99
  config.diffusion.sample_steps = 10
  lt = config.latent
  lt.base_channels = 16
  lt.channel_mults = (1, 2)
  lt.num_res_blocks = 1
  lt.batch_size = 16
  lt.num_steps = 20
  lt.log_every = 5
  lt.checkpoint_every = 10
  lt.sample_steps = 10
  config.sample.num_samples = 8
  config.sample.num_reconstructions = 4
  config.sample.batch_size = 8
  # Interpretation and evaluation at sizes that exercise every figure and metric in seconds
  # (their statistics are then noisy: the tiny variant is for smoke runs, not for results).
  ic = config.interpret
  ic.ddim_steps = 5
  ic.batch_size = 16
  ic.num_eval_images = 64
  ic.num_visualize_images = 4
  ic.num_consistency_images = 3
  ic.num_semantic_images = 2
  ic.num_variations = 2
  ic.extrapolation_alphas = (0.0, 1.0, 2.0)
  ic.manipulate_amounts = (-1.0, 1.0)
  ic.num_interpolation_pairs = 1
  ic.interpolation_steps = 4
  ic.num_emergence_samples = 16
  ic.num_diagnosis_samples = 16
  ic.diagnosis_bootstrap = 200
  ev = config.evaluate
  ev.num_samples = 32
  ev.batch_size = 16
  ev.fid_num_real = 128
  ev.probe_folds = 3
  ev.probe_max_examples = 256
  ev.tad_folds = 3
  ev.tad_max_examples = 256
  ev.dci_max_examples = 256
  ev.dci_num_estimators = 10
  ev.classifier_num_steps = 60
  ev.classifier_batch_size = 32
  ev.classifier_widths = (8, 16)
  ev.classifier_feature_dim = 32
  ev.classifier_max_examples = 512
  return config


def set_field(config: ConfigDict, dotted: str, value) -> None:
  """config['a.b.c'] = value; ConfigError naming the field (and a close match) when it does not
  exist, TypeError (from ConfigDict) when the type does not fit."""
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(f"unknown config field '{dotted}'")
    node = node[p]
  if leaf not in node:
    close = difflib.get_close_matches(leaf, list(node.keys()), n=1)
    hint = f"; did you mean '{'.'.join(parents + [close[0]])}'?" if close else ''
    raise ConfigError(f"unknown config field '{dotted}'{hint}")
  node[leaf] = value


def set_field_from_text(config: ConfigDict, dotted: str, text: str) -> None:
  """`set_field` for a command-line string: a Python literal where the field takes one, else
  the text itself (e.g. a path field given '2024')."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    parsed = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    parsed = text
  try:
    set_field(config, dotted, parsed)
  except TypeError:
    if parsed is text:
      raise
    set_field(config, dotted, text)


def parse_set_flags(items) -> dict[str, str]:
  """['FIELD=VALUE', ...] (repeated --set flags) -> {FIELD: VALUE}; ConfigError on a bad item."""
  out = {}
  for item in items:
    field, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'--set {item!r}: expected FIELD=VALUE')
    out[field.strip()] = value.strip()
  return out


def load(spec: str, overrides: dict | None = None, text_overrides: dict | None = None) -> ConfigDict:
  """Loads 'configs/<name>.py[:variant]' like --config does, applies dotted overrides, validates.

  For notebooks, scripts and benchmarks:
    config = load('configs/quickstart.py', {'train.num_steps': 100})
  `text_overrides` take command-line strings (`set_field_from_text`).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} not found (from {os.getcwd()})')
  module_spec = importlib.util.spec_from_file_location(
      f'patronus_config_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for dotted, value in (overrides or {}).items():
    set_field(config, dotted, value)
  for dotted, text in (text_overrides or {}).items():
    set_field_from_text(config, dotted, text)
  return validate(config)
