"""The `config.mitigation` section: how `--mode=mitigate` removes a diagnosed shortcut, and which
model the later modes read (`use`). Read by tasks/patronus/mitigate_mode.py; see docs/mitigation.md."""

from __future__ import annotations

from patronus_jax.core.config import ConfigDict, section_checker
from patronus_jax.core.training import LR_SCHEDULES

METHODS = ('rebalance', 'decorrelate', 'counterfactual', 'isolate', 'refit_decoder')
DEPENDENCE = ('cross_covariance', 'hsic')
ISOLATE_SHARES = ('within_a', 'between_b')
COUNTERFACTUAL_ON = ('x0_hat', 'picture')
COUNTERFACTUAL_SCOPES = ('edits', 'prototypes_a', 'moved_b', 'every_prototype')
COUNTERFACTUAL_STREAMS = ('data', 'rebalanced')


def mitigation_config() -> ConfigDict:
  return ConfigDict(dict(
      # Each method fine-tunes stage 1 from its final checkpoint into checkpoints/stage1_mitigated/<method>:
      #   rebalance    resample the training set so that every suspected pair (A, B) is independent
      #                (weights P(a) P(b) / P(a, b) from the dataset's labels)
      #   decorrelate  keep the data; add weight x dependence(s of the prototypes that control A,
      #                s of those that predict B) over each batch to the loss
      #   counterfactual  keep the data; make the diagnosis' own edits while training and add weight x how
      #                far the classifier's reading of x0_hat strays: attributes the edit does not control
      #                from the unedited branch, the controlled ones from the original model's edit
      #   isolate      the rebalanced stream, and the loss gains isolate_weight x the share of the variation
      #                of the prototypes that control A found within one value of A (they are made codes of
      #                A alone, so they stop telling the U-Net about B)
      #   refit_decoder  the rebalanced stream, and only the auxiliary decoder (s -> its picture, which the
      #                U-Net draws from) learns, on its own loss: where the shortcut is the decoder's mapping,
      #                a decoder fitted where A and B are independent no longer draws B from A's prototypes
      #                (needs train.s_decoder_weight > 0)
      # default: the three that need no second pass of the model per step ('counterfactual' does)
      methods=('rebalance', 'decorrelate', 'isolate'),
      steps_fraction=0.25,  # fine-tuning steps as a fraction of train.num_steps (same batch size)
      learning_rate=5e-4,  # no warm-up (Adam's moments continue from stage 1)
      # 'constant', or 'cosine': decays learning_rate to 0 at the last fine-tuning step, so that the
      # model (and its moving average) settles rather than ending mid-stride (docs/mitigation.md)
      lr_schedule='constant',
      # the last this fraction of the fine-tuning steps trains the U-Net alone on the diffusion loss (the
      # method's penalty off, the prototype network and the decoder of s frozen at their moving average), so
      # that it learns to draw from the s and pictures the method made (0: off; docs/mitigation.md)
      settle_fraction=0.0,
      # x learning_rate for the prototype network (encoder + prototypes), whose detectors of the tied
      # combinations a short fine-tuning at the U-Net's rate hardly moves
      prototype_lr_scale=1.0,
      penalty_weight=1.0,  # 'decorrelate': weight of the dependence term (the diffusion loss is ~0.03)
      dependence='cross_covariance',  # squared cross-correlation (Frobenius) or biased HSIC (RBF kernels)
      isolate_weight=1.0,  # 'isolate': weight of the share below (within-A: 1 at the start, 0 when pure)
      # 'isolate': which variation of s_JA is penalised: 'within_a' (all but A's: s_JA becomes a code
      # of A alone) or 'between_b' (only B's, squared: the rest s_JA carries stays)
      isolate_share='within_a',
      # 'isolate': weight of the squared share of every other prototype's variation between values of
      # A, so that JA alone tells the U-Net about A (0: off)
      isolate_exclusive_weight=0.0,
      counterfactual_weight=1.0,  # 'counterfactual': weight of the change of the other attributes' probabilities
      # ... and, inside it, of the distance of A's probabilities under the edit to the original model's
      # under the same edit (0: A is free, and the edited prototypes tend to fall silent)
      counterfactual_keep_weight=1.0,
      counterfactual_max_t=1.0,  # edits judged at t < max_t x T only (x0_hat at high noise is a blur)
      # what the classifier judges: 'x0_hat' (the U-Net's denoised guess from a noised training image, a
      # second U-Net pass per edit) or 'picture' (the decoder's picture of s, which a model with
      # model.s_sketch draws from: no U-Net pass, and on shapes the whole edit acts through it)
      counterfactual_on='x0_hat',
      # which edits: 'edits' (those that showed the pair), 'prototypes_a' (also their prototypes in the other
      # direction, B held), 'moved_b' (also every edit that moved B in the diagnosis more than 90 % of the
      # attributes an edit does not control move, B held) or 'every_prototype' (also every other prototype
      # raised and lowered, B held, sampled): a shortcut cured in one edit otherwise reappears in another
      counterfactual_scope='edits',
      # 'counterfactual': the fine-tuning stops this many times at equal intervals, diagnoses the decoder's
      # picture of held-out s (no U-Net pass; seconds) and from then on also judges every edit whose picture
      # now moves both attributes of a pair (by more than 90 % of what edits move the attributes they do not
      # move most): cured under the judged edits, a shortcut otherwise moves to another prototype
      counterfactual_rechecks=0,
      counterfactual_sampled_edits=4,  # 'every_prototype': how many of the other edits each step judges
      # what the model fine-tunes on: 'data' (the training stream; no labels) or 'rebalanced' (rebalance's
      # stream, which needs A's and B's labels)
      counterfactual_stream='data',
      # a suspected pair is mitigated only when its attributes are dependent in the training labels
      # (chi-squared test of independence, p <= data_p_value); 1.0: every suspected pair
      data_p_value=1e-3,
      predictor_threshold=0.1,  # eta^2 of s_j with B at which prototype j counts as predicting B
      max_predictors=4,  # at most this many prototypes per side (the strongest first)
      # unconditional samples behind each fd_classifier of the report (0: evaluate.num_samples). With 256 the
      # estimate of one model spread from 36 to 71 over five sampling seeds (docs/mitigation.md), far
      # beyond the 10 % target
      quality_num_samples=0,
      # held-out images regenerated from their s once per model (the eval split; where the data plant the
      # correlation, the same source without it): does a rare combination of a pair come back with its own B,
      # as often as a common one does (report: rare_combinations; target rare_combinations_kept)? 0: off
      regeneration_images=512,
      retrain_latent=True,  # stage 2 again on the mitigated encoder (unconditional samples need it)
      # Targets the report checks (issue: co-moved effect -80 %, edit success and fd within 10 %).
      target_reduction=0.8,
      target_tolerance=0.1,
      # Later modes (sample, interpret, evaluate) on a mitigated model: they run in the view workdir
      # DIR/mitigation/<method>/ (checkpoints linked, outputs kept apart from the original's).
      use=False,
      use_method='',  # '' = the method mitigation/report.json selected
  ))


def validate_mitigation_config(m, has_decoder: bool = True) -> None:
  """Raises ConfigError naming 'mitigation.<field>' for the first impossible value; `has_decoder`:
  the model has the decoder's picture of s (train.s_decoder_weight > 0)."""
  require = section_checker(m, 'mitigation')
  require(len(m.methods) >= 1 and all(x in METHODS for x in m.methods), 'methods',
          f'must name one or more of {METHODS}')
  require(len(set(m.methods)) == len(m.methods), 'methods', 'must not repeat a method')
  require(0.0 < m.steps_fraction <= 0.25, 'steps_fraction',
          'must be in (0, 0.25]: fine-tuning may cost at most a quarter of stage 1')
  require(m.learning_rate > 0.0, 'learning_rate', 'must be positive')
  require(m.lr_schedule in LR_SCHEDULES, 'lr_schedule', f'must be one of {LR_SCHEDULES}')
  require(0.0 <= m.settle_fraction < 1.0, 'settle_fraction',
          'must be in [0, 1): the method needs some of the fine-tuning steps (0: off)')
  require(m.prototype_lr_scale > 0.0, 'prototype_lr_scale', 'must be positive (1: learning_rate)')
  require(m.penalty_weight >= 0.0, 'penalty_weight', 'must be >= 0')
  require(m.isolate_weight >= 0.0, 'isolate_weight', 'must be >= 0')
  require(m.isolate_share in ISOLATE_SHARES, 'isolate_share', f'must be one of {ISOLATE_SHARES}')
  require(m.isolate_exclusive_weight >= 0.0, 'isolate_exclusive_weight', 'must be >= 0')
  require(m.counterfactual_weight >= 0.0, 'counterfactual_weight', 'must be >= 0')
  require(m.counterfactual_keep_weight >= 0.0, 'counterfactual_keep_weight', 'must be >= 0')
  require(0.0 < m.counterfactual_max_t <= 1.0, 'counterfactual_max_t', 'must be in (0, 1]')
  require(m.counterfactual_scope in COUNTERFACTUAL_SCOPES, 'counterfactual_scope',
          f'must be one of {COUNTERFACTUAL_SCOPES}')
  require(m.counterfactual_stream in COUNTERFACTUAL_STREAMS, 'counterfactual_stream',
          f'must be one of {COUNTERFACTUAL_STREAMS}')
  require(m.counterfactual_rechecks >= 0, 'counterfactual_rechecks', 'must be >= 0 (0: off)')
  require(m.counterfactual_rechecks == 0 or has_decoder, 'counterfactual_rechecks',
          "> 0 diagnoses the decoder's picture of s, and the model has none (set train.s_decoder_weight > 0)")
  require(m.counterfactual_sampled_edits >= 1, 'counterfactual_sampled_edits', 'must be >= 1')
  require(m.counterfactual_on in COUNTERFACTUAL_ON, 'counterfactual_on', f'must be one of {COUNTERFACTUAL_ON}')
  require('refit_decoder' not in m.methods or has_decoder, 'methods',
          "names 'refit_decoder' but the model has no decoder of s (set train.s_decoder_weight > 0)")
  require(m.counterfactual_on != 'picture' or has_decoder, 'counterfactual_on',
          "is 'picture' but the model has no decoder of s (set train.s_decoder_weight > 0, or use 'x0_hat')")
  require(m.dependence in DEPENDENCE, 'dependence', f'must be one of {DEPENDENCE}')
  require(m.regeneration_images >= 0, 'regeneration_images', 'must be >= 0 (0: off)')
  require(m.quality_num_samples == 0 or m.quality_num_samples >= 2, 'quality_num_samples',
          'must be 0 (evaluate.num_samples) or >= 2 (a covariance needs two samples)')
  require(0.0 < m.data_p_value <= 1.0, 'data_p_value', 'must be in (0, 1]')
  require(0.0 <= m.predictor_threshold <= 1.0, 'predictor_threshold', 'must be in [0, 1]')
  require(m.max_predictors >= 1, 'max_predictors', 'must be >= 1')
  require(0.0 < m.target_reduction <= 1.0, 'target_reduction', 'must be in (0, 1]')
  require(0.0 < m.target_tolerance < 1.0, 'target_tolerance', 'must be in (0, 1)')
  require(m.use_method == '' or m.use_method in METHODS, 'use_method', f"must be '' or one of {METHODS}")
  require(not (m.use_method and not m.use), 'use_method', 'is set but mitigation.use is False')
