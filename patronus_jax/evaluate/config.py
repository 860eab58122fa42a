"""Defaults and checks of `config.evaluate`: FID, attribute probes, TAD, DCI, the classifier.

Every field has a concrete default (no None): '' means "not given", -1 means "all".
`validate_evaluate_config` checks values only (no file system access), so that a bad value
fails at start, before anything is sampled or compiled.
"""

from __future__ import annotations

import ml_collections

from patronus_jax.core.config import section_checker

# Metric names `evaluate.metrics` may list.
METRICS = ('fid', 'fd_classifier', 'probe', 'tad', 'dci', 'semantics')
SAMPLE_KINDS = ('conditional', 'unconditional')
CLASSIFIER_TRAINING = ('as_is', 'rebalanced', 'unplanted')


def evaluate_config() -> ml_collections.ConfigDict:
  """All `config.evaluate` fields with their defaults."""
  return ml_collections.ConfigDict(dict(
      # What to compute. 'fid' needs `inception_weights`; without them the evaluate mode
      # reports that FID was not computed and computes 'fd_classifier' instead.
      # 'semantics': the scorecard of evaluate/semantics.py (datasets with attribute labels).
      metrics=('fid', 'probe', 'tad', 'dci', 'semantics'),
      samples=SAMPLE_KINDS,  # which generated sets FID is computed on
      num_samples=10_000,  # generated images per sample kind for FID
      batch_size=100,  # images per sampling / feature-extraction call
      # FID (pytorch-fid's InceptionV3 pool3 features, 2048-d).
      inception_weights='',  # pt_inception-2015-12-05-6726825d.pth (needs torch) or its .npz
      fid_num_real=50_000,  # real images for the reference statistics; -1: the whole split
      fid_split='train',  # data split of the real images
      fid_quantize=True,  # round generated images to 8 bits first, as PNG files would be
      fid_stats_dir='',  # where real statistics are cached; '': <workdir>/fid_stats
      # Attribute probes on standardised s (logistic regression, k-fold CV, AUROC).
      probe_folds=5,
      probe_max_examples=10_000,  # first N encoded examples; -1: all
      probe_split='test',  # data split whose images are encoded into s
      probe_C=1.0,  # inverse L2 strength of the logistic regression (sklearn's default)
      probe_max_iter=1000,
      # TAD (NashAE / InfoDiffusion): on each training fold, as InfoDiffusion reports it.
      tad_folds=5,  # <= 1: once on all examples
      tad_max_examples=10_000,
      tad_auroc_threshold=0.75,  # an attribute counts when its best single-dim AUROC reaches this
      tad_entropy_threshold=0.2,  # ... and at most this fraction of its entropy is shared
      # DCI (Eastwood & Williams) with gradient-boosted trees (disentanglement_lib settings).
      dci_max_examples=10_000,
      dci_test_fraction=0.2,
      dci_num_estimators=100,  # sklearn GradientBoosting defaults
      dci_max_depth=3,
      dci_learning_rate=0.1,
      # The semantics scorecard: held-out images of `data.eval_split` whose s is regenerated
      # `semantics_generations` times with new noise, plus one edit per controlling prototype.
      semantics_images=256,
      semantics_generations=2,
      # The first this many of them choose each attribute's edited prototype: every alive
      # prototype is edited on them, the one that changes the attribute alone most often is kept;
      # edit_success is measured on the rest. 0: edit the prototype that reads it best.
      semantics_selection_images=16,
      # Attribute classifier (fd_classifier, shortcut diagnosis, prompt adherence).
      classifier_dir='',  # '': <workdir>/classifier
      classifier_widths=(32, 64, 128),  # channels per stage; each stage halves the resolution
      classifier_feature_dim=256,  # penultimate width (the fd_classifier features)
      classifier_num_steps=1500,
      classifier_batch_size=128,
      classifier_learning_rate=2e-3,
      classifier_weight_decay=1e-4,
      classifier_holdout_fraction=0.1,
      classifier_max_examples=-1,  # training images read from the split; -1: all
      # What the classifier trains on. A judge that learnt a correlation of its training data reads one
      # attribute partly from the other (on shapes:bias it read 15 % of untied real objects as the shape
      # tied to their colour), and the shortcut diagnosis and the mitigation then measure its shortcut
      # with the model's (docs/mitigation.md, "The judge's own shortcut"):
      #   'as_is'       the train split as it is
      #   'rebalanced'  the train split resampled so that every pair of attributes dependent in its labels
      #                 (chi-squared p <= 1e-3 and Cramér's V >= 0.1) is independent (raked weights)
      #   'unplanted'   the same data with the planted bias off (data.bias.enabled, data.shapes.planted_strength)
      classifier_training='as_is',
  ))


def validate_evaluate_config(evaluate) -> None:
  """Raises ConfigError naming 'evaluate.<field>' for the first impossible value."""

  require = section_checker(evaluate, 'evaluate')

  for metric in evaluate.metrics:
    require(metric in METRICS, 'metrics', f'must only name metrics among {METRICS}')
  require(len(set(evaluate.metrics)) == len(evaluate.metrics), 'metrics', 'must not repeat a metric')
  for kind in evaluate.samples:
    require(kind in SAMPLE_KINDS, 'samples', f'must only name sample kinds among {SAMPLE_KINDS}')
  for field in ('num_samples', 'batch_size', 'probe_max_iter', 'dci_num_estimators', 'dci_max_depth',
                'classifier_feature_dim', 'classifier_batch_size'):
    require(evaluate[field] > 0, field, 'must be positive')
  require(evaluate.semantics_images >= 2, 'semantics_images', 'must be >= 2 (keep rates pair images)')
  require(evaluate.semantics_generations >= 1, 'semantics_generations', 'must be >= 1')
  require(0 <= evaluate.semantics_selection_images < evaluate.semantics_images, 'semantics_selection_images',
          f'must be in [0, semantics_images={evaluate.semantics_images}) (images left to score the edits on)')
  require(evaluate.num_samples >= 2, 'num_samples', 'must be >= 2 (a covariance needs two samples)')
  for field in ('fid_num_real', 'probe_max_examples', 'tad_max_examples', 'dci_max_examples',
                'classifier_max_examples'):
    require(evaluate[field] == -1 or evaluate[field] >= 2, field, 'must be -1 (all) or >= 2')
  require(evaluate.classifier_num_steps >= 0, 'classifier_num_steps', 'must be >= 0')
  require(evaluate.classifier_training in CLASSIFIER_TRAINING, 'classifier_training',
          f'must be one of {CLASSIFIER_TRAINING}')
  require(evaluate.probe_folds >= 2, 'probe_folds', 'must be >= 2 (cross-validation)')
  require(evaluate.tad_folds >= 0, 'tad_folds', 'must be >= 0')
  weights = evaluate.inception_weights
  require(weights == '' or weights.endswith(('.pth', '.pt', '.npz')), 'inception_weights',
          "must be '' or a .pth/.pt (torch state_dict) or .npz file")
  require(0.0 < evaluate.probe_C, 'probe_C', 'must be positive')
  require(0.5 <= evaluate.tad_auroc_threshold <= 1.0, 'tad_auroc_threshold', 'must be in [0.5, 1]')
  require(0.0 <= evaluate.tad_entropy_threshold <= 1.0, 'tad_entropy_threshold', 'must be in [0, 1]')
  require(0.0 < evaluate.dci_test_fraction < 1.0, 'dci_test_fraction', 'must be in (0, 1)')
  require(evaluate.dci_learning_rate > 0.0, 'dci_learning_rate', 'must be positive')
  require(len(evaluate.classifier_widths) > 0 and all(c > 0 for c in evaluate.classifier_widths),
          'classifier_widths', 'must list at least one positive width')
  require(evaluate.classifier_learning_rate > 0.0, 'classifier_learning_rate', 'must be positive')
  require(evaluate.classifier_weight_decay >= 0.0, 'classifier_weight_decay', 'must be >= 0')
  require(0.0 < evaluate.classifier_holdout_fraction < 1.0, 'classifier_holdout_fraction',
          'must be in (0, 1)')
  for field in ('fid_split', 'probe_split'):
    require(bool(evaluate[field]), field, 'must name a data split')
