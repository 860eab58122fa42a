"""Defaults and checks of `config.bcos`: the B-cos diffusion model and its explanations.

Shared fields it reads elsewhere: `config.data` (name, image_size, channels),
`config.diffusion` (timesteps, schedule, prediction, sample_steps), `config.train`, and for
`conditioning='prototypes'` the prototype network of `config.model` (num_prototypes,
encoder_*, activation).
"""

from __future__ import annotations

import ml_collections

from patronus_jax.core.errors import ConfigError

CONDITIONINGS = ('text', 'prototypes', 'external', 'none')
NORMS = ('centered', 'uncentered', 'none')
EXPLAIN_TARGETS = ('x0', 'output')


def bcos_config() -> ml_collections.ConfigDict:
  """All `config.bcos` fields with their defaults (the shapes quickstart at 32x32)."""
  return ml_collections.ConfigDict(dict(
      # B-cos layers.
      b=2.0,  # the alignment exponent B (1 = plain bias-free linear units)
      max_out=1,  # MaxOut units per output (1 = none)
      norm='centered',  # bias-free group norm: 'centered' (x - mean) / std, 'uncentered' x / std, 'none'
      num_groups=8,
      # U-Net.
      # The baseline of the B-cos vs vanilla comparison: the same U-Net path with standard biased layers
      # (models/vanilla_unet.py); trained into <B-cos workdir>/vanilla, evaluate compares the two.
      vanilla=False,
      base_channels=32,
      channel_mults=(1, 2, 2),
      num_res_blocks=1,
      self_attention=(False, False, True),  # per level (the bottleneck always has it)
      cross_attention=(False, True, True),  # per level (the bottleneck always has it)
      num_heads=4,
      # Cross-attention softmax also normalises over an implicit zero-value key, so a query
      # can attend to nothing rather than to whichever token is always there ("a", "on").
      attention_null_slot=True,
      time_dim=64,  # width of the sinusoidal timestep input
      # output = c_skip(ᾱ_t) x_t + c_out(ᾱ_t) U-Net(x): the U-Net predicts a unit-variance residual
      # (Karras et al. 2022); still W(x) x (models/bcos_unet.py `preconditioning`).
      precondition=True,
      sigma_data=0.5,  # the data standard deviation assumed by the preconditioning
      # Conditioning tokens.
      conditioning='text',  # 'text' (word tokens), 'prototypes' (s_j e_j), 'external' (precomputed), 'none'
      token_dim=64,  # width of the learned token / prototype embeddings
      max_tokens=16,  # caption length in words (longer captions are truncated)
      token_positions=False,  # add a learned position vector to every word's embedding
      token_dropout=0.1,  # training: drop each word with this probability
      # Training: also subsample frequent words (word2vec's rule): a word found in a fraction f
      # of the batch's captions is dropped with probability max(token_dropout, 1 - sqrt(t / f)).
      # Words in every caption ("a", "on") then cannot stand in for the biases the network lacks.
      token_subsample=0.0,  # t; 0 = off
      start_token=False,  # prepend <s> (always present, never dropped) to every caption (text.py)
      vocab_max_size=0,  # datasets without a fixed vocabulary: keep the most frequent words (0: all)
      external_dim=0,  # 'external': width of the precomputed text embeddings (batch['text_embedding'])
      # Explanations (interpret/bcos.py, --mode=explain).
      explain_target='x0',  # what is explained: 'x0' (the predicted clean image) or 'output' (eps / x0 head)
      explain_steps='all',  # sampling steps to explain: 'all', 'last', or comma-separated step indices
      explain_sample_steps=0,  # DDIM steps of the explained generations; 0 = diffusion.sample_steps
      explain_whole=True,  # also explain each final image over the whole DDIM chain (report 'generation')
      explain_prompts='',  # ';'-separated prompts; '' = captions of the eval split
      num_explain=8,  # generations explained (prompts taken in order)
      completeness_tolerance=1e-3,
      # --mode=evaluate: explain every generation as a whole and measure how well a word's relevance
      # flags the prompt words the image misses (metrics.json relevance_adherence_auroc).
      explain_adherence=True,  # relative completeness error above which the report warns
  ))


def parse_steps(spec: str, num_steps: int) -> list[int]:
  """'all' | 'last' | '0,5,-1' -> sorted step indices in 0..num_steps-1 (sampling order)."""
  spec = spec.strip()
  if spec == 'all':
    return list(range(num_steps))
  if spec == 'last':
    return [num_steps - 1]
  out = set()
  for item in spec.split(','):
    item = item.strip()
    try:
      i = int(item)
    except ValueError:
      raise ValueError(f"bad step {item!r}: expected 'all', 'last' or comma-separated integers") from None
    if not -num_steps <= i < num_steps:
      raise ValueError(f'step {i} is outside 0..{num_steps - 1}')
    out.add(i % num_steps)
  return sorted(out)


def validate_bcos_config(bcos) -> None:
  """Raises ConfigError naming the first impossible `bcos.*` value."""
  if bcos.b < 1.0:
    raise ConfigError(f"config field 'bcos.b' must be >= 1, got {bcos.b}")
  for name in ('max_out', 'num_groups', 'base_channels', 'num_res_blocks', 'num_heads', 'time_dim',
               'token_dim', 'max_tokens', 'num_explain'):
    if bcos[name] < 1:
      raise ConfigError(f"config field 'bcos.{name}' must be positive, got {bcos[name]}")
  for name, choices in (('norm', NORMS), ('conditioning', CONDITIONINGS),
                        ('explain_target', EXPLAIN_TARGETS)):
    if bcos[name] not in choices:
      raise ConfigError(f"config field 'bcos.{name}' must be one of {choices}, got {bcos[name]!r}")
  if not bcos.channel_mults or any(m < 1 for m in bcos.channel_mults):
    raise ConfigError(f"config field 'bcos.channel_mults' must be positive integers, got {tuple(bcos.channel_mults)}")
  for name in ('self_attention', 'cross_attention'):
    if len(bcos[name]) != len(bcos.channel_mults):
      raise ConfigError(f"config field 'bcos.{name}' has {len(bcos[name])} entries but 'bcos.channel_mults' "
            f'has {len(bcos.channel_mults)}: one per level is expected')
  widths = [bcos.base_channels * m for m in bcos.channel_mults]
  if any(w % bcos.num_heads for w in widths):
    raise ConfigError(f"config field 'bcos.num_heads'={bcos.num_heads} must divide every level's channel "
                      f'count {widths}')
  if bcos.norm != 'none' and any(w % bcos.num_groups for w in widths):
    raise ConfigError(f"config field 'bcos.num_groups'={bcos.num_groups} must divide every level's channel "
                      f'count {widths}')
  if bcos.time_dim % 2 or bcos.time_dim < 4:
    raise ConfigError(f"config field 'bcos.time_dim' must be even and >= 4, got {bcos.time_dim}")
  if bcos.sigma_data <= 0:
    raise ConfigError(f"config field 'bcos.sigma_data' must be positive, got {bcos.sigma_data}")
  if not 0.0 <= bcos.token_dropout < 1.0:
    raise ConfigError(f"config field 'bcos.token_dropout' must be in [0, 1), got {bcos.token_dropout}")
  if not 0.0 <= bcos.token_subsample <= 1.0:
    raise ConfigError(f"config field 'bcos.token_subsample' must be in [0, 1] (0 = off), got {bcos.token_subsample}")
  for name in ('start_token', 'explain_whole', 'vanilla', 'explain_adherence'):
    if not isinstance(bcos[name], bool):
      raise ConfigError(f"config field 'bcos.{name}' must be True or False, got {bcos[name]!r}")
  if bcos.vocab_max_size < 0:
    raise ConfigError(f"config field 'bcos.vocab_max_size' must be >= 0, got {bcos.vocab_max_size}")
  if bcos.conditioning == 'external' and bcos.external_dim < 1:
    raise ConfigError("config field 'bcos.external_dim' must be positive when bcos.conditioning='external', "
          f'got {bcos.external_dim}')
  if bcos.explain_sample_steps < 0:
    raise ConfigError(f"config field 'bcos.explain_sample_steps' must be >= 0, got {bcos.explain_sample_steps}")
  if bcos.completeness_tolerance <= 0:
    raise ConfigError(f"config field 'bcos.completeness_tolerance' must be positive, got {bcos.completeness_tolerance}")
  spec = bcos.explain_steps.strip()
  if spec not in ('all', 'last'):
    try:
      [int(item) for item in spec.split(',')]
    except ValueError:
      raise ConfigError(f"config field 'bcos.explain_steps' must be 'all', 'last' or comma-separated step "
            f'indices, got {bcos.explain_steps!r}')
