"""`--mode=mitigate`: fine-tune stage 1 until the diagnosed shortcuts are gone, and show it.

  1. The diagnosis of DIR (interpret part 'diagnosis'; run first when missing or made with other
     settings) names suspected pairs (A controlled by an edit, B co-moved). None: the report says
     so and nothing else is written or trained.
  2. Per method of `mitigation.methods`, stage 1 is fine-tuned from its final checkpoint for
     `steps_fraction` x train.num_steps steps into checkpoints/stage1_mitigated/<method> (the
     original series is only read), then stage 2 is trained again on the new encoder into
     checkpoints/latent_mitigated/<method>:
       rebalance    the training stream is resampled with weights P(a) P(b) / P(a, b) from the
                    dataset's labels, so that A and B are independent in what the model sees
       decorrelate  the data stay; the loss gains weight x dependence(s_JA, s_JB) over each batch,
                    JA = the prototypes whose edits showed the pair, JB = those that predict B
                    (eta^2 of s_j with B on held-out images); no labels of training images used
       isolate      the rebalanced stream, and the loss gains weight x the share of the variation
                    of s_JA within one value of A: the prototypes that showed the pair become codes
                    of A alone, so they stop telling the U-Net about B (isolate_share='between_b':
                    only s_JA's share between values of B, so that B alone leaves it)
       counterfactual  (opt-in) the model's own edits during training, judged by the classifier
       refit_decoder   (opt-in) the rebalanced stream, and only the decoder of s (its picture, which the
                    U-Net draws from) learns, on its own loss
  3. Each model (and the original, for the same settings) is read through a view workdir
     DIR/mitigation/<name>/ whose checkpoints/ link to the series: the diagnosis and the sample
     quality (fd_classifier of unconditional samples) run there with the unchanged modes, and
     `regeneration_images` held-out images are regenerated from their s: does a combination of a
     pair that is rare in the training labels come back with its own B as often as a common one?
  4. DIR/mitigation/report.json: 'before' and 'after' (the selected method) with the suspected
     pairs as in interpret/diagnosis.json, per method the same edits' effects with CIs, the edit
     success of A, fd_classifier, the rare combinations' keep rates, the targets met;
     DIR/mitigation/edits.png: the same edits (same images, same x_T) on the original and each
     mitigated model.

`--config.mitigation.use=True` makes sample / interpret / evaluate run in the view of the
selected (or `use_method`) model: its outputs stay apart from the original's (docs/mitigation.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data as data_lib
from patronus_jax.core import batching
from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import diffusion
from patronus_jax.core import files
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.errors import CheckpointError, ConfigError, WorkdirError
from patronus_jax.core.training import LoopSettings, make_optimizer, restore_or_init, run_training
from patronus_jax.data import bias as bias_lib
from patronus_jax.data import config as data_config
from patronus_jax.data import pipeline
from patronus_jax.data import preprocess as preprocess_lib
from patronus_jax.data import sources
from patronus_jax.evaluate.workdir_classifier import classifier_dir, classifier_for_workdir
from patronus_jax.interpret import core as interpret_core
from patronus_jax.interpret import diagnosis as diagnosis_lib
from patronus_jax.interpret import figures
from patronus_jax.interpret import stats
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.models import unet as unet_lib
from patronus_jax.models.unet import patronus_from_config
from patronus_jax.tasks.patronus import evaluate_mode
from patronus_jax.tasks.patronus import interpret_mode
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import sample as sample_lib
from patronus_jax.tasks.patronus import training
from patronus_jax.tasks.patronus.mitigate_config import COUNTERFACTUAL_ON

OUT_DIR = 'mitigation'
STAGE1_SERIES = 'stage1_mitigated'
LATENT_SERIES = 'latent_mitigated'
ORIGINAL = 'original'
LATER_MODES = ('sample', 'interpret', 'evaluate')


# ----------------------------------------------------------------------------- dependence in s-space


def cross_covariance(x: jax.Array, y: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Squared Frobenius norm of the cross-correlation matrix of the columns of x (n, p) and y (n, q)
  over the batch: 0 iff every column of x is uncorrelated with every column of y."""
  return jnp.sum(proto_lib.batch_correlation(x, y, eps) ** 2)


def hsic(x: jax.Array, y: jax.Array) -> jax.Array:
  """Biased HSIC (Gretton et al. 2005) with Gaussian kernels, tr(K H L H) / (n - 1)^2; each kernel's
  bandwidth is the median squared distance of its rows (held constant for the gradient)."""
  n = x.shape[0]

  def gram(z):
    d = jnp.sum((z[:, None, :] - z[None, :, :]) ** 2, -1)
    scale = jax.lax.stop_gradient(jnp.median(d) + 1e-6)
    return jnp.exp(-d / scale)

  h = jnp.eye(n) - 1.0 / n
  return jnp.trace(gram(x) @ h @ gram(y) @ h) / (n - 1) ** 2


DEPENDENCE = {'cross_covariance': cross_covariance, 'hsic': hsic}


def _pair_shares(s: jax.Array, labels: jax.Array):
  """Per column of s (n, k): the mean squared difference over pairs of rows of the same label,
  over all pairs, and whether the batch has a pair of the same label."""
  n = s.shape[0]
  d2 = jnp.square(s[:, None, :] - s[None, :, :])
  off = 1.0 - jnp.eye(n, dtype=s.dtype)
  same = (labels[:, None] == labels[None, :]).astype(s.dtype) * off
  every = jnp.einsum('ij,ijk->k', off, d2) / jnp.sum(off)
  within = jnp.einsum('ij,ijk->k', same, d2) / jnp.maximum(jnp.sum(same), 1.0)
  return within, every, jnp.sum(same) > 0


def within_label_share(s: jax.Array, labels: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Per column of s (n, k): the mean squared difference between rows of the same label over the
  mean over all pairs of rows. 0 when the column is a function of the label, about 1 when it ignores
  it; 0 for a batch without two rows of one label. Pairs rather than class means, so that a batch
  of 8 with 4 labels still estimates it."""
  within, every, _ = _pair_shares(s, labels)
  return within / (every + eps)


def between_label_share(s: jax.Array, labels: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Per column of s (n, k): 1 - `within_label_share`, the share of its variation between values of
  the label (about 0 when it ignores the label, 1 when it is a function of it; negative when rows of
  one label are further apart than the average pair, as happens by chance in small batches). 0 where
  nothing is measured: a constant column, or a batch without two rows of one label."""
  within, every, has_same = _pair_shares(s, labels)
  return jnp.where((every > eps) & has_same, 1.0 - within / (every + eps), 0.0)


def squared_between_share(s: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the columns of s of `between_label_share` squared: on a batch of 8 the share is often
  negative (same-label rows further apart than the average pair), which is as much a dependence on
  the label as a positive share."""
  return jnp.mean(jnp.square(between_label_share(s, labels)))


class DecorrelateTask(training.PatronusTask):
  """Stage 1 with weight x sum over pairs of dependence(s[:, JA], s[:, JB]) added to the loss."""

  def __init__(self, config, groups: list[tuple[list[int], list[int]]], weight: float, dependence: str):
    super().__init__(config)
    self.groups = [(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)) for a, b in groups]
    self.weight = float(weight)
    self.dependence = DEPENDENCE[dependence]

  def loss_fn(self, params, variables, batch, key, train):
    loss, metrics, s = self.loss_terms(params, variables, batch, key, train)
    penalty = sum(self.dependence(s[:, a], s[:, b]) for a, b in self.groups)
    return loss + self.weight * penalty, {**metrics, 'dependence': penalty}


class IsolateTask(training.PatronusTask):
  """Stage 1 plus weight x the share of the variation of each s_JA within one value of A
  (`within_label_share`, mean over JA): the prototypes whose edits showed the pair are pulled to
  depend on A alone, on a stream where A and B are independent (the rebalanced one). Then s_JA no
  longer tells the U-Net anything about B, and it learns to draw B from the other prototypes.
  Unlike `decorrelate` it removes B from s_JA without removing A: on biased data an encoding that
  carries both is dependent, a pure code of A given rebalanced data is not.

  `exclusive_weight` adds the other half: each prototype outside JA pays for the square of the share
  of its variation *between* values of A (1 - within share). A is then told to the U-Net by JA alone, so
  moving s_JA is not outvoted by other prototypes that still say the old A.

  `co_moved` (B per group) switches the penalty to the squared share of each s_JA's variation
  *between values of B* (`between_label_share`): only B is taken out of s_JA; what else it carries
  besides A (size, position, ...) stays, so the U-Net keeps reading it as before."""

  def __init__(self, config, groups: list[tuple[int, list[int]]], weight: float, exclusive_weight: float = 0.0,
               co_moved: Optional[list[int]] = None):
    super().__init__(config)
    self.groups = [(int(a), jnp.asarray(ja, jnp.int32)) for a, ja in groups]
    self.co_moved = None if co_moved is None else [int(b) for b in co_moved]
    num = config.model.num_prototypes
    self.others = [jnp.asarray(sorted(set(range(num)) - set(int(j) for j in ja)), jnp.int32)
                   for _, ja in groups]
    self.weight = float(weight)
    self.exclusive_weight = float(exclusive_weight)

  def prepare_batch(self, batch: dict) -> dict:
    return {**super().prepare_batch(batch), 'attributes': np.asarray(batch['attributes'], np.int32)}

  def loss_fn(self, params, variables, batch, key, train):
    loss, metrics, s = self.loss_terms(params, variables, batch, key, train)
    labels = batch['attributes']
    if self.co_moved is None:
      penalty = sum(jnp.mean(within_label_share(s[:, ja], labels[:, a])) for a, ja in self.groups)
      metrics = {**metrics, 'within_a_share': penalty}
    else:
      penalty = sum(squared_between_share(s[:, ja], labels[:, b]) for (_, ja), b in zip(self.groups, self.co_moved))
      metrics = {**metrics, 'between_b_share_squared': penalty}
    loss = loss + self.weight * penalty
    if self.exclusive_weight > 0:
      between = sum(squared_between_share(s[:, other], labels[:, a]) for (a, _), other in zip(self.groups, self.others))
      metrics['others_between_a_share_squared'] = between
      loss = loss + self.exclusive_weight * between
    return loss, metrics


class CounterfactualTask(training.PatronusTask):
  """Stage 1 plus weight x how far the model's own counterfactuals stray from the ones wanted.

  Each edit (a prototype and direction of the diagnosis that showed a pair) sets s_JA to its edit
  value at a random t from the same x_t, and the attribute classifier reads x0_hat. Wanted: every
  attribute but the controlled ones (A) as in the unedited branch (held constant), and A as the
  original model made it under the same edit (`teacher`, frozen, reading its own s; weighted by
  `keep_weight`). Without the A term the cheapest cure is to silence the edited prototypes
  (docs/mitigation.md). No labels of training images are used."""

  def __init__(self, config, edits: list[tuple[list[int], list[float], list[int]]], classifier, weight: float,
               teacher: Optional[dict] = None, keep_weight: float = 0.0, max_t: float = 1.0, on: str = 'x0_hat',
               sampled: Optional[list] = None, per_step: int = 0):
    super().__init__(config)
    if on not in COUNTERFACTUAL_ON:
      raise ValueError(f'on must be one of {COUNTERFACTUAL_ON}, got {on!r}')
    if on == 'picture' and not self.model.s_decoder_size:
      raise ValueError("on='picture' needs the decoder's picture of s (train.s_decoder_weight > 0)")
    self.on = on
    # t ~ U{1, ..., max_t T - 1}: at high noise x0_hat is a blur the classifier reads unreliably
    self.max_step = max(2, int(round(max_t * self.schedule.timesteps)))
    heads = range(len(classifier.attribute_names))
    # (JA, values, controlled, held): held defaults to every attribute the edit does not control
    self.edits = [(jnp.asarray(e[0], jnp.int32), jnp.asarray(e[1], jnp.float32), list(e[2]),
                   list(e[3]) if len(e) > 3 else [h for h in heads if h not in e[2]]) for e in edits]
    # `sampled`: single-prototype edits (j, value, controlled, held), `per_step` of them drawn at each step
    # (all of them at every step would cost a decoder pass each)
    self.per_step = min(int(per_step), len(sampled or []))
    if self.per_step:
      mask = lambda which: jnp.asarray([[float(h in e[which]) for h in heads] for e in sampled], jnp.float32)
      self.sampled = (jnp.asarray([e[0] for e in sampled], jnp.int32),
                      jnp.asarray([e[1] for e in sampled], jnp.float32), mask(2), mask(3))
    self.classifier = classifier
    self.weight = float(weight)
    self.keep_weight = float(keep_weight)
    if self.keep_weight > 0 and teacher is None:
      raise ValueError('keep_weight > 0 needs the original model (teacher)')
    self.teacher = teacher

  def _probs(self, variables, s_rows, x_t, t):
    """The classifier's probabilities (one array per attribute) on what `variables` make of s_rows:
    x0_hat from x_t at t ('x0_hat'), or the decoder's picture of s_rows at the image's size ('picture')."""
    if self.on == 'picture':
      picture = self.model.apply(variables, s_rows, method=self.model.decode_activations)
      seen = unet_lib.resize_sketch(picture, x_t.shape)
    else:
      d = self.config.diffusion
      denoise = lambda x, tt: self.model.apply(variables, x, tt, s_rows, False, method=self.model.denoise)
      seen = diffusion.predict(denoise, x_t, t, self.schedule.abar(t), d.prediction, d.clip_x0)[1]
    _, logits = self.classifier.net.apply({'params': self.classifier.params}, seen)
    return [jax.nn.softmax(lg, -1) for lg in logits]

  def loss_fn(self, params, variables, batch, key, train):
    loss, metrics, s = self.loss_terms(params, variables, batch, key, train)
    full = self.model_variables(params, variables)
    x0 = batch['image']
    t_key, n_key = jax.random.split(jax.random.fold_in(key, 7))
    t = diffusion.sample_timesteps(t_key, x0.shape[0], self.max_step)
    x_t = diffusion.q_sample(self.schedule, x0, t, jax.random.normal(n_key, x0.shape, x0.dtype))
    base = jax.lax.stop_gradient(self._probs(full, s, x_t, t))
    if self.keep_weight > 0:
      s_teacher = self.model.apply(self.teacher, x0, method=self.model.encode).activations
    sq = lambda p, q: jnp.mean(jnp.sum(jnp.square(p - q), -1))
    if self.on == 'picture':
      # the penalty trains the decoder only: a shortcut it draws is its mapping from s to the picture
      # (the edited prototype's s held no B on shapes), and through s the cheapest cure is to silence it
      s = jax.lax.stop_gradient(s)
    co_moved = kept = 0.0
    edits = [(ja, value, [(h, 1.0) for h in controlled], [(h, 1.0) for h in held])
             for ja, value, controlled, held in self.edits]
    if self.per_step:
      j, value, controlled, held = self.sampled
      pick = jax.random.choice(jax.random.fold_in(key, 11), j.shape[0], (self.per_step,), replace=False)
      every = range(controlled.shape[1])
      edits += [(j[i], value[i], [(h, controlled[i, h]) for h in every], [(h, held[i, h]) for h in every])
                for i in pick]
    for ja, value, controlled, held in edits:
      edited = self._probs(full, s.at[:, ja].set(value), x_t, t)
      co_moved = co_moved + sum(w * sq(edited[h], base[h]) for h, w in held)
      if self.keep_weight > 0:
        wanted = jax.lax.stop_gradient(self._probs(self.teacher, s_teacher.at[:, ja].set(value), x_t, t))
        kept = kept + sum(w * sq(edited[h], wanted[h]) for h, w in controlled)
    penalty = co_moved + self.keep_weight * kept
    return (loss + self.weight * penalty,
            {**metrics, 'counterfactual': penalty, 'counterfactual_co_moved': co_moved, 'counterfactual_kept': kept})


class RefitDecoderTask(training.PatronusTask):
  """Only the auxiliary decoder learns, on its own loss: s of each batch is held, and the prototype
  network and the U-Net are frozen (`frozen`: finetune zeroes their updates, weight decay included).

  On shapes the shortcut is the decoder's mapping from s to its picture, which the U-Net draws from
  (docs/mitigation.md, "Where the shortcut lives"): the colour prototype's s holds no shape, but a
  decoder fitted on data where colour fixes shape draws the tied shape from it. Refitted on the
  rebalanced stream, where A and B are independent, the decoder's best picture no longer draws B
  from A's prototypes; s, the encoder and the U-Net stay as they were, so what they do apart from the
  shortcut stays too. A step costs an encoder and a decoder pass, no U-Net pass."""
  frozen = ('prototypes', 'unet')

  def __init__(self, config):
    super().__init__(config)
    if not self.model.s_decoder_size:
      raise ValueError("refit_decoder needs the decoder's picture of s (train.s_decoder_weight > 0)")

  def loss_fn(self, params, variables, batch, key, train):
    variables = self.model_variables(params, variables)
    x0 = batch['image']
    s = jax.lax.stop_gradient(self.model.apply(variables, x0, method=self.model.encode).activations)
    loss = self.decoder_loss(self.model.apply(variables, s, method=self.model.decode_activations), x0)
    return loss, {'s_decoder_loss': loss}


# ----------------------------------------------------------------------------- what to decouple


def plan_pairs(diagnosis: dict, names, association: np.ndarray, mcfg) -> list[dict]:
  """Per suspected pair: A (the attribute its edits control most often), B, the edited prototypes
  JA and the prototypes JB that predict B (eta^2 >= predictor_threshold, strongest first, not in JA;
  the strongest one when none reaches it)."""
  plans = []
  for pair in diagnosis['suspected_correlations']:
    controlled = [e['controlled'] for e in pair['edits']]
    a = max(sorted(set(controlled)), key=controlled.count)  # a tie: the first name (deterministic)
    b = next(x for x in pair['attributes'] if x != a)
    ja = sorted({int(e['prototype']) for e in pair['edits'] if e['controlled'] == a})
    eta = association[list(names).index(b)]
    order = [int(j) for j in np.argsort(-eta) if int(j) not in ja]
    jb = [j for j in order if eta[j] >= mcfg.predictor_threshold][:mcfg.max_predictors] or order[:1]
    plans.append(dict(attributes=pair['attributes'], controlled=a, co_moved=b, prototypes_a=ja,
                      predictors_b=jb, eta2_b={str(j): float(eta[j]) for j in jb}, edits=pair['edits']))
  return plans


# ----------------------------------------------------------------------------- view workdirs


def view_dir(workdir: str, name: str) -> str:
  return os.path.join(os.path.abspath(workdir), OUT_DIR, name)


def _link(link: str, target: str) -> None:
  """A relative symbolic link (the workdir can move); an existing one must point there already."""
  rel = os.path.relpath(target, os.path.dirname(link))
  if os.path.islink(link):
    if os.readlink(link) != rel:
      raise CheckpointError(f'{link} points to {os.readlink(link)}, expected {rel}')
    return
  os.makedirs(os.path.dirname(link), exist_ok=True)
  os.symlink(rel, link)


def make_view(config, workdir: str, name: str, stage1: str, latent: Optional[str]):
  """(config, directory) of a workdir that reads checkpoints/<stage1> (and <latent>) of `workdir`
  as its stage1 (latent) and shares its attribute classifier and real-image statistics.

  latent None: the view keeps its own latent series (stage 2 trained there when needed)."""
  directory = view_dir(workdir, name)
  os.makedirs(directory, exist_ok=True)
  for stage, series in (('stage1', stage1), ('latent', latent)):
    if series is not None:
      target = ckpt_lib.stage_dir(workdir, series)
      os.makedirs(target, exist_ok=True)
      _link(os.path.join(directory, 'checkpoints', stage), target)
  c = config.copy_and_resolve_references()
  c.evaluate.classifier_dir = classifier_dir(config, workdir)
  c.evaluate.fid_stats_dir = config.evaluate.fid_stats_dir or os.path.join(os.path.abspath(workdir), 'fid_stats')
  c.mitigation.use = False
  c.mitigation.use_method = ''
  if jax.process_index() == 0:
    workdir_lib.check_and_write_config(directory, c)
  return c, directory


def use_view(config, workdir: str):
  """(config, directory) of the mitigated model `--config.mitigation.use=True` asks for."""
  method = config.mitigation.use_method
  report_path = os.path.join(workdir, OUT_DIR, 'report.json')
  if not method:
    if not os.path.exists(report_path):
      raise CheckpointError(f'mitigation.use=True but {report_path} does not exist: run --mode=mitigate first')
    report = files.read_json(report_path)
    method = report.get('selected_method')
    if not method:
      raise CheckpointError(f'{report_path} selects no mitigated model ({report.get("reason", "no method ran")})')
  series = f'{STAGE1_SERIES}/{method}'
  if not os.path.isdir(ckpt_lib.stage_dir(workdir, series)):
    raise CheckpointError(f'mitigation.use=True: no checkpoints in {ckpt_lib.stage_dir(workdir, series)}; run '
                          f"--mode=mitigate with '{method}' in mitigation.methods first")
  return make_view(config, workdir, method, series, f'{LATENT_SERIES}/{method}')


# ----------------------------------------------------------------------------- the steps


def diagnose(config, workdir: str, mesh) -> dict:
  """The interpret part 'diagnosis' of a workdir (reused when up to date for its checkpoint)."""
  c = config.copy_and_resolve_references()
  c.interpret.parts = ('diagnosis',)
  interpret_mode.interpret_mode(c, workdir, mesh)
  return files.read_json(os.path.join(workdir, 'interpret', 'diagnosis.json'))


def sample_quality(config, workdir: str, mesh) -> dict:
  """fd_classifier of unconditional samples (evaluate mode restricted to it, in `workdir`), from
  `mitigation.quality_num_samples` of them when set."""
  c = config.copy_and_resolve_references()
  c.evaluate.metrics = ('fd_classifier',)
  c.evaluate.samples = ('unconditional',)
  c.evaluate.num_samples = config.mitigation.quality_num_samples or config.evaluate.num_samples
  metrics = evaluate_mode.evaluate_mode(c, workdir, mesh)
  fd = metrics['fd_classifier']
  return {'fd_classifier': fd['unconditional'], 'real_eval_baseline': fd['real_eval_baseline'],
          'num_samples': fd['num_samples']}


def held_out_association(config, model, variables, names, values) -> np.ndarray:
  """eta^2 (attributes, prototypes) of s with the labels of `interpret.num_eval_images` held-out images."""
  arrays = data_lib.load_arrays(config.data, config.interpret.eval_split or config.data.eval_split,
                                max_examples=config.interpret.num_eval_images)
  s = sample_lib.encode_batched(model, variables, arrays['image'], config.interpret.batch_size)
  return stats.association_matrix(s, np.asarray(arrays['attributes']), [len(v) for v in values])


@dataclasses.dataclass(frozen=True)
class TrainingAttributes:
  """The dataset's attributes and the labels of its training split (record order)."""
  names: list[str]
  values: list[tuple]
  labels: np.ndarray
  split: str

  def dependence(self, a: str, b: str) -> dict:
    """How A and B go together in the training labels: Cramér's V and the chi-squared test's p-value."""
    i, j = self.names.index(a), self.names.index(b)
    table = bias_lib.contingency_table(self.labels[:, i], self.labels[:, j], len(self.values[i]), len(self.values[j]))
    return dict(cramers_v=bias_lib.cramers_v(table), p_value=bias_lib.independence_p_value(table),
                labels=f'dataset labels of {self.split} ({len(self.labels)} examples)')


def training_attributes(config) -> TrainingAttributes:
  info = data_lib.get_info(config.data)
  split = config.data.train_split
  labels = training.pass_over_split(config, split, None, 256, label=f'reading the labels of {split}')['attributes']
  return TrainingAttributes(list(info.attribute_names), [tuple(v) for v in info.attribute_values],
                            np.asarray(labels), split)


def in_data(pairs: list, attributes: TrainingAttributes, level: float) -> list:
  """The pairs (attribute name pairs) whose attributes are dependent in the training labels at `level`."""
  return [p for p in pairs if attributes.dependence(*p)['p_value'] <= level]


def rebalancing(plans: list[dict], attributes: TrainingAttributes) -> tuple[np.ndarray, dict]:
  """(weights of the training examples in record order, report of the association before / after)."""
  names, values, labels = attributes.names, attributes.values, attributes.labels
  pairs = [(names.index(p['controlled']), names.index(p['co_moved'])) for p in plans]
  cards = [len(v) for v in values]
  weights = bias_lib.independence_weights(labels, pairs, cards)
  report = {}
  for (a, b), p in zip(pairs, plans):
    after = bias_lib.weighted_table(labels[:, a], labels[:, b], weights, cards[a], cards[b])
    report[' <-> '.join(p['attributes'])] = dict(
        cramers_v_before=attributes.dependence(*p['attributes'])['cramers_v'],
        cramers_v_after=bias_lib.cramers_v(after * len(labels)),
        max_abs_dependence_after=float(np.abs(after - np.outer(after.sum(1), after.sum(0))).max()))
  report['max_weight'] = float(weights.max())
  report['num_examples'] = int(len(labels))
  report['labels'] = f'dataset labels of {attributes.split}'
  return weights, report


def resampled_iterator(config, weights: np.ndarray, num: int, seed: int):
  """Batches of `num` training examples drawn in proportion to `weights` (systematic resampling,
  shuffled), then reshuffled draws again; checkpointable like the training stream."""
  opened = sources.open_split(config.data, config.data.train_split)
  order = bias_lib.resample(weights, num, np.random.default_rng([seed, 4099]))
  ds = grain.MapDataset.source(opened.records.subset(order)).repeat(None)
  if jax.process_count() > 1:
    ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.map(pipeline._preprocess(config.data, opened))  # pylint: disable=protected-access
  it = ds.to_iter_dataset(pipeline._read_options(config.data))  # pylint: disable=protected-access
  return iter(it.batch(config.train.batch_size // jax.process_count(), drop_remainder=True,
                       batch_fn=preprocess_lib.stack_examples))


def finetune(config, workdir: str, view: str, make_task, make_iterator, mesh, method: str,
             recipe: Optional[dict] = None, recheck: Optional['PictureRecheck'] = None) -> dict:
  """Stage 1 of `workdir` fine-tuned with `make_task(added edits)` on `make_iterator()` into the
  series the view links.

  The series starts with a copy of the original's final state (its step number), so the loop
  resumes from it, and a crash or a second run continues where it stopped. `recipe` (what the
  task and data are made from) is kept in the view's fine_tuning.json with the step settings: a
  later run with another recipe stops rather than resuming a series made differently.
  `recheck`: the fine-tuning stops `recheck.count` times at equal intervals, and the edits the
  recheck finds from the checkpoint there are judged from then on (kept in the view's
  rechecks.json, so that a resumed run judges the same edits)."""
  mcfg = config.mitigation
  original = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(workdir, 'stage1'), asynchronous=False, writer=False)
  try:
    start = original.latest_step()
    if start is None:
      raise CheckpointError(f'no stage-1 checkpoint in {ckpt_lib.stage_dir(workdir, "stage1")}: run --mode=train first')
    steps = max(1, int(round(mcfg.steps_fraction * config.train.num_steps)))
    settle = settle_steps(steps, mcfg.settle_fraction)
    # a task's `frozen` parameter collections get no update (scale 0; RefitDecoderTask)
    first = make_task([])
    frozen = getattr(first, 'frozen', ())
    scales = {'prototypes': float(mcfg.prototype_lr_scale)}
    scales.update({c: 0.0 for c in frozen})
    settings = dataclasses.replace(LoopSettings.from_section(config.train), num_steps=start + steps,
                                   learning_rate=float(mcfg.learning_rate), warmup_steps=0,
                                   lr_schedule=mcfg.lr_schedule, schedule_from=start, schedule_to=start + steps,
                                   checkpoint_every=steps, keep_checkpoints=2, sample_every=0,
                                   lr_scales=tuple(scales.items()))
    tx = make_optimizer(settings)
    made = dict(method=method, from_step=start, steps=steps, learning_rate=settings.learning_rate,
                batch_size=settings.batch_size, recipe=recipe or {})
    if mcfg.prototype_lr_scale != 1.0:  # recorded only when set: older series stay resumable
      made['prototype_lr_scale'] = float(mcfg.prototype_lr_scale)
    if mcfg.lr_schedule != 'constant':
      made['lr_schedule'] = mcfg.lr_schedule
    if settle:
      made['settle_steps'] = settle
    made = json.loads(json.dumps(made, default=str))
    made_path = os.path.join(view, 'fine_tuning.json')
    series = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(view, 'stage1'), keep=2, asynchronous=False)
    try:
      if series.latest_step() is not None and os.path.exists(made_path) and files.read_json(made_path) != made:
        raise WorkdirError(
            f'{ckpt_lib.stage_dir(workdir, f"{STAGE1_SERIES}/{method}")} was fine-tuned with other settings '
            f'({made_path}); delete it, {ckpt_lib.stage_dir(workdir, f"{LATENT_SERIES}/{method}")} and {view} '
            'to fine-tune again')
      if series.latest_step() is None:
        if jax.process_index() == 0:
          files.write_json(made_path, made)
        it = make_iterator()
        state, _ = restore_or_init(first, tx, original, it, seed=config.seed, mesh=mesh, process_data_state=False)
        if frozen and settings.ema_decay > 0:
          # frozen parts start at their moving average, which the original samples with: the average
          # of a constant is then that constant, and they stay the model that the diagnosis read
          state = _at_moving_average(state, frozen)
        series.save(start, state, it.get_state(), {'stage': 'stage1', 'mitigation': method, 'from_step': start,
                                                   'from': ckpt_lib.stage_dir(workdir, 'stage1')}, force=True)
    finally:
      series.close()
  finally:
    original.close()
  watch = timing.Stopwatch()
  meta = {'config': workdir_lib.config_to_dict(config), 'mitigation': method, 'from_step': start}
  count = recheck.count if recheck is not None else 0
  method_steps = steps - settle
  ends = [start + int(round(k * method_steps / (count + 1))) for k in range(1, count + 2)]
  rechecks_path = os.path.join(view, 'rechecks.json')
  done = files.read_json(rechecks_path) if count and os.path.exists(rechecks_path) else []
  for k, end in enumerate(ends):
    added = [tuple(e) for r in done for e in r['edits']]
    state = run_training(make_task(added), dataclasses.replace(settings, num_steps=end), view, make_iterator,
                         seed=config.seed, mesh=mesh, meta=meta)
    if k < count and len(done) <= k:
      variables = state.inference_variables(use_ema=False)
      done.append(dict(step=end, **recheck(variables, {(int(e[0]), e[1]) for e in added})))
      logging.info('mitigate: recheck at step %d: %d more edits judged %s', end, len(done[-1]['edits']),
                   done[-1]['edits'])
      if jax.process_index() == 0:
        files.write_json(rechecks_path, done)
  if settle:
    _settle(config, view, settings, make_iterator, mesh, meta, start + method_steps, start + steps)
  out = dict(from_step=start, steps=steps, to_step=start + steps, batch_size=settings.batch_size,
             learning_rate=settings.learning_rate, cost_fraction=steps / config.train.num_steps,
             seconds=round(watch.seconds(), 1))
  if count:
    out['rechecks'] = done
  if settle:
    out['settle_steps'] = settle
  return out


def settle_steps(steps: int, fraction: float) -> int:
  """How many of `steps` fine-tuning steps settle (`mitigation.settle_fraction`): 0 when off, else at least
  2 (the switch and one update) and at most steps - 1 (the method trains at least one step)."""
  if fraction <= 0 or steps < 3:
    return 0
  return min(steps - 1, max(2, int(round(fraction * steps))))


def _at_moving_average(state, names):
  """`state` with the parameter collections `names` set to their moving average."""
  return state.replace(params=type(state.params)(
      {k: state.ema_params[k] if k in names else v for k, v in state.params.items()}))


def _settle(config, view: str, settings: LoopSettings, make_iterator, mesh, meta: dict, switch: int, end: int):
  """The settling steps after the method's: the U-Net alone learns, on the diffusion loss, to draw from
  the s and the decoder's pictures that the method made.

  At `switch` the prototype network and the decoder of s are set to their moving average, which the
  later modes sample with, and saved as step switch + 1 (a step without an update: the step before it
  stays, so a kill here loses nothing). From then on their updates are zero, so their average stays
  equal to them, and the U-Net adapts to exactly the encoder and decoder it will be sampled with."""
  task = training.PatronusTask(config)
  frozen = ('prototypes', 's_decoder') if task.model.s_decoder_size else ('prototypes',)
  series = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(view, 'stage1'), keep=2, asynchronous=False)
  try:
    latest = series.latest_step()
    if latest is None or latest < switch:
      raise WorkdirError(f'{series.directory}: the fine-tuning stopped at step {latest}, before {switch}')
    if latest == switch:  # past it (a resumed run), run_training continues from the series alone
      it = make_iterator()
      state, _ = restore_or_init(task, make_optimizer(settings), series, it, seed=config.seed, mesh=mesh)
      if settings.ema_decay > 0:
        state = _at_moving_average(state, frozen)
      series.save(switch + 1, state.replace(step=state.step + 1), it.get_state(), dict(meta, settle_from=switch),
                  force=True)
  finally:
    series.close()
  settings = dataclasses.replace(settings, num_steps=end, lr_scales=tuple((c, 0.0) for c in frozen))
  return run_training(task, settings, view, make_iterator, seed=config.seed, mesh=mesh, meta=meta)


class PictureRecheck:
  """`counterfactual_rechecks`: the diagnosis of the fine-tuned model on the decoder's picture.

  The judged edits hold B under the edits that moved it before the fine-tuning; cured there, a
  shortcut moves to another prototype's edit (measured on two biased models: p21 raised and p4
  raised drew the pair after). Every edit acts through the decoder's picture on shapes, so the
  picture of s shows it without a U-Net pass: for every prototype and direction, s of
  `num_diagnosis_samples` held-out images edited as the diagnosis edits, the classifier's reading of
  the decoder's picture, and per attribute the probability mass moved (the diagnosis' effect).
  An edit not yet judged that moves both attributes of a pair by more than the picture's bystander
  quantile is judged from then on: the larger of the two kept to the original's edit, the smaller
  held (the pair is unordered: the edit now draws the larger)."""

  def __init__(self, config, count: int, plans: list[dict], heads: list[str], edit_values: dict, classifier,
               judged: set):
    self.config, self.count, self.plans, self.heads, self.judged = config, int(count), plans, heads, set(judged)
    self.values = {d: np.asarray(edit_values[d], np.float32) for d in diagnosis_lib.DIRECTIONS}
    ic = config.interpret
    self.images = data_lib.load_arrays(config.data, ic.eval_split or config.data.eval_split,
                                       max_examples=ic.num_diagnosis_samples)['image']
    self.model = model = patronus_from_config(config, dtype='float32')
    size = self.images.shape[1:3]

    def read(variables, x):  # the classifier's probabilities on the decoder's picture of s rows x
      picture = unet_lib.resize_sketch(model.apply(variables, x, method=model.decode_activations),
                                       (x.shape[0],) + tuple(size))
      _, logits = classifier.net.apply({'params': classifier.params}, picture)
      return [jax.nn.softmax(lg, -1) for lg in logits]
    self._read = jax.jit(read)  # compiled once for every recheck

  def effects(self, variables) -> np.ndarray:
    """(P, 2, attributes): mass moved in the classifier's reading of the picture per edit."""
    batch = self.config.interpret.batch_size
    s = sample_lib.encode_batched(self.model, variables, self.images, batch)
    n, p = s.shape
    rows = diagnosis_lib.edited_activations(s, range(p), self.values['lower'], self.values['raise'])
    rows = np.concatenate([s, rows.reshape(-1, p)])
    probs = batching.padded_map(lambda _, x: self._read(variables, x), rows, batch)
    return np.stack([diagnosis_lib.mass_moved(q[n:].reshape((p, 2, n, -1)) - q[:n]) for q in probs], -1)

  def __call__(self, variables, added: set) -> dict:
    """The edits to judge from now on (j, direction, value, controlled, held) and what showed them;
    `added`: the (j, direction) earlier rechecks added."""
    return recheck_edits(self.effects(variables), self.plans, self.heads, self.values, self.judged | added)


def recheck_edits(effects: np.ndarray, plans: list[dict], heads: list[str], values: dict, judged: set) -> dict:
  """The edits of `PictureRecheck`: effects (P, 2, attributes); `judged`: the (j, direction) already
  judged. The threshold is the 0.9 quantile of what edits move the attributes they do not move most;
  an edit is judged when it moves both attributes of a pair by more."""
  top = effects.max(-1, keepdims=True)
  bystanders = effects[effects < top]
  threshold = float(np.quantile(bystanders, 0.9)) if bystanders.size else 0.0
  merged = {}
  for p in plans:
    a, b = heads.index(p['controlled']), heads.index(p['co_moved'])
    for j in range(effects.shape[0]):
      for d, direction in enumerate(diagnosis_lib.DIRECTIONS):
        ea, eb = effects[j, d, a], effects[j, d, b]
        if (j, direction) in judged or min(ea, eb) <= threshold:
          continue
        controlled, held = merged.setdefault((j, direction), (set(), set()))
        controlled.add(a if ea >= eb else b)
        held.add(b if ea >= eb else a)
  edits = [[j, d, float(values[d][j]), sorted(c), sorted(h - c)] for (j, d), (c, h) in sorted(merged.items())]
  shown = {f'{j} {d}': {heads[h]: round(float(effects[j, diagnosis_lib.DIRECTIONS.index(d), h]), 4)
                        for h in sorted(c | h)} for (j, d), (c, h) in sorted(merged.items())}
  return dict(threshold=threshold, edits=edits, effects=shown)


# ----------------------------------------------------------------------------- regenerations of rare combinations

# a combination (a, b) of a pair is rare when the training labels hold it at most half as often as
# independence would (rebalancing's weight P(a) P(b) / P(a, b) >= 2), common when at least as often
RARE_WEIGHT = 2.0


def combination_groups(train_a: np.ndarray, train_b: np.ndarray, held_a: np.ndarray, held_b: np.ndarray,
                       num_a: int, num_b: int) -> dict:
  """Which held-out images show a rare and which a common combination of (A, B) in the training labels,
  and the most frequent b of each a there (where the shortcut draws B from A)."""
  table = bias_lib.contingency_table(train_a, train_b, num_a, num_b)
  joint = table / max(table.sum(), 1.0)
  independent = np.outer(joint.sum(1), joint.sum(0))
  weight = np.where(joint > 0, independent / np.maximum(joint, 1e-12), np.inf)[held_a, held_b]
  return dict(rare=np.flatnonzero(weight >= RARE_WEIGHT), common=np.flatnonzero(weight <= 1.0),
              usual_b=np.argmax(table, 1))


def regeneration_images(config) -> Optional[dict]:
  """Held-out images and labels for the regenerations: the eval split, and where the data plant the
  correlation, the same source without it (so that the rare combinations are many, not a few percent).
  None when the split has no labels."""
  mcfg, data = config.mitigation, config.data
  source = data_config.without_planted_bias(data) if data_config.planted_bias(data) else data
  arrays = data_lib.load_arrays(source, config.interpret.eval_split or data.eval_split,
                                max_examples=mcfg.regeneration_images)
  if 'attributes' not in arrays:
    return None
  return dict(image=np.asarray(arrays['image']), attributes=np.asarray(arrays['attributes']),
              source='without the planted correlation' if source is not data else 'as is')


def regenerations(config, view: str, images: np.ndarray, classifier, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(the classifier's labels of the images, of their regenerations): each image regenerated once from
  its s (the view's encoder) with new noise by the interpret sampler; the same noise for every model."""
  model, variables, _ = loading.load_stage1_variables(config, view)
  ic = config.interpret
  spec = interpret_core.deterministic_spec(config.diffusion, ic.sample_steps, ic.sampler)
  x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), images.shape, jnp.float32))

  def labels(x):
    return jnp.stack([jnp.argmax(q, -1) for q in interpret_core.classify_batch(classifier, x)], -1)

  def regenerate(_, x, noise):
    s = interpret_core.encode_batch(model, variables, jnp.asarray(x))['s']
    out = interpret_core.generate_batch(model, variables, s, jnp.asarray(noise), spec)['images']
    return labels(jnp.asarray(x)), labels(out)
  return batching.padded_map(regenerate, (images, x_T), ic.batch_size)


def rare_combinations(plans: list[dict], attributes: TrainingAttributes, held: dict, real: np.ndarray,
                      regenerated: np.ndarray) -> dict:
  """Per pair: how often a regeneration keeps B of a held-out image (the classifier's label of B on
  the regeneration equals its label on the image), for the rare combinations of (A, B) and the common
  ones, and how often a rare one comes back with the usual b of its a. A model that draws B from A
  keeps B of the common combinations and turns the rare ones into common ones; cured, the two keep
  rates meet."""
  names, out = attributes.names, {}
  for p in plans:
    a, b = names.index(p['controlled']), names.index(p['co_moved'])
    groups = combination_groups(attributes.labels[:, a], attributes.labels[:, b], held['attributes'][:, a],
                                held['attributes'][:, b], len(attributes.values[a]), len(attributes.values[b]))
    rate = lambda idx, hit: float(np.mean(hit[idx])) if len(idx) else None  # None: no such held-out image
    kept = regenerated[:, b] == real[:, b]
    usual = regenerated[:, b] == groups['usual_b'][held['attributes'][:, a]]
    out[' <-> '.join(p['attributes'])] = dict(
        rare_images=int(len(groups['rare'])), common_images=int(len(groups['common'])),
        rare_keep_b=rate(groups['rare'], kept), common_keep_b=rate(groups['common'], kept),
        rare_to_usual_b=rate(groups['rare'], usual), rare_keep_a=rate(groups['rare'], regenerated[:, a] == real[:, a]))
  return out


# ----------------------------------------------------------------------------- comparing


def summary(diagnosis: dict) -> dict:
  """The diagnosis in the report: its pairs (as in interpret/diagnosis.json) and findings."""
  keys = ('suspected_pairs', 'suspected_correlations', 'findings', 'num_samples', 'z_critical', 'bystander_effect')
  out = {k: diagnosis[k] for k in keys if k in diagnosis}
  out['controls'] = {str(p['prototype']): p['controls'] for p in diagnosis.get('prototypes', [])}
  return out


def _effect(diagnosis: dict, prototype: int, direction: str, attribute: str) -> dict:
  entry = next(p for p in diagnosis['prototypes'] if p['prototype'] == prototype)
  e = entry['directions'][direction]['effects'][attribute]
  return {'effect': e['effect'], 'effect_ci': e['effect_ci'], 'flip_rate': e['flip_rate'],
          'towards': e['towards'], 'significant': e['significant']}


def compare(before: dict, after: dict, plans: list[dict], quality_before: dict, quality_after: dict,
            mcfg, attributes: TrainingAttributes, rare_before: Optional[dict] = None,
            rare_after: Optional[dict] = None) -> dict:
  """Per edit of each pair: the co-moved effect and the edit success of A before and after; per pair,
  the edits that still show it after (`named_after`: often another edit than before's, e.g. the same
  prototype lowered instead of raised); the targets (pair gone, co-moved effect down by
  target_reduction, edit success and fd_classifier within target_tolerance, and with `rare_after`
  (`rare_combinations`) the rare combinations' B kept within target_tolerance of the common ones')."""
  edits, named_after = [], {}
  after_edits = {tuple(sorted(x['attributes'])): x['edits'] for x in after['suspected_correlations']}
  for p in plans:
    key = tuple(sorted(p['attributes']))
    named_after[' <-> '.join(key)] = [{k: e[k] for k in ('prototype', 'direction', 'controlled', 'co_moved', 'effect')}
                                      for e in after_edits.get(key, [])]
    for e in p['edits']:
      j, d = int(e['prototype']), e['direction']
      co_b, co_a = _effect(before, j, d, e['co_moved']), _effect(after, j, d, e['co_moved'])
      a_b, a_a = _effect(before, j, d, e['controlled']), _effect(after, j, d, e['controlled'])
      edits.append(dict(
          prototype=j, direction=d, controlled=e['controlled'], co_moved=e['co_moved'],
          co_moved_before=co_b, co_moved_after=co_a,
          co_moved_reduction=1.0 - co_a['effect'] / max(co_b['effect'], 1e-12),
          controlled_before=a_b, controlled_after=a_a,
          edit_success_before=a_b['flip_rate'], edit_success_after=a_a['flip_rate'],
          edit_success_ratio=a_a['flip_rate'] / max(a_b['flip_rate'], 1e-12)))
  tol = mcfg.target_tolerance
  fd_ratio = quality_after['fd_classifier'] / max(quality_before['fd_classifier'], 1e-12)
  targets = dict(
      pairs_gone=not any(named_after.values()), no_suspected_pair=not after['suspected_pairs'],
      no_pair_in_data=not in_data(after['suspected_pairs'], attributes, mcfg.data_p_value),
      co_moved_reduction=bool(all(e['co_moved_reduction'] >= mcfg.target_reduction for e in edits)),
      edit_success_kept=bool(all(e['edit_success_ratio'] >= 1.0 - tol for e in edits)),
      sample_quality_kept=bool(fd_ratio <= 1.0 + tol))
  extra = {}
  if rare_after:
    # the shortcut in what the model makes, not only in its edits: a rare combination's B kept as well as
    # a common one's (a pair without held-out images of one kind is not shown to be kept)
    targets['rare_combinations_kept'] = bool(all(
        r['rare_keep_b'] is not None and r['common_keep_b'] is not None
        and r['rare_keep_b'] >= (1.0 - tol) * r['common_keep_b'] for r in rare_after.values()))
    extra['rare_combinations'] = {k: dict(before=(rare_before or {}).get(k), after=r) for k, r in rare_after.items()}
  return dict(edits=edits, named_after=named_after, **extra,
              min_co_moved_reduction=float(min(e['co_moved_reduction'] for e in edits)),
              min_edit_success_ratio=float(min(e['edit_success_ratio'] for e in edits)),
              fd_classifier_ratio=float(fd_ratio), targets=targets, all_targets_met=bool(all(targets.values())))


def select(results: dict) -> Optional[str]:
  """The method meeting most targets, then with the largest smallest co-moved reduction; a method
  that left some co-moved effect as large as before or larger ranks below every method that
  reduced them all (keeping the edit and the sample quality by changing little is no cure)."""
  if not results:
    return None

  def rank(m):
    c = results[m]['comparison']
    return c['min_co_moved_reduction'] > 0, sum(c['targets'].values()), c['min_co_moved_reduction']
  return max(results, key=rank)


# ----------------------------------------------------------------------------- the figure


def edits_figure(config, views: dict, diagnoses: dict, edit: dict, path: str, num_images: int = 4) -> None:
  """Rows: the original and each mitigated model; per image: s_j lowered / unchanged / raised (each
  model's own observed range, as its diagnosis), same held-out images, same x_T; cell titles: the
  classifier's reading of A and B."""
  j, names = int(edit['prototype']), (edit['controlled'], edit['co_moved'])
  vc, _ = next(iter(views.values()))
  info = data_lib.get_info(config.data)
  heads = [list(info.attribute_names).index(n) for n in names]
  images = data_lib.load_arrays(config.data, config.interpret.eval_split or config.data.eval_split,
                                max_examples=num_images)['image']
  x_T = np.random.default_rng(config.seed + 43).standard_normal(images.shape).astype(np.float32)
  clf, _ = classifier_for_workdir(vc, next(iter(views.values()))[1])
  spec = interpret_core.deterministic_spec(config.diffusion, config.interpret.sample_steps, config.interpret.sampler)
  table, titles = [], []
  for name, (c, directory) in views.items():
    model, variables, _ = loading.load_stage1_variables(c, directory)
    engine = interpret_core.Engine(model, variables, spec, config.interpret.batch_size, classifier=clf,
                                   label='mitigation figure')
    s = engine.encode(images)['s']
    ranges = diagnoses[name]['edit_values']
    rows = np.concatenate([s, s, s])
    rows[:len(s), j] = ranges['lower'][j]
    rows[2 * len(s):, j] = ranges['raise'][j]
    out = engine.generate(rows, np.concatenate([x_T] * 3), what=f'{name}: the same edits', classify=True, uint8=True)
    row, trow = [], []
    for i in range(len(s)):
      for k in range(3):
        r = k * len(s) + i
        row.append(out['images'][r].astype(np.float32) / 127.5 - 1.0)
        trow.append(' '.join(info.attribute_values[h][int(np.argmax(out['probs'][h][r]))] for h in heads))
    table.append(row)
    titles.append(trow)
  fig = figures.image_table(
      table, list(views), [f'img {i} {t}' for i in range(len(images)) for t in ('↓', 'base', '↑')],
      f'The same edit (prototype {j} lowered / raised) before and after mitigation; cells: {names[0]} {names[1]}',
      cell_titles=titles)
  files.save_figure(path, fig)


# ----------------------------------------------------------------------------- the mode


def _write_report(out_dir: str, report: dict) -> dict:
  if jax.process_index() == 0:
    files.write_json(os.path.join(out_dir, 'report.json'), report)
  return report


def _nothing_to_mitigate(out_dir: str, before: dict, watch: timing.Stopwatch, entangled: tuple = ()) -> dict:
  """The report when the diagnosis was skipped or names no pair of attributes that the training data
  tie together (`entangled`: the plans of the pairs it named all the same): nothing is trained."""
  if 'skipped' in before:
    reason = f"diagnosis skipped: {before['skipped']}"
  elif entangled:
    reason = ('the attributes of every suspected pair are independent in the training labels (chi-squared '
              'test, mitigation.data_p_value): the co-movement comes from entangled prototypes, not from a '
              'correlation of the data; nothing to mitigate, nothing changed')
  else:
    reason = 'the diagnosis names no suspected pair: nothing to mitigate, nothing changed'
  logging.info('mitigate: %s', reason)
  nothing = summary(before) if 'skipped' not in before else {'suspected_pairs': []}
  return _write_report(out_dir, {'before': nothing, 'after': nothing, 'mitigated': False, 'reason': reason,
                                 'pairs': [], 'entangled': list(entangled), 'methods': {}, 'selected_method': None,
                                 'seconds': round(watch.seconds(), 1)})


def _original(config, workdir: str, mesh) -> tuple[tuple, dict]:
  """((config, directory) of the original's view, its sample quality)."""
  has_latent = os.path.isdir(ckpt_lib.stage_dir(workdir, 'latent'))
  view = make_view(config, workdir, ORIGINAL, 'stage1', 'latent' if has_latent else None)
  if not has_latent:  # the original's unconditional samples need a latent model: trained in its view
    training.train_latent(*view, mesh)
  return view, sample_quality(*view, mesh)


def _rare_measure(config, workdir: str, plans: list[dict], attributes: TrainingAttributes
                  ) -> Optional[Callable[[str], dict]]:
  """`rare_combinations` of the model a view directory holds, on `regeneration_images` held-out images;
  None when off or when the held-out split has no labels."""
  if not config.mitigation.regeneration_images:
    return None
  held = regeneration_images(config)
  if held is None:
    logging.warning('mitigate: the held-out split has no labels; no regenerations of rare combinations')
    return None
  classifier, _ = classifier_for_workdir(config, workdir)

  def measure(view: str) -> dict:
    real, regenerated = regenerations(config, view, held['image'], classifier, config.seed + 5)
    out = rare_combinations(plans, attributes, held, real, regenerated)
    logging.info('mitigate: regenerations of rare combinations (%s), %s: %s', held['source'], view, out)
    return out
  return measure


def _mitigated(config, workdir: str, mesh, method: str, plans: list[dict], attributes: TrainingAttributes,
               before: dict, original_quality: dict, rare: Optional[Callable[[str], dict]] = None,
               original_rare: Optional[dict] = None) -> tuple[tuple, dict, dict, dict]:
  """Stage 1 fine-tuned with `method` (and stage 2 again): (its view, its diagnosis, its sample quality,
  its entry in the report's 'methods'); `rare(view directory)`: `rare_combinations` of a model."""
  mcfg = config.mitigation
  series = f'{STAGE1_SERIES}/{method}'
  view = vc, vdir = make_view(config, workdir, method, series, f'{LATENT_SERIES}/{method}')
  logging.info('mitigate: method %s -> %s', method, ckpt_lib.stage_dir(workdir, series))
  make_task, make_iterator, recipe, extra, recheck = _method_training(config, workdir, vc, method, plans,
                                                                      attributes, before)
  ft = finetune(config, workdir, vdir, make_task, make_iterator, mesh, method, recipe, recheck)
  if mcfg.retrain_latent:
    training.train_latent(vc, vdir, mesh)
  diagnosis = diagnose(vc, vdir, mesh)
  quality = sample_quality(vc, vdir, mesh)
  after_rare = rare(vdir) if rare is not None else None
  result = dict(fine_tuning=ft, **extra, checkpoints=ckpt_lib.stage_dir(workdir, series), view=vdir,
                after=summary(diagnosis), sample_quality=quality,
                comparison=compare(before, diagnosis, plans, original_quality, quality, mcfg, attributes,
                                   original_rare, after_rare))
  if after_rare:
    result['after']['rare_combinations'] = after_rare
  return view, diagnosis, quality, result


def _method_training(config, workdir: str, vc, method: str, plans: list[dict], attributes: TrainingAttributes,
                     before: dict):
  """(make_task, make_iterator, recipe, report entries, recheck) of fine-tuning with `method` in the
  view's config vc; make_task(added) is the task with the edits rechecks added (`PictureRecheck`,
  None unless counterfactual_rechecks)."""
  mcfg = config.mitigation
  extra, recheck = {}, None
  def rebalanced_stream():
    weights, extra['rebalancing'] = rebalancing(plans, attributes)
    num = (int(round(mcfg.steps_fraction * config.train.num_steps)) + 2) * config.train.batch_size
    return lambda: resampled_iterator(vc, weights, num, config.seed)

  if method in ('rebalance', 'isolate', 'refit_decoder'):
    make_iterator = rebalanced_stream()
    recipe = {'pairs': [p['attributes'] for p in plans]}
    if method == 'rebalance':
      make_task = lambda _: training.PatronusTask(vc)
    elif method == 'refit_decoder':
      make_task = lambda _: RefitDecoderTask(vc)
      recipe['trained'] = 's_decoder'
    else:
      groups = [(attributes.names.index(p['controlled']), p['prototypes_a']) for p in plans]
      co_moved = None
      if mcfg.isolate_share == 'between_b':
        co_moved = [attributes.names.index(p['co_moved']) for p in plans]
      make_task = lambda _: IsolateTask(vc, groups, mcfg.isolate_weight, mcfg.isolate_exclusive_weight, co_moved)
      extra['penalty'] = dict(groups=groups, weight=mcfg.isolate_weight)
      if co_moved is not None:  # older series' recipes stay equal
        extra['penalty'].update(share='between_b', co_moved=co_moved)
      if mcfg.isolate_exclusive_weight > 0:  # older series' recipes stay equal
        extra['penalty']['exclusive_weight'] = mcfg.isolate_exclusive_weight
      recipe = dict(recipe, **extra['penalty'])
  elif method == 'counterfactual':
    clf, _ = classifier_for_workdir(config, workdir)
    ev = before['edit_values']
    heads = list(clf.attribute_names)
    # one edit per prototype and direction that showed a pair; its attributes A are the ones it controls
    found = {}
    for e in (e for p in plans for e in p['edits']):
      found.setdefault((int(e['prototype']), e['direction']), set()).add(heads.index(e['controlled']))
    edits = [([j], [ev[direction][j]], sorted(a)) for (j, direction), a in sorted(found.items())]
    sampled, scope, judged = [], mcfg.counterfactual_scope, set(found)
    if scope == 'every_prototype':
      sampled = [e[:1] + e[2:] for e in _every_prototype_edits(before, plans, heads, set(found))]
    elif scope != 'edits':  # 'prototypes_a', 'moved_b': judged at every step, like the diagnosed edits
      subset = (dict(only={j for j, _ in found}) if scope == 'prototypes_a' else
                dict(min_b_effect=diagnosis_lib.bystander_effect(before['prototypes'])['q90']))
      more = _every_prototype_edits(before, plans, heads, set(found), **subset)
      edits += [([j], [v], c, h) for j, _, v, c, h in more]
      judged |= {(j, d) for j, d, _, _, _ in more}
    teacher = loading.load_stage1_variables(config, workdir)[1] if mcfg.counterfactual_keep_weight > 0 else None
    make_task = lambda added: CounterfactualTask(
        vc, edits + [([j], [v], c, h) for j, _, v, c, h in added], clf, mcfg.counterfactual_weight, teacher,
        mcfg.counterfactual_keep_weight, mcfg.counterfactual_max_t, mcfg.counterfactual_on, sampled,
        mcfg.counterfactual_sampled_edits)
    extra['penalty'] = recipe = dict(edits=edits, weight=mcfg.counterfactual_weight,
                                     keep_weight=mcfg.counterfactual_keep_weight, max_t=mcfg.counterfactual_max_t)
    if mcfg.counterfactual_on != 'x0_hat':  # older series' recipes stay equal
      recipe['on'] = mcfg.counterfactual_on
    if mcfg.counterfactual_scope != 'edits':
      recipe.update(scope=mcfg.counterfactual_scope, sampled_edits=mcfg.counterfactual_sampled_edits)
    if mcfg.counterfactual_rechecks:  # older series' recipes stay equal
      recipe['rechecks'] = mcfg.counterfactual_rechecks
      recheck = PictureRecheck(vc, mcfg.counterfactual_rechecks, plans, heads, ev, clf, judged)
    if mcfg.counterfactual_stream == 'rebalanced':
      make_iterator = rebalanced_stream()
      recipe['stream'] = 'rebalanced'
    else:
      make_iterator = data_lib.training_iterator_factory(vc.data, vc.train.batch_size, config.seed + 1)
  else:
    groups = [(p['prototypes_a'], p['predictors_b']) for p in plans]
    make_task = lambda _: DecorrelateTask(vc, groups, mcfg.penalty_weight, mcfg.dependence)
    extra['penalty'] = recipe = dict(groups=groups, weight=mcfg.penalty_weight, dependence=mcfg.dependence)
    make_iterator = data_lib.training_iterator_factory(vc.data, vc.train.batch_size, config.seed + 1)
  return make_task, make_iterator, recipe, extra, recheck


def _every_prototype_edits(before: dict, plans: list[dict], heads: list[str], diagnosed: set,
                           only: Optional[set] = None, min_b_effect: Optional[float] = None) -> list:
  """The extra edits of counterfactual_scope 'every_prototype' (all of them, sampled at each step),
  'prototypes_a' and 'moved_b' (the subsets that `only` and `min_b_effect` keep, judged at every step):
  besides the edits that showed a pair, every other prototype raised and lowered (as the diagnosis
  edits it), with B held and A free (A held to the original's edit by the keep term), as
  (j, direction, value, controlled, held). Held to the diagnosed edits alone, the model draws B from
  another edit instead (measured: p13 raised cured, p13 lowered then moved shape by 0.33). A
  prototype whose edit controls B in the diagnosis moves B freely and holds A instead (measured:
  with it left out, the colour prototype of a model diagnosed as shape -> colour began to move shape
  by 0.20). `only`: these prototypes alone ('prototypes_a': the diagnosed edits' prototypes in the
  other direction). `min_b_effect`: only the edits that moved B by
  at least this much in the diagnosis ('moved_b')."""
  ev = before['edit_values']
  merged = {}
  for p in plans:
    for x in before['prototypes']:
      j = int(x['prototype'])
      if only is not None and j not in only:
        continue
      draws_b = any(v['controlled'] == p['co_moved'] for v in x['directions'].values())
      # the pair is unordered: a prototype that draws B must not move A either
      kept, moved = (p['co_moved'], p['controlled']) if draws_b else (p['controlled'], p['co_moved'])
      for direction in diagnosis_lib.DIRECTIONS:
        if (j, direction) in diagnosed or (
            min_b_effect is not None and x['directions'][direction]['effects'][moved]['effect'] < min_b_effect):
          continue
        controlled, held = merged.setdefault((j, direction), (set(), set()))
        controlled.add(heads.index(kept))
        held.add(heads.index(moved))
  return [(j, d, ev[d][j], sorted(c), sorted(h - c)) for (j, d), (c, h) in sorted(merged.items())]


def mitigate_mode(config, workdir: str, mesh=None) -> dict:
  """`--mode=mitigate` (module docstring). Returns the report written to DIR/mitigation/report.json."""
  watch = timing.Stopwatch()
  mcfg = config.mitigation
  if mcfg.use:
    raise ConfigError("config field 'mitigation.use' applies to the later modes (sample, interpret, evaluate); "
                      '--mode=mitigate always starts from the original stage 1')
  out_dir = os.path.join(os.path.abspath(workdir), OUT_DIR)
  before = diagnose(config, workdir, mesh)
  if 'skipped' in before or not before['suspected_correlations']:
    return _nothing_to_mitigate(out_dir, before, watch)
  attributes = training_attributes(config)
  names, values = attributes.names, attributes.values
  model, variables, _ = loading.load_stage1_variables(config, workdir)
  plans = plan_pairs(before, names, held_out_association(config, model, variables, names, values), mcfg)
  for p in plans:
    p['in_data'] = attributes.dependence(*p['attributes'])
  # only what the data tie together is a shortcut to unlearn; the rest is the prototypes' entanglement
  tied = in_data([p['attributes'] for p in plans], attributes, mcfg.data_p_value)
  entangled = [p for p in plans if p['attributes'] not in tied]
  plans = [p for p in plans if p['attributes'] in tied]
  if not plans:
    return _nothing_to_mitigate(out_dir, before, watch, entangled)
  logging.info('mitigate: pairs %s', [(p['controlled'], p['co_moved'], p['prototypes_a'], p['predictors_b'])
                                      for p in plans])
  views, diagnoses, quality, results = {}, {ORIGINAL: before}, {}, {}
  views[ORIGINAL], quality[ORIGINAL] = _original(config, workdir, mesh)
  rare = _rare_measure(config, workdir, plans, attributes)
  original_rare = rare(views[ORIGINAL][1]) if rare is not None else None
  for method in mcfg.methods:
    views[method], diagnoses[method], quality[method], results[method] = _mitigated(
        config, workdir, mesh, method, plans, attributes, before, quality[ORIGINAL], rare, original_rare)
  selected = select(results)
  strongest = max((e for p in plans for e in p['edits']), key=lambda e: e['effect'])
  figure = os.path.join(out_dir, 'edits.png')
  if jax.process_index() == 0:
    edits_figure(config, views, diagnoses, strongest, figure)
  report = {
      'before': dict(summary(before), sample_quality=quality[ORIGINAL],
                     **({'rare_combinations': original_rare} if original_rare else {})),
      'after': dict(results[selected]['after'], sample_quality=quality[selected]),
      'mitigated': True, 'selected_method': selected, 'pairs': plans, 'entangled': entangled, 'methods': results,
      'figure': {'edits.png': f"prototype {strongest['prototype']} {strongest['direction']} (the strongest "
                              'finding) lowered / unchanged / raised on the same images and x_T, per model'},
      'seconds': round(watch.seconds(), 1)}
  logging.info('mitigate: selected %s; %s', selected, {m: r['comparison']['targets'] for m, r in results.items()})
  return _write_report(out_dir, report)
