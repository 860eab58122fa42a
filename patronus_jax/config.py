"""The configuration schema: every section and field, its default and type, and validation.

Each `configs/<name>.py` starts from `base_config()` and changes values; it never adds
fields. `validate(config)` runs at start (before any data is read or anything compiled) and
fails with the dotted name of the first unknown field, wrong type or impossible value.

Sections are defined next to the code that reads them and only assembled here:
  data       patronus_jax.data.config           interpret  patronus_jax.interpret.config
  evaluate   patronus_jax.evaluate.config       bcos       patronus_jax.tasks.bcos.config
  model, diffusion, train, latent, sample       patronus_jax.tasks.patronus.config
  mitigation                                    patronus_jax.tasks.patronus.mitigate_config
  mesh       patronus_jax.core.sharding
The machinery (field checks, overrides) is `patronus_jax.core.config`.
"""

from __future__ import annotations

from patronus_jax.core import config as config_core
from patronus_jax.core.config import (ConfigDict, config_from_file, config_module, one_of, parse_set_flags,  # noqa: F401
                                      require, set_field, set_field_from_text)
from patronus_jax.core.errors import ConfigError  # noqa: F401  (re-exported: patronus_jax.config.ConfigError)
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.sharding import mesh_config
from patronus_jax.data.config import data_config, planted_bias, validate_data_config
from patronus_jax.evaluate.config import evaluate_config, validate_evaluate_config
from patronus_jax.interpret.config import interpret_config, validate_interpret_config
from patronus_jax.tasks.bcos.config import bcos_config, validate_bcos_config
from patronus_jax.tasks.patronus.config import (diffusion_config, latent_config, model_config,  # noqa: F401
                                                sample_config, train_config, validate_patronus_sections)
from patronus_jax.tasks.patronus.mitigate_config import mitigation_config, validate_mitigation_config


def base_config() -> ConfigDict:
  """All fields with their defaults. Config files change values, never add fields."""
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
  config.mitigation = mitigation_config()
  config.bcos = bcos_config()
  config.mesh = mesh_config()
  return config


workdir_lib.register_schema_defaults(base_config)  # fields added after a workdir was written keep their defaults


def check_fields(config: ConfigDict, schema: ConfigDict | None = None, prefix: str = '') -> None:
  """ConfigError for the first field not in the schema (default: the whole schema) or of the wrong
  type."""
  config_core.check_fields(config, base_config() if schema is None else schema, prefix)


def validate(config: ConfigDict) -> ConfigDict:
  """Checks fields, types and values; returns the config for chaining. Fails fast."""
  check_fields(config)
  one_of(config, 'model_type', ('patronus', 'bcos'))
  validate_patronus_sections(config)
  validate_data_config(config.data)
  validate_evaluate_config(config.evaluate)
  if config.evaluate.classifier_training == 'unplanted' and not planted_bias(config.data):
    raise ConfigError("config field 'evaluate.classifier_training' is 'unplanted' but the data have no planted "
                      "bias (data.bias.enabled or data.shapes.planted_strength); use 'as_is' or 'rebalanced'")
  validate_interpret_config(config.interpret)
  validate_mitigation_config(config.mitigation, config.train.s_decoder_weight > 0)
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
  num_prototypes = min(m.num_prototypes, 8)
  if m.get('outline_prototypes'):  # the same share of outline prototypes, at least one
    m.outline_prototypes = max(1, m.outline_prototypes * num_prototypes // m.num_prototypes)
  m.num_prototypes = num_prototypes
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
  _tiny_latent_and_sampling(config)
  _tiny_interpret(config.interpret)
  _tiny_evaluate(config.evaluate)
  return config


def _tiny_latent_and_sampling(config: ConfigDict) -> None:
  lt = config.latent
  lt.base_channels = 16
  lt.channel_mults = (1, 2)
  lt.num_res_blocks = 1
  lt.mlp_width = 32
  lt.mlp_depth = 2
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
def _tiny_interpret(ic: ConfigDict) -> None:
  ic.sample_steps = 5
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


def _tiny_evaluate(ev: ConfigDict) -> None:
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


def load(spec: str, overrides: dict | None = None, text_overrides: dict | None = None) -> ConfigDict:
  """Loads 'configs/<name>.py[:variant]' like --config does, applies dotted overrides, validates.

  For notebooks, scripts and benchmarks:
    config = load('configs/quickstart.py', {'train.num_steps': 100})
  `text_overrides` take command-line strings (`set_field_from_text`).
  """
  config = config_from_file(spec)
  for dotted, value in (overrides or {}).items():
    set_field(config, dotted, value)
  for dotted, text in (text_overrides or {}).items():
    set_field_from_text(config, dotted, text)
  return validate(config)


def load_workdir_config(workdir: str) -> ConfigDict:
  """The config a workdir was created with (e.g. by convert), as a ConfigDict."""
  values = workdir_lib.read_config_values(workdir)
  interpret = values.get('interpret', {})
  if 'ddim_steps' in interpret:  # written before interpret.sampler existed: DDIM at that many steps
    interpret['sample_steps'] = interpret.pop('ddim_steps')
    interpret.setdefault('sampler', 'ddim')
  return workdir_lib.assign_values(base_config(), values)
