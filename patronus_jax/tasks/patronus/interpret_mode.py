"""`--mode=interpret`: figures and report.json from any trained workdir.

  DIR/interpret/report.json         every number behind the figures (see README: interpret)
  DIR/interpret/<part>.json         the same per part (visualize, semantics, emergence, diagnosis)
  DIR/interpret/*.png               the figures (listed with a description in report.json)
  DIR/status/interpret.json         which parts are done for which checkpoint + config

A part whose checkpoint steps, interpret config, data config and classifier settings are the
ones of its recorded run is skipped (its JSON is reused); anything else is recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import data as data_lib
from patronus_jax.core import files
from patronus_jax.core import timing
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.evaluate.workdir_classifier import classifier_for_workdir, trained_for
from patronus_jax.interpret import config as icfg
from patronus_jax.interpret import core
from patronus_jax.interpret import diagnosis as diagnosis_lib
from patronus_jax.interpret import emergence as emergence_lib
from patronus_jax.interpret import figures
from patronus_jax.interpret import semantics as semantics_lib
from patronus_jax.interpret import stats
from patronus_jax.interpret import visualize as visualize_lib
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import sample as sample_lib

ROWS_PER_PAGE = 16


class _Context:
  """What every part shares: model, engine, held-out data, observed ranges, inversions."""

  def __init__(self, config, workdir: str, mesh):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    ic = self.ic = config.interpret
    self.out_dir = os.path.join(workdir, 'interpret')
    self.model, self.variables, self.stage1_step = loading.load_stage1_variables(config, workdir)
    self.num_prototypes = config.model.num_prototypes
    self.info = data_lib.get_info(config.data)
    self.names = tuple(self.info.attribute_names)
    self.values = tuple(tuple(v) for v in self.info.attribute_values)
    icfg.check_against_model(ic, self.num_prototypes, self.names if self.names else None)
    if ic.diagnosis_attributes and not self.names:
      icfg.check_against_model(ic, self.num_prototypes, ())
    self.latent = None
    try:
      self.latent = loading.load_latent(config, workdir)
    except FileNotFoundError:
      logging.info('interpret: no latent checkpoint in %s (emergence uses s of held-out images)', workdir)
    self.latent_step = self.latent[3] if self.latent is not None else None
    self.split = ic.eval_split or config.data.eval_split
    self.spec = core.deterministic_spec(config.diffusion, ic.sample_steps, ic.sampler)
    self.engine = core.Engine(self.model, self.variables, self.spec, ic.batch_size, mesh=mesh)
    self.rf = proto_lib.receptive_field(config.data.image_size, config.model.encoder_kernels,
                                        config.model.encoder_strides, config.model.encoder_paddings)
    self.rng = np.random.default_rng([config.seed, 7919])
    self._classifier = None
    self._inversions: dict[int, np.ndarray] = {}

  # ------------------------------------------------------------------ data and statistics

  def load_held_out(self) -> None:
    ic = self.ic
    need = max(ic.num_eval_images, ic.num_visualize_images, ic.num_semantic_images,
               2 * ic.num_interpolation_pairs, ic.num_diagnosis_samples, ic.num_emergence_samples)
    watch = timing.Stopwatch()
    arrays = data_lib.load_arrays(self.config.data, self.split, max_examples=need)
    self.images = np.asarray(arrays['image'], np.float32)
    self.attributes = np.asarray(arrays.get('attributes', np.zeros((len(self.images), 0))), np.int64)
    if len(self.images) < 2:
      raise data_lib.DataError(f'interpret needs held-out images; split {self.split!r} of '
                                     f'{self.config.data.name} has {len(self.images)}')
    self.s = self.engine.encode(self.images)['s']
    n_eval = min(ic.num_eval_images, len(self.images))
    self.range = stats.observed_range(self.s[:n_eval], ic.low_quantile, ic.high_quantile)
    self.association = None
    if self.names and self.attributes.shape[1] == len(self.names):
      self.association = stats.association_matrix(self.s[:n_eval], self.attributes[:n_eval],
                                                  [len(v) for v in self.values])
    logging.info('interpret: %d held-out images of %s/%s encoded in %.1fs', len(self.images),
                 self.config.data.name, self.split, watch.seconds())

  def start_part(self, part: str) -> None:
    """Each part draws its images from its own stream: the same whichever parts run with it."""
    self.rng = np.random.default_rng([self.config.seed, 7919, icfg.PARTS.index(part)])

  def pick(self, k: int) -> np.ndarray:
    """k distinct random held-out indices (with replacement only if there are fewer)."""
    n = len(self.images)
    return self.rng.choice(n, size=k, replace=k > n)

  def inversions(self, idx: np.ndarray) -> np.ndarray:
    """Inversions of held-out images (cached within the run)."""
    missing = sorted({int(i) for i in idx} - set(self._inversions))
    if missing:
      m = np.asarray(missing)
      x_T = self.engine.invert(self.s[m], self.images[m], what='inverting held-out images')
      self._inversions.update({i: x for i, x in zip(missing, x_T)})
    return np.stack([self._inversions[int(i)] for i in idx])

  def classifier(self):
    """(classifier, metrics) of the workdir, or (None, reason) when the data has no labels."""
    if self._classifier is None:
      if not self.names:
        self._classifier = (None, {'skipped': f'dataset {self.config.data.name} has no attribute labels'})
      else:
        clf, metrics = classifier_for_workdir(self.config, self.workdir)
        self._classifier = (clf, {k: metrics[k] for k in ('accuracy', 'mean_accuracy', 'chance_accuracy',
                                                          'num_train', 'num_holdout', 'path', 'training',
                                                          'rare_combinations') if k in metrics})
        self.engine.classifier = clf
        self.engine.__post_init__()
    return self._classifier

  def prototype_labels(self) -> list[str]:
    """'colour .83': the attribute each prototype is most associated with (eta^2), if any."""
    if self.association is None:
      return [''] * self.num_prototypes
    out = []
    for j in range(self.num_prototypes):
      a = int(np.argmax(self.association[:, j]))
      eta = self.association[a, j]
      out.append(f'({self.names[a]} {eta:.2f})' if eta >= self.ic.association_threshold else '')
    return out

  def save(self, name: str, fig, figures: dict, description: str) -> None:
    files.save_figure(os.path.join(self.out_dir, name), fig)
    figures[name] = description


def _pages(items, size=ROWS_PER_PAGE):
  return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def _paged_name(stem: str, page: list, many: bool) -> str:
  return f'{stem}.png' if not many else f'{stem}_p{page[0]:03d}-{page[-1]:03d}.png'


# ---------------------------------------------------------------------- the parts

def part_visualize(ctx: _Context) -> dict:
  ic = ctx.ic
  protos = list(ic.visualize_prototypes) or list(range(ctx.num_prototypes))
  targets = visualize_lib.plausible_maximum(ctx.s[:ic.num_eval_images], ic.visualize_scope, ic.visualize_quantile)
  idx = ctx.pick(ic.num_visualize_images)
  res = visualize_lib.run(ctx.engine, ctx.images[idx], ctx.s[idx], protos, targets, ctx.rf, ctx.inversions(idx))
  figs: dict = {}
  labels = ctx.prototype_labels()
  pages = _pages(list(range(len(protos))))
  for page in pages:
    js = [protos[a] for a in page]
    best = [int(res['best'][a]) for a in page]
    name = _paged_name('prototypes', js, len(pages) > 1)
    fig = figures.prototype_overview(
        js, [ctx.images[idx[b]] for b in best], [res['edited'][a, b] for a, b in zip(page, best)],
        [res['boxes'][a, b] for a, b in zip(page, best)],
        [visualize_lib.crop(res['edited'][a, b], res['boxes'][a, b]) for a, b in zip(page, best)],
        [float(ctx.s[idx[b], j]) for b, j in zip(best, js)], [float(res['s_edited'][a, b]) for a, b in zip(page, best)],
        f'Prototype visualisation: s_j raised to {ic.visualize_scope} plausible max (q={ic.visualize_quantile}); '
        f'best of {len(idx)} inverted held-out images; red box = receptive field of the argmin patch')
    ctx.save(name, fig, figs, 'per prototype j (column): original x0, x0 regenerated from its inverted '
             'x_T with s_j raised to the plausible maximum and the box of the most activated patch, the patch')
  c = min(ic.num_consistency_images, len(idx))
  for a, j in enumerate(protos):
    name = f'consistency/prototype_{j:03d}.png'
    fig = figures.consistency(
        j, ctx.images[idx[:c]], res['edited'][a, :c], res['boxes'][a, :c], ctx.s[idx[:c], j], res['s_edited'][a, :c],
        f'Prototype {j} {labels[j]}: consistency over {c} held-out images (top: x0; bottom: s_{j} raised '
        f'to {targets[j]:.2f}, box = most activated patch)')
    ctx.save(name, fig, figs, f'prototype {j} raised in {c} random held-out images, with the box of its patch')
  gains = [r['mean_gain'] for r in res['report']]
  return {'prototypes': res['report'], 'targets': targets.tolist(), 'images': idx.tolist(),
          'receptive_field': ctx.rf._asdict(), 'mean_gain': float(np.mean(gains)),
          'fraction_prototypes_raised': float(np.mean(np.asarray(gains) > 0)), 'figures': figs}


def part_semantics(ctx: _Context) -> dict:
  ic = ctx.ic
  figs: dict = {}
  idx = ctx.pick(ic.num_semantic_images)
  x_T = ctx.inversions(idx)
  images, s = ctx.images[idx], ctx.s[idx]
  rec = semantics_lib.reconstruction(ctx.engine, images, s, x_T, ic.num_variations, ctx.config.seed + 11)
  table = [[images[r], rec['recon'][r]] + list(rec['variations'][r]) for r in range(len(idx))]
  cols = ['original x0', 'inverted x_T'] + [f'new x_T #{v + 1}' for v in range(ic.num_variations)]
  ctx.save('reconstruction.png', figures.image_table(
      table, [f'image {i}' for i in idx], cols,
      f"Reconstruction (s of x0, inverted x_T; MSE {rec['report']['inversion_mse']:.4f}) and variation "
      f"(same s, new x_T; s correlation {rec['report']['s_correlation_variations']:.2f})"), figs,
      'rows: held-out images; columns: the original, its regeneration from its own s and inverted x_T, '
      'then regenerations from the same s and new noise x_T (variation)')

  protos = list(ic.manipulate_prototypes) or list(range(ctx.num_prototypes))
  ext = _extrapolation(ctx, idx, s, x_T, protos, figs)
  man = _manipulation(ctx, idx, s, x_T, protos, rec['recon'], figs)
  itp, pairs = _interpolation(ctx, figs)
  return {'images': idx.tolist(), 'reconstruction': rec['report'], 'extrapolation': ext['report'],
          'manipulation': man['report'], 'interpolation': dict(itp['report'], pairs=pairs.tolist()),
          'mean_extrapolation_spearman': float(np.mean([r['spearman'] for r in ext['report']])),
          'figures': figs}


def _extrapolation(ctx: _Context, idx: np.ndarray, s: np.ndarray, x_T: np.ndarray, protos: list[int],
                   figs: dict) -> dict:
  """s_j of the first image set along and beyond its observed range; figures of it."""
  ic = ctx.ic
  labels = ctx.prototype_labels()
  ext = semantics_lib.extrapolation(ctx.engine, s[0], x_T[0], protos, ctx.range['low'], ctx.range['spread'],
                                    ic.extrapolation_alphas)
  alphas = list(ic.extrapolation_alphas)
  col = [f'α={a:g}' + (' (beyond)' if a < 0 or a > 1 else '') for a in alphas]
  pages = _pages(list(range(len(protos))))
  for page in pages:
    name = _paged_name('extrapolation', [protos[a] for a in page], len(pages) > 1)
    ctx.save(name, figures.image_table(
        [list(ext['images'][a]) for a in page], [f'p{protos[a]} {labels[protos[a]]}' for a in page], col,
        f'Extrapolation of image {idx[0]}: s_j = q{ic.low_quantile:g} + '
        f'α·(q{ic.high_quantile:g} − q{ic.low_quantile:g}) of held-out s_j; '
        'α outside [0, 1] goes beyond observed values (cell: re-encoded s_j)',
        cell_titles=[[f"s={v:.2f}" for v in ext['report'][a]['re_encoded']] for a in page]), figs,
        'rows: prototypes; columns: s_j set along and beyond its observed held-out range (α), same x_T; '
        'cell titles: s_j of the regenerated image')
  return ext


def _manipulation(ctx: _Context, idx: np.ndarray, s: np.ndarray, x_T: np.ndarray, protos: list[int],
                  recon: np.ndarray, figs: dict) -> dict:
  """s_j of (up to) two images changed by amounts of its observed spread; figures of it."""
  ic = ctx.ic
  labels = ctx.prototype_labels()
  pages = _pages(list(range(len(protos))))
  shown = min(2, len(idx))
  man = semantics_lib.manipulation(ctx.engine, s[:shown], x_T[:shown], protos, ctx.range['spread'],
                                   ic.manipulate_amounts)
  amounts = list(ic.manipulate_amounts)
  for page in pages:
    table, titles = [], []
    for a in page:
      row, trow = [], []
      for r in range(shown):
        row.append(recon[r])
        trow.append(f'img {idx[r]}: s={s[r, protos[a]]:.2f}')
        for b in range(len(amounts)):
          row.append(man['images'][a, b, r])
          trow.append(f'{amounts[b]:+g}: s={man["report"][a]["mean_re_encoded"][b]:.2f}' if shown == 1
                      else f'{amounts[b]:+g}')
      table.append(row)
      titles.append(trow)
    cols = (['reconstruction'] + [f'Δ={x:+g}·spread' for x in amounts]) * shown
    name = _paged_name('manipulation', [protos[a] for a in page], len(pages) > 1)
    ctx.save(name, figures.image_table(
        table, [f'p{protos[a]} {labels[protos[a]]}' for a in page], cols,
        f'Manipulation: s_j += amount × observed spread, same x_T ({shown} images side by side)',
        cell_titles=titles), figs,
        'rows: prototypes; columns per image: its reconstruction, then s_j changed by each amount '
        '(units of the observed spread), same inverted x_T')
  return man


def _interpolation(ctx: _Context, figs: dict) -> tuple[dict, np.ndarray]:
  """(interpolations between pairs of random inverted images, the pairs); the figure of them."""
  ic = ctx.ic
  pairs = ctx.pick(2 * ic.num_interpolation_pairs).reshape(-1, 2)
  x_pairs = ctx.inversions(pairs.ravel()).reshape((-1, 2) + ctx.images.shape[1:])
  itp = semantics_lib.interpolation(ctx.engine, ctx.s[pairs[:, 0]], ctx.s[pairs[:, 1]], x_pairs[:, 0],
                                    x_pairs[:, 1], ic.interpolation_steps)
  table = [[ctx.images[a]] + list(itp['images'][r]) + [ctx.images[b]] for r, (a, b) in enumerate(pairs)]
  w = itp['report']['weights']
  ctx.save('interpolation.png', figures.image_table(
      table, [f'{a} → {b}' for a, b in pairs], ['x0 A'] + [f'w={x:.2f}' for x in w] + ['x0 B'],
      f"Interpolation: s linear, x_T spherical between two inverted images "
      f"(s correlation {itp['report']['s_correlation']:.2f})"), figs,
      'rows: pairs of held-out images; columns: image A, regenerations with s = (1−w) s_A + w s_B and '
      'x_T = slerp(x_T,A, x_T,B, w), image B')
  return itp, pairs


def part_emergence(ctx: _Context) -> dict:
  ic, config = ctx.ic, ctx.config
  n = ic.num_emergence_samples
  clf, clf_metrics = ctx.classifier()
  source = ic.emergence_source
  if source == 'auto':
    source = 'latent' if ctx.latent is not None else 'data'
  if source == 'latent':
    if ctx.latent is None:
      raise FileNotFoundError(f"interpret.emergence_source='latent' but {ctx.workdir} has no latent "
                              'checkpoint: run --mode=train_latent first')
    lmodel, lvars, lstats, _ = ctx.latent
    s = np.asarray(sample_lib.sample_activations(
        lmodel, lvars, {k: jnp.asarray(v) for k, v in lstats.items()}, jax.random.PRNGKey(config.seed + 31), n,
        sample_lib.SamplerSpec.latent(config.latent)))
  else:
    s = ctx.s[ctx.pick(n)]
  x_T = np.random.default_rng(config.seed + 37).standard_normal((n,) + ctx.images.shape[1:]).astype(np.float32)
  k = ic.emergence_steps if ic.emergence_steps > 0 else ic.sample_steps
  out = ctx.engine.trajectory(s, x_T, num_steps=k, what='tracing x0_hat along sampling trajectories')
  timesteps = dataclasses.replace(ctx.spec, num_steps=k).timesteps_used()
  report = emergence_lib.analyse(
      out['s_traj'], ctx.range['spread'], ic.emergence_tolerance, timesteps,
      probs_traj=out.get('probs_traj'), names=ctx.names if clf is not None else (),
      values=ctx.values, association=ctx.association, association_threshold=ic.association_threshold,
      seed=config.seed, kappa_threshold=0.8)
  report['source'] = source
  figs: dict = {}
  labels = ctx.prototype_labels()
  ctx.save('emergence_prototypes.png', figures.emergence_curves(
      report, labels, f'Emergence of each prototype in x̂0 along {n} {source}-conditioned {ic.sampler} trajectories '
      f'({k} steps); band: ±1 std; green: tolerance ±{ic.emergence_tolerance:g}; dashed: median emergence'), figs,
      'per prototype: s_j of the predicted x̂0 minus its final value, in units of the observed spread, '
      'along the sampling trajectory (mean ± std), with the tolerance band and the median emergence step')
  steps = stats.emergence_steps(out['s_traj'], ic.emergence_tolerance * ctx.range['spread'])
  ctx.save('emergence_steps.png', figures.emergence_steps_plot(
      report, labels, f'Emergence step of each prototype over {n} trajectories (earliest first)', steps), figs,
      'box plot per prototype of its emergence step (fraction of the trajectory), sorted earliest first')
  if 'attributes' in report:
    ctx.save('emergence_attributes.png', figures.emergence_attributes(
        report, f'When each attribute settles in x̂0 (attribute classifier, {n} trajectories): '
        + ' < '.join(report['attribute_ranking'])), figs,
        "left: per attribute and step, Cohen's kappa between the class the attribute classifier gives x̂0 "
        'and the class of the final image (chance-corrected agreement); right: settling = 1 − kappa integrated '
        'over diffusion time (the fraction of the trajectory before the attribute is fixed) with 95% bootstrap CIs, '
        'earliest first')
  shown = min(4, n)
  ctx.save('emergence_snapshots.png', figures.emergence_snapshots(
      out['x0_traj'][:shown], report['timesteps'], 'Predicted x̂0 along sampling trajectories'), figs,
      'rows: trajectories; columns: the predicted clean image x̂0 at evenly spaced sampler steps')
  report['classifier'] = clf_metrics
  report['figures'] = figs
  return report


def part_diagnosis(ctx: _Context) -> dict:
  ic, config = ctx.ic, ctx.config
  clf, clf_metrics = ctx.classifier()
  if clf is None:
    logging.warning('interpret: shortcut diagnosis skipped: %s', clf_metrics.get('skipped'))
    return {'skipped': clf_metrics.get('skipped'), 'figures': {}}
  names = list(ic.diagnosis_attributes) or list(ctx.names)
  heads = [ctx.names.index(nm) for nm in names]
  values = [ctx.values[h] for h in heads]
  protos = list(ic.diagnosis_prototypes) or list(range(ctx.num_prototypes))
  idx = ctx.pick(ic.num_diagnosis_samples)
  if ic.diagnosis_noise == 'inverted':
    x_T = ctx.inversions(idx)
  else:
    x_T = np.random.default_rng(config.seed + 41).standard_normal((len(idx),) + ctx.images.shape[1:]).astype(np.float32)

  def regenerate_and_classify(rows_s, rows_x):
    out = ctx.engine.generate(rows_s, rows_x, what='diagnosis regenerations', classify=True, uint8=True)
    return tuple(out['probs'][h] for h in heads), out['images']

  thresholds = diagnosis_lib.Thresholds.from_config(ic, seed=config.seed)
  report, examples = diagnosis_lib.run(regenerate_and_classify, ctx.s[idx], x_T, protos, ctx.range['low'],
                                       ctx.range['high'], names, values, thresholds, num_examples=3)
  report['classifier'] = clf_metrics
  report['images'] = idx.tolist()
  report['edit_values'] = {'lower': ctx.range['low'].tolist(), 'raise': ctx.range['high'].tolist()}
  figs: dict = {}
  pairs = ', '.join(' ↔ '.join(p) for p in report['suspected_pairs']) or 'none'
  ctx.save('diagnosis_effects.png', figures.diagnosis_matrix(
      report, names, f'Shortcut diagnosis: attribute change when s_j is lowered (↓) / raised (↑), '
      f'{len(idx)} paired samples\nC = controlled attribute, ! = co-moved (suspected correlation): {pairs}'), figs,
      'heat map: rows = prototype and direction, columns = attributes, colour = probability mass the edit '
      'moves (mean over paired samples); C marks the controlled attribute, ! a co-moved one')
  ctx.save('diagnosis_findings.png', figures.diagnosis_findings(
      report, f'Suspected learned correlations (co-moved attributes): {pairs}'), figs,
      'each finding: effect of the edit on the attribute it controls (grey) and on the co-moved attribute '
      '(red), with bootstrap CIs')
  if examples:
    _diagnosis_examples(ctx, report, examples, protos, names, values, figs)
  report['figures'] = figs
  return report


def _diagnosis_examples(ctx: _Context, report: dict, examples: dict, protos: list[int], names: list[str],
                        values: list, figs: dict) -> None:
  """The figure of example images with s_j lowered / unchanged / raised, for the most telling prototypes."""
  ranked = sorted(range(len(protos)), key=lambda a: (-int(any(f['prototype'] == protos[a]
                                                                for f in report['findings'])),
                                                     -report['prototypes'][a]['controls_effect']))[:6]
  e = examples['base'].shape[0]

  def label(a, probs, i, d=None):
    entry = report['prototypes'][a]
    direction = entry['directions']['raise' if d is None else ('lower', 'raise')[d]]
    shown = [n for n in [entry['controls']] + direction['co_moved'] if n][:2] or names[:1]
    out = []
    for n in shown:
      k = names.index(n)
      p = probs[k] if d is None else probs[k][a, d]
      out.append(values[k][int(np.argmax(p[i]))])
    return ' '.join(out)

  table, titles = [], []
  for a in ranked:
    row, trow = [], []
    for i in range(e):
      for d, img in ((0, examples['edited'][a, 0, i]), (None, examples['base'][i]), (1, examples['edited'][a, 1, i])):
        row.append(img.astype(np.float32) / 127.5 - 1.0)
        trow.append(label(a, examples['base_probs'] if d is None else examples['edited_probs'], i, d))
    table.append(row)
    titles.append(trow)
  ctx.save('diagnosis_examples.png', figures.image_table(
      table, [f"p{protos[a]}: {report['prototypes'][a]['controls'] or '—'}" for a in ranked],
      [f'sample {i} {t}' for i in range(e) for t in ('↓', 'base', '↑')],
      'Diagnosis examples: s_j lowered / unchanged / raised from the same x_T '
      '(cell: classifier prediction of the controlled and co-moved attributes)', cell_titles=titles), figs,
      'rows: the prototypes with findings (then the strongest ones); columns: per sample the image with '
      's_j lowered, unedited, raised (same x_T); cell titles: the classifier\'s prediction of the attributes '
      'the prototype controls and co-moves')


PART_FUNCTIONS = {'visualize': part_visualize, 'semantics': part_semantics, 'emergence': part_emergence,
                  'diagnosis': part_diagnosis}


# ---------------------------------------------------------------------- the mode

# Bumped whenever what a part computes or writes changes, so that older results are redone.
# emergence 4: its trajectories run without diffusion.sketch_consistency (the U-Net's own denoising)
RESULTS_VERSION = {'visualize': 1, 'semantics': 1, 'emergence': 4, 'diagnosis': 1}
# The config.interpret fields each part's results depend on (besides COMMON_FIELDS).
COMMON_FIELDS = ('sampler', 'sample_steps', 'eval_split', 'num_eval_images', 'low_quantile', 'high_quantile',
                 'association_threshold')
PART_FIELDS = {
    'visualize': ('visualize_prototypes', 'visualize_scope', 'visualize_quantile', 'num_visualize_images',
                  'num_consistency_images'),
    'semantics': ('num_semantic_images', 'num_variations', 'manipulate_prototypes', 'extrapolation_alphas',
                  'manipulate_amounts', 'num_interpolation_pairs', 'interpolation_steps'),
    'emergence': ('num_emergence_samples', 'emergence_steps', 'emergence_source', 'emergence_tolerance'),
    'diagnosis': ('diagnosis_attributes', 'diagnosis_prototypes', 'num_diagnosis_samples', 'diagnosis_noise',
                  'diagnosis_ci_level', 'diagnosis_correction', 'diagnosis_bootstrap', 'diagnosis_min_effect',
                  'diagnosis_relative_threshold'),
}


def _key(ctx: _Context, part: str) -> dict:
  """What a part's results were computed from: checkpoints, data, sampling and its settings."""
  cfg = ctx.config
  ic = workdir_lib.config_to_dict(cfg.interpret)
  key = {'version': RESULTS_VERSION[part], 'stage1_step': ctx.stage1_step, 'seed': cfg.seed,
         'data': workdir_lib.config_to_dict(cfg.data), 'diffusion': workdir_lib.config_to_dict(cfg.diffusion),
         'interpret': {f: ic[f] for f in COMMON_FIELDS + PART_FIELDS[part]}}
  if part in ('emergence', 'diagnosis'):
    key['classifier'] = trained_for(cfg)
  if part == 'emergence':
    key['latent'] = [ctx.latent_step, cfg.latent.eta, cfg.latent.sample_steps, cfg.latent.sampler,
                     cfg.latent.spacing]
  return json.loads(json.dumps(key, default=str))


def _summary(parts: dict[str, Any]) -> dict:
  out: dict = {}
  if 'visualize' in parts and 'mean_gain' in parts['visualize']:
    out['visualize_mean_gain'] = parts['visualize']['mean_gain']
    out['visualize_fraction_prototypes_raised'] = parts['visualize']['fraction_prototypes_raised']
  if 'semantics' in parts and 'reconstruction' in parts['semantics']:
    out['inversion_mse'] = parts['semantics']['reconstruction']['inversion_mse']
    out['mean_extrapolation_spearman'] = parts['semantics']['mean_extrapolation_spearman']
  if 'emergence' in parts:
    e = parts['emergence']
    out['prototype_emergence_order'] = e.get('prototype_order')
    if 'attribute_ranking' in e:
      out['attribute_emergence_ranking'] = e['attribute_ranking']
      out['attribute_settling'] = {k: [v.get('settling')] + v.get('settling_ci', [])
                                   for k, v in e['attributes'].items()}
    if 'association_ranking' in e:
      out['association_emergence_ranking'] = e['association_ranking']
  if 'diagnosis' in parts and 'suspected_pairs' in parts['diagnosis']:
    d = parts['diagnosis']
    out['suspected_pairs'] = d['suspected_pairs']
    out['controlled_attribute_of_prototype'] = {str(p['prototype']): p['controls'] for p in d['prototypes']}
    out['classifier_accuracy'] = d.get('classifier', {}).get('accuracy')
  return out


def _valid_part(ctx: _Context, part: str):
  """The stored result of `part` if it was computed for this checkpoint and config, else None."""
  path = os.path.join(ctx.out_dir, f'{part}.json')
  if not workdir_lib.is_done(ctx.workdir, 'interpret', _key(ctx, part), [path], part=part):
    return None
  result = files.read_json(path)
  if not all(os.path.exists(os.path.join(ctx.out_dir, f)) for f in result.get('figures', {})):
    return None
  return result


def _run_part(ctx: _Context, part: str) -> dict:
  """Computes one part, writes its JSON and records it done (with its seconds and model calls)."""
  watch = timing.Stopwatch()
  ctx.start_part(part)
  calls_before = sum(ctx.engine.calls.values())
  result = PART_FUNCTIONS[part](ctx)
  result['seconds'] = round(watch.seconds(), 2)
  result['model_calls'] = int(sum(ctx.engine.calls.values()) - calls_before)
  if jax.process_index() == 0:
    files.write_json(os.path.join(ctx.out_dir, f'{part}.json'), result)
    workdir_lib.record_done(ctx.workdir, 'interpret', _key(ctx, part), part=part, seconds=result['seconds'])
  return result


def interpret_mode(config, workdir: str, mesh=None) -> dict:
  """Runs the configured parts, skipping those already done for this checkpoint and config.

  report.json gathers every part that is up to date for this checkpoint and config, also
  those computed by earlier runs with other `interpret.parts`.
  """
  watch = timing.Stopwatch()
  ctx = _Context(config, workdir, mesh)
  parts_json = {p: r for p in icfg.PARTS if (r := _valid_part(ctx, p)) is not None}
  todo = list(config.interpret.parts)
  skipped = [p for p in todo if p in parts_json]
  if skipped:
    logging.info('interpret: %s already done for stage-1 step %d and this config; skipping',
                 ', '.join(skipped), ctx.stage1_step)
  remaining = [p for p in todo if p not in parts_json]
  if remaining:
    ctx.load_held_out()
  for i, p in enumerate(remaining):
    logging.info('interpret: part %d/%d: %s', i + 1, len(remaining), p)
    result = parts_json[p] = _run_part(ctx, p)
    logging.info('interpret: %s done in %.1fs (%d model calls, %d figures)', p, result['seconds'],
                 result['model_calls'], len(result.get('figures', {})))
  present = [p for p in icfg.PARTS if p in parts_json]
  figures = {name: desc for p in present for name, desc in parts_json[p].get('figures', {}).items()}
  report = {
      'workdir': workdir, 'config_name': config.name, 'stage1_step': ctx.stage1_step,
      'latent_step': ctx.latent_step, 'sampler': config.interpret.sampler,
      'sample_steps': config.interpret.sample_steps,
      'attributes': dict(zip(ctx.names, ctx.values)),
      'summary': _summary(parts_json), 'seconds_this_run': round(watch.seconds(), 2),
      'part_seconds': {p: parts_json[p].get('seconds') for p in present},
      'part_model_calls': {p: parts_json[p].get('model_calls') for p in present},
      'figures': figures, **{p: parts_json[p] for p in present},
  }
  stats_path = os.path.join(ctx.out_dir, 'statistics.json')
  if remaining:
    statistics = {'observed_range': {k: v.tolist() for k, v in ctx.range.items()},
                  'quantiles': [config.interpret.low_quantile, config.interpret.high_quantile]}
    if ctx.association is not None:
      statistics['association'] = {'attributes': list(ctx.names), 'eta2': ctx.association.tolist()}
    if jax.process_index() == 0:
      files.write_json(stats_path, statistics)
    report.update(statistics)
  elif os.path.exists(stats_path):
    report.update(files.read_json(stats_path))
  if jax.process_index() == 0:
    files.write_json(os.path.join(ctx.out_dir, 'report.json'), report)
  logging.info('interpret: report %s (%d figures) in %.1fs; summary %s', os.path.join(ctx.out_dir, 'report.json'),
               len(figures), watch.seconds(), json.dumps(report['summary'], default=str)[:2000])
  return report
