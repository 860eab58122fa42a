"""Defaults and checks of `config.interpret`: prototype visualisation, semantics, emergence,
shortcut diagnosis.

Every field has a concrete default (no None): '' means "the usual one", () means "all",
-1 means "the same as another field" (named in its comment). `validate_interpret_config`
checks values only (no data or file-system access), so a bad value fails at start.

Activation values are chosen relative to each prototype's *observed range* on held-out
images: the `low_quantile` and `high_quantile` of its s_j over `num_eval_images` images
(spread = high - low). Amounts such as `manipulate_amounts` and `emergence_tolerance` are
in units of that spread, so one setting means the same for every prototype and dataset.
"""

from __future__ import annotations

import ml_collections

from patronus_jax.core.config import section_checker
from patronus_jax.core.diffusion import DETERMINISTIC_SAMPLERS as SAMPLERS
from patronus_jax.core.errors import ConfigError

PARTS = ('visualize', 'semantics', 'emergence', 'diagnosis')
SCOPES = ('global', 'prototype')
SOURCES = ('auto', 'data', 'latent')
NOISES = ('inverted', 'random')
CORRECTIONS = ('bonferroni', 'none')


def interpret_config() -> ml_collections.ConfigDict:
  """All `config.interpret` fields with their defaults."""
  return ml_collections.ConfigDict(dict(
      parts=PARTS,  # which analyses `--mode=interpret` runs (any subset of PARTS)
      # The deterministic sampler of every inversion, regeneration and traced trajectory: 'dpmpp2m'
      # (DPM-Solver++(2M), timesteps by diffusion.spacing) or 'ddim'. Inverting and regenerating at 20
      # dpmpp2m steps retraces an image 18x more closely than DDIM at 50 (benchmarks/RESULTS.md).
      sampler='dpmpp2m',
      sample_steps=20,  # model calls of each inversion and each regeneration
      batch_size=64,  # images per jitted call (the last chunk is padded: one compilation)
      eval_split='',  # held-out split for statistics and source images; '' = data.eval_split
      num_eval_images=1000,  # held-out images whose s give the observed range of each prototype
      low_quantile=0.01,  # the observed range of s_j: [low_quantile, high_quantile] of held-out s_j
      high_quantile=0.99,
      # Prototype visualisation (paper Sec. 3.3): s_j of held-out images -> plausible maximum;
      # invert real images, regenerate with s_j at that maximum, keep the image with the
      # highest re-encoded s_j; its argmin patch (receptive-field box) shows the prototype.
      visualize_prototypes=(),  # prototype indices; () = all
      visualize_scope='global',  # plausible maximum over all prototypes' s (official) or per prototype
      visualize_quantile=1.0,  # which quantile of held-out s is the plausible maximum (1.0: the max)
      num_visualize_images=16,  # random held-out images tried per prototype (official: 20)
      num_consistency_images=6,  # images in each prototype's consistency grid
      # Semantics: reconstruction + variation, extrapolation, interpolation, manipulation.
      num_semantic_images=4,  # held-out images of the reconstruction / manipulation figures
      num_variations=4,  # new x_T per image (same s)
      manipulate_prototypes=(),  # prototypes of the extrapolation / manipulation figures; () = all
      # s_j = low + alpha * spread: alpha outside [0, 1] extrapolates beyond observed values.
      extrapolation_alphas=(-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
      manipulate_amounts=(-1.0, -0.5, 0.5, 1.0),  # s_j += amount * spread (one column each)
      num_interpolation_pairs=3,
      interpolation_steps=7,  # columns from image A to image B (s linear, x_T spherical)
      # Emergence: s and attribute predictions of x0_hat along sampling trajectories.
      num_emergence_samples=64,
      emergence_steps=-1,  # sampler steps of the traced trajectories; -1 = sample_steps
      emergence_source='auto',  # s of held-out images ('data') or of the latent model ('latent');
                                # 'auto' = latent when a latent checkpoint exists
      emergence_tolerance=0.1,  # |s_j(t) - s_j(final)| <= tolerance * spread_j counts as emerged
      association_threshold=0.1,  # eta^2 above which a prototype counts as carrying an attribute
      # Shortcut diagnosis: raise / lower each prototype, regenerate from the same x_T,
      # classify, and report which attributes move (paired over samples).
      diagnosis_attributes=(),  # attribute names to judge; () = all of the dataset's
      diagnosis_prototypes=(),  # prototype indices; () = all
      num_diagnosis_samples=64,
      diagnosis_noise='inverted',  # x_T of each sample: the inversion of a real image or N(0, I)
      diagnosis_ci_level=0.95,  # confidence level of the intervals (bootstrap and normal)
      diagnosis_correction='bonferroni',  # family-wise correction of the significance test
      diagnosis_bootstrap=1000,  # bootstrap resamples of the samples
      diagnosis_min_effect=0.1,  # probability mass an attribute must move to count at all
      diagnosis_relative_threshold=0.25,  # a co-moved attribute must move >= this x the controlled one
  ))


def validate_interpret_config(interpret) -> None:
  """Raises ConfigError naming 'interpret.<field>' for the first impossible value."""

  require = section_checker(interpret, 'interpret')

  for part in interpret.parts:
    require(part in PARTS, 'parts', f'must only name parts among {PARTS}')
  require(len(set(interpret.parts)) == len(interpret.parts), 'parts', 'must not repeat a part')
  require(interpret.sampler in SAMPLERS, 'sampler', f'must be one of {SAMPLERS} (deterministic, invertible)')
  for field in ('sample_steps', 'batch_size', 'num_eval_images', 'num_visualize_images',
                'num_consistency_images', 'num_semantic_images', 'num_variations',
                'num_interpolation_pairs', 'num_emergence_samples', 'num_diagnosis_samples',
                'diagnosis_bootstrap'):
    require(interpret[field] > 0, field, 'must be positive')
  require(interpret.num_eval_images >= 2, 'num_eval_images', 'must be >= 2 (quantiles of s)')
  require(interpret.num_diagnosis_samples >= 2, 'num_diagnosis_samples',
          'must be >= 2 (a confidence interval needs two samples)')
  require(interpret.interpolation_steps >= 2, 'interpolation_steps', 'must be >= 2 (both ends)')
  require(interpret.emergence_steps == -1 or interpret.emergence_steps > 0, 'emergence_steps',
          'must be -1 (= sample_steps) or positive')
  require(0.0 <= interpret.low_quantile < interpret.high_quantile <= 1.0, 'low_quantile',
          "must satisfy 0 <= low_quantile < high_quantile <= 1 (with 'interpret.high_quantile')")
  require(0.0 < interpret.visualize_quantile <= 1.0, 'visualize_quantile', 'must be in (0, 1]')
  require(interpret.visualize_scope in SCOPES, 'visualize_scope', f'must be one of {SCOPES}')
  require(interpret.emergence_source in SOURCES, 'emergence_source', f'must be one of {SOURCES}')
  require(interpret.diagnosis_noise in NOISES, 'diagnosis_noise', f'must be one of {NOISES}')
  require(interpret.diagnosis_correction in CORRECTIONS, 'diagnosis_correction',
          f'must be one of {CORRECTIONS}')
  require(interpret.emergence_tolerance > 0.0, 'emergence_tolerance', 'must be positive')
  require(0.0 <= interpret.association_threshold <= 1.0, 'association_threshold', 'must be in [0, 1]')
  require(0.5 < interpret.diagnosis_ci_level < 1.0, 'diagnosis_ci_level', 'must be in (0.5, 1)')
  require(0.0 <= interpret.diagnosis_min_effect <= 1.0, 'diagnosis_min_effect', 'must be in [0, 1]')
  require(interpret.diagnosis_relative_threshold >= 0.0, 'diagnosis_relative_threshold', 'must be >= 0')
  for field in ('visualize_prototypes', 'manipulate_prototypes', 'diagnosis_prototypes'):
    require(all(j >= 0 for j in interpret[field]), field, 'must list prototype indices >= 0')
    require(len(set(interpret[field])) == len(interpret[field]), field, 'must not repeat an index')
  require(len(set(interpret.diagnosis_attributes)) == len(interpret.diagnosis_attributes),
          'diagnosis_attributes', 'must not repeat an attribute')
  require(len(interpret.extrapolation_alphas) > 0, 'extrapolation_alphas', 'must list at least one value')
  require(len(interpret.manipulate_amounts) > 0, 'manipulate_amounts', 'must list at least one amount')


def check_against_model(interpret, num_prototypes: int, attribute_names=None) -> None:
  """Checks the fields that depend on the model and the dataset (indices, attribute names)."""
  for field in ('visualize_prototypes', 'manipulate_prototypes', 'diagnosis_prototypes'):
    bad = [j for j in interpret[field] if j >= num_prototypes]
    if bad:
      raise ConfigError(f"config field 'interpret.{field}' names prototype(s) {bad}, but the model has "
            f'{num_prototypes} (indices 0..{num_prototypes - 1})')
  if attribute_names is not None:
    bad = [a for a in interpret.diagnosis_attributes if a not in attribute_names]
    if bad:
      raise ConfigError(f"config field 'interpret.diagnosis_attributes' names {bad}, which the dataset does "
            f'not have; its attributes are {tuple(attribute_names)}')
