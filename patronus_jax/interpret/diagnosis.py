"""Shortcut diagnosis: which attributes move when one prototype is raised or lowered.

The paper (Sec. 4.4) plants hair colour <-> smile in CelebA, raises the hair-colour prototype,
regenerates, and sees the smile change: a change in an attribute the prototype does not
depict reveals a correlation the generator learned from its data. Here, for every prototype
j and both directions (s_j set to the low / high end of its observed range), N samples are
regenerated *from the same x_T with every other s_k unchanged* and judged by an attribute
classifier, so each sample gives a paired change of the class probabilities

    delta_i(a, v) = p(a = v | edited image_i) - p(a = v | base image_i).

Per attribute a the effect is the probability mass moved, TV = 1/2 sum_v |mean_i delta_i(a, v)|
(in [0, 1]; for a binary attribute the change of P(yes)), with a percentile-bootstrap CI over
the samples, and the value it moves *towards* (largest mean increase) with its mean change,
normal and bootstrap CIs and a paired z statistic.

An attribute *moves* under an edit when its largest per-value change is significant
(|z| above the two-sided normal quantile at `ci_level`, Bonferroni-corrected over every
(prototype, direction, attribute, value) test by default) and its TV reaches `min_effect`.
The *controlled* attribute of an edit is the moving attribute with the largest TV; another
attribute that moves by at least `relative_threshold` x the controlled TV is *co-moved*: a
suspected learned correlation between the two. Undirected noise (samples whose regeneration
flips to some other class at random) changes individual samples but not the mean, so it does
not reach significance; a shortcut moves the mean one way.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np

from patronus_jax.interpret import stats

DIRECTIONS = ('lower', 'raise')


@dataclasses.dataclass(frozen=True)
class Thresholds:
  ci_level: float = 0.95
  correction: str = 'bonferroni'  # or 'none'
  min_effect: float = 0.1
  relative_threshold: float = 0.25
  num_bootstrap: int = 1000
  seed: int = 0

  @classmethod
  def from_config(cls, interpret, seed: int = 0) -> 'Thresholds':
    return cls(float(interpret.diagnosis_ci_level), interpret.diagnosis_correction,
               float(interpret.diagnosis_min_effect), float(interpret.diagnosis_relative_threshold),
               int(interpret.diagnosis_bootstrap), seed)


def edited_activations(s: np.ndarray, prototypes: Sequence[int], low: np.ndarray, high: np.ndarray) -> np.ndarray:
  """(J, 2, N, P): s with s_j set to low_j ('lower') and to high_j ('raise')."""
  s = np.asarray(s, np.float32)
  out = np.broadcast_to(s, (len(prototypes), 2) + s.shape).copy()
  for a, j in enumerate(prototypes):
    out[a, 0, :, j] = low[j]
    out[a, 1, :, j] = high[j]
  return out


def mass_moved(delta: np.ndarray) -> np.ndarray:
  """TV = 1/2 sum_v |mean_i delta_i(a, v)| of paired probability changes (..., N, V) -> (...)."""
  return 0.5 * np.abs(np.asarray(delta, np.float64).mean(-2)).sum(-1)


def attribute_effects(base: Sequence[np.ndarray], edited: Sequence[np.ndarray],
                      thresholds: Thresholds, num_tests: Optional[int] = None) -> list[dict]:
  """Statistics of the paired probability changes of one edit, per attribute.

  base: per attribute (N, V_a) probabilities of the unedited regenerations; edited: the same
  for the edited ones (same samples, same order). `num_tests` is the family size of the
  Bonferroni correction (1 when None or when the correction is off).
  """
  m = 1 if (num_tests is None or thresholds.correction == 'none') else int(num_tests)
  z_crit = stats.normal_quantile(1.0 - (1.0 - thresholds.ci_level) / m)
  out = []
  for a, (p0, p1) in enumerate(zip(base, edited)):
    delta = np.asarray(p1, np.float64) - np.asarray(p0, np.float64)  # (N, V)
    mean, se, half = stats.normal_ci(delta, thresholds.ci_level)
    boot = stats.bootstrap_ci(delta, thresholds.ci_level, thresholds.num_bootstrap, thresholds.seed + a)
    tv_boot = stats.bootstrap_ci(delta, thresholds.ci_level, thresholds.num_bootstrap, thresholds.seed + a,
                                 statistic=mass_moved)
    top = int(np.argmax(np.abs(mean)))
    z = np.where(se > 0, np.abs(mean) / np.maximum(se, 1e-12), np.where(np.abs(mean) > 0, np.inf, 0.0))
    tv = float(mass_moved(delta))
    sd = delta[:, top].std(ddof=1) if delta.shape[0] > 1 else 0.0
    out.append(dict(
        effect=tv, effect_ci=[float(tv_boot[0]), float(tv_boot[1])],
        towards=int(np.argmax(mean)), away_from=int(np.argmin(mean)),
        top_value=top, top_change=float(mean[top]), top_z=float(z[top]),
        top_ci_normal=[float(mean[top] - half[top]), float(mean[top] + half[top])],
        top_ci_bootstrap=[float(boot[top, 0]), float(boot[top, 1])],
        standardized=float(mean[top] / sd) if sd > 0 else 0.0,
        mean_change=mean.tolist(), ci_normal=np.stack([mean - half, mean + half], -1).tolist(),
        ci_bootstrap=boot.tolist(),
        significant=bool(z[top] >= z_crit), z_critical=float(z_crit),
        flip_rate=float(np.mean(np.argmax(p1, -1) != np.argmax(p0, -1))),
    ))
  return out


def classify_edits(effects: list[dict], names: Sequence[str], thresholds: Thresholds) -> dict:
  """Controlled attribute and co-moved attributes of one edit from its per-attribute effects."""
  moving = [a for a, e in enumerate(effects) if e['significant'] and e['effect'] >= thresholds.min_effect]
  if not moving:
    return {'controlled': None, 'co_moved': []}
  c = max(moving, key=lambda a: effects[a]['effect'])
  floor = thresholds.relative_threshold * effects[c]['effect']
  co = [a for a in moving if a != c and effects[a]['effect'] >= floor]
  co.sort(key=lambda a: -effects[a]['effect'])
  return {'controlled': names[c], 'co_moved': [names[a] for a in co]}


def analyse(base: Sequence[np.ndarray], edited: Sequence[np.ndarray], prototypes: Sequence[int],
            names: Sequence[str], values: Sequence[Sequence[str]], thresholds: Thresholds) -> dict:
  """The diagnosis report from classifier probabilities.

  Args:
    base: per attribute, (N, V_a) probabilities of the unedited regenerations.
    edited: per attribute, (J, 2, N, V_a): prototype prototypes[j], direction ('lower',
      'raise'), sample.
    prototypes: the J prototype indices.
    names, values: attribute names and value names (V_a per attribute).

  Returns a JSON-ready dict: per prototype and direction the effect on every attribute, the
  controlled attribute and co-moved ones; `findings` (one per co-moved attribute of an edit)
  and `suspected_correlations` (unordered attribute pairs with the edits that show them).
  """
  num_tests = len(prototypes) * len(DIRECTIONS) * sum(len(v) for v in values)
  per_prototype, findings = [], []
  for a_j, j in enumerate(prototypes):
    entry, found = prototype_edits(base, [e[a_j] for e in edited], int(j), names, values, thresholds, num_tests)
    per_prototype.append(entry)
    findings += found
  suspected = suspected_correlations(findings)
  return dict(
      prototypes=per_prototype, findings=findings, suspected_correlations=suspected,
      suspected_pairs=[p['attributes'] for p in suspected],
      num_tests=num_tests, num_samples=int(np.asarray(base[0]).shape[0]),
      thresholds=dataclasses.asdict(thresholds),
      z_critical=stats.normal_quantile(1.0 - (1.0 - thresholds.ci_level) /
                                       (num_tests if thresholds.correction == 'bonferroni' else 1)),
      bystander_effect=bystander_effect(per_prototype))


def prototype_edits(base: Sequence[np.ndarray], edited: Sequence[np.ndarray], j: int, names: Sequence[str],
                    values: Sequence[Sequence[str]], thresholds: Thresholds, num_tests: int) -> tuple[dict, list]:
  """(report entry, findings) of prototype j lowered and raised. edited: per attribute (2, N, V_a)."""
  entry = {'prototype': j, 'directions': {}}
  findings = []
  best = (None, 0.0)  # the attribute j controls most strongly over both directions
  for d, direction in enumerate(DIRECTIONS):
    effects = attribute_effects(base, [e[d] for e in edited], thresholds, num_tests)
    verdict = classify_edits(effects, names, thresholds)
    by_name = {}
    for a, eff in enumerate(effects):
      by_name[names[a]] = dict(eff, attribute=names[a], towards=values[a][eff['towards']],
                               away_from=values[a][eff['away_from']], top_value=values[a][eff['top_value']],
                               values=list(values[a]))
    entry['directions'][direction] = {**verdict, 'effects': by_name}
    if verdict['controlled'] is not None:
      c = by_name[verdict['controlled']]
      if c['effect'] > best[1]:
        best = (verdict['controlled'], c['effect'])
      findings += [_finding(j, direction, c, by_name[other]) for other in verdict['co_moved']]
  entry['controls'] = best[0]
  entry['controls_effect'] = best[1]
  return entry, findings


def _finding(j: int, direction: str, c: dict, o: dict) -> dict:
  """Attribute o co-moved with the controlled attribute c under one edit of prototype j."""
  return dict(
      prototype=j, direction=direction,
      controlled=c['attribute'], controlled_effect=c['effect'],
      controlled_effect_ci=c['effect_ci'], controlled_towards=c['towards'],
      co_moved=o['attribute'], effect=o['effect'], effect_ci=o['effect_ci'], towards=o['towards'],
      away_from=o['away_from'], top_change=o['top_change'], top_ci_bootstrap=o['top_ci_bootstrap'],
      top_ci_normal=o['top_ci_normal'], z=o['top_z'], relative_effect=o['effect'] / max(c['effect'], 1e-12))


def suspected_correlations(findings: list[dict]) -> list[dict]:
  """Findings grouped by unordered attribute pair, the pairs shown by most edits first."""
  pairs: dict = {}
  for f in findings:
    key = tuple(sorted((f['controlled'], f['co_moved'])))
    p = pairs.setdefault(key, {'attributes': list(key), 'edits': [], 'max_effect': 0.0, 'prototypes': set()})
    p['edits'].append({k: f[k] for k in ('prototype', 'direction', 'controlled', 'controlled_towards',
                                         'co_moved', 'towards', 'effect', 'effect_ci', 'relative_effect')})
    p['max_effect'] = max(p['max_effect'], f['effect'])
    p['prototypes'].add(f['prototype'])
  suspected = sorted(pairs.values(), key=lambda p: (-len(p['edits']), -p['max_effect']))
  for p in suspected:
    p['prototypes'] = sorted(p['prototypes'])
    p['num_edits'] = len(p['edits'])
  return suspected


def bystander_effect(per_prototype: list[dict]) -> dict:
  """What an attribute that is *not* controlled typically moves: the noise floor of the run."""
  bystanders = [e['effect'] for entry in per_prototype for dd in entry['directions'].values()
                for name, e in dd['effects'].items() if name != dd['controlled']]
  return {'median': float(np.median(bystanders)) if bystanders else 0.0,
          'q90': float(np.quantile(bystanders, 0.9)) if bystanders else 0.0,
          'max': float(np.max(bystanders)) if bystanders else 0.0}


def run(regenerate_and_classify: Callable, s: np.ndarray, x_T: np.ndarray, prototypes: Sequence[int],
        low: np.ndarray, high: np.ndarray, names: Sequence[str], values: Sequence[Sequence[str]],
        thresholds: Thresholds, num_examples: int = 0) -> tuple[dict, dict]:
  """Regenerates base and edited rows in one batched pass, then `analyse`s them.

  regenerate_and_classify(s_rows, x_T_rows) -> (tuple of per-attribute (n, V_a) probabilities,
  images (n, ...) or None). Returns (report, examples) where examples holds the images of the
  first `num_examples` samples: 'base' (E, ...) and 'edited' (J, 2, E, ...), and their
  classifier probabilities 'base_probs' (per attribute (E, V_a)) and 'edited_probs'
  (per attribute (J, 2, E, V_a)).
  """
  s = np.asarray(s, np.float32)
  n, p = s.shape
  edits = edited_activations(s, prototypes, low, high)  # (J, 2, N, P)
  rows_s = np.concatenate([s, edits.reshape(-1, p)])
  reps = 1 + 2 * len(prototypes)
  rows_x = np.concatenate([x_T] * reps)
  logging.info('diagnosis: %d prototypes x 2 directions x %d samples (+%d base) regenerations',
               len(prototypes), n, n)
  probs, images = regenerate_and_classify(rows_s, rows_x)
  probs = [np.asarray(q) for q in probs]
  base = [q[:n] for q in probs]
  edited = [q[n:].reshape((len(prototypes), 2, n) + q.shape[1:]) for q in probs]
  report = analyse(base, edited, prototypes, names, values, thresholds)
  examples = {}
  if num_examples and images is not None:
    images = np.asarray(images)
    e = min(num_examples, n)
    examples = {'base': images[:e],
                'edited': images[n:].reshape((len(prototypes), 2, n) + images.shape[1:])[:, :, :e],
                'base_probs': [q[:e] for q in base], 'edited_probs': [q[:, :, :e] for q in edited]}
  return report, examples
