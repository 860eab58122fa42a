"""Bias injection: tie attribute A to attribute B by selecting examples.

The paper plants a shortcut in CelebA by keeping only images where hair colour predicts a
smile (blond and brown hair smile, black hair does not). `config.data.bias` expresses this
for any dataset with categorical attributes:

  attribute   A: an attribute name, or binary attributes joined by '|' that together form
              one categorical attribute ('Blond_Hair|Brown_Hair|Black_Hair': the value is the
              one attribute that is set; none or several set = out of scope)
  target      B: an attribute name
  mapping     'a:b' pairs: the value of B that each value of A is tied to
  strength    s: the fraction of kept in-scope examples where B == mapping[A]

Definition. An example is in scope when its A value appears in `mapping`. For every such A
value a, with n_agree examples where B == mapping[a] and n_disagree where it does not, we keep
as many examples as possible such that exactly round(s * kept) of them agree: all of one kind
and a seeded random subset of the other. The strength therefore holds for every value of A
(and so overall), up to rounding. Nothing is ever duplicated: biasing only removes examples.
Out-of-scope examples are dropped ('drop', as in the paper's 3-hair-colour subset) or kept
untouched ('keep').

Besides the strength, the report gives the standard association between A and B over the
kept in-scope examples, Cramér's V (0 = independent, 1 = B is a function of A and vice
versa), and phi when both are binary; "natural" values are those before selection.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from absl import logging
import numpy as np
import scipy.stats

from patronus_jax.core.errors import ConfigError

from patronus_jax.data.config import parse_mapping

_YES = ('yes', 'true', '1', 'y', 'present', 'positive')
_NO = ('no', 'false', '0', 'n', 'absent', 'negative')


def _config_error(field: str, message: str) -> Exception:
  return ConfigError(f"config field '{field}' {message}")


@dataclasses.dataclass(frozen=True)
class BiasSpec:
  """`config.data.bias` resolved against a dataset's attributes (column indices)."""

  attribute: str
  members: tuple[int, ...]  # attribute columns forming A (several = composite of binaries)
  a_values: tuple[str, ...]
  target: int
  target_name: str
  b_values: tuple[str, ...]
  mapping: tuple[tuple[int, int], ...]  # (A value index, B value index)
  strength: float
  out_of_scope: str
  seed: int


def _find_attribute(name: str, names: Sequence[str], field: str, dataset: str) -> int:
  lowered = [n.lower() for n in names]
  if name.lower() not in lowered:
    listed = ', '.join(names) if names else 'none'
    raise _config_error(field, f'names {name!r}, which is not an attribute of {dataset} '
                        f'(attributes: {listed})')
  return lowered.index(name.lower())


def _find_value(value: str, values: Sequence[str], field: str, what: str) -> int:
  lowered = [v.lower() for v in values]
  key = value.lower()
  if key in lowered:
    return lowered.index(key)
  if len(values) == 2 and key in _YES + _NO:  # binary attributes: yes/no, true/false, 1/0
    return 1 if key in _YES else 0
  if key.lstrip('-').isdigit() and 0 <= int(key) < len(values):
    return int(key)
  raise _config_error(field, f'maps {value!r}, which is not a value of {what} (values: '
                      f'{", ".join(values)}; an index 0..{len(values) - 1} also works)')


def resolve(bias_cfg, attribute_names: Sequence[str],
            attribute_values: Sequence[Sequence[str]], dataset: str) -> BiasSpec:
  """Checks the bias config against the dataset's attributes (ConfigError naming the field)."""
  if not attribute_names:
    raise _config_error('data.bias.enabled', f'is set but {dataset} has no attributes to bias')
  parts = [p.strip() for p in bias_cfg.attribute.split('|') if p.strip()]
  members = tuple(_find_attribute(p, attribute_names, 'data.bias.attribute', dataset) for p in parts)
  if len(members) > 1:
    for m in members:
      if len(attribute_values[m]) != 2:
        raise _config_error('data.bias.attribute', f'joins {attribute_names[m]!r} with "|", '
                            'but only binary attributes can be joined')
    a_values = tuple(attribute_names[m] for m in members)
  else:
    a_values = tuple(attribute_values[members[0]])
  target = _find_attribute(bias_cfg.target.strip(), attribute_names, 'data.bias.target', dataset)
  if target in members:
    raise _config_error('data.bias.target', 'must differ from data.bias.attribute')
  b_values = tuple(attribute_values[target])
  mapping = tuple(
      (_find_value(a, a_values, 'data.bias.mapping', f'{bias_cfg.attribute!r}'),
       _find_value(b, b_values, 'data.bias.mapping', f'{attribute_names[target]!r}'))
      for a, b in parse_mapping(bias_cfg.mapping))
  return BiasSpec(attribute=bias_cfg.attribute, members=members, a_values=a_values,
                  target=target, target_name=attribute_names[target], b_values=b_values,
                  mapping=mapping, strength=float(bias_cfg.strength),
                  out_of_scope=bias_cfg.out_of_scope, seed=int(bias_cfg.seed))


def a_codes(labels: np.ndarray, spec: BiasSpec) -> np.ndarray:
  """The value index of A per example; -1 where a composite A has none or several set."""
  if len(spec.members) == 1:
    return labels[:, spec.members[0]].astype(np.int64)
  members = labels[:, list(spec.members)] > 0
  code = np.argmax(members, axis=1).astype(np.int64)
  return np.where(members.sum(axis=1) == 1, code, -1)


def _chi2(table: np.ndarray) -> Optional[tuple[float, float, tuple[int, int]]]:
  """(Pearson's chi-squared statistic, n, shape) of a contingency table without its empty rows and
  columns; None when fewer than two rows or columns are left (independence is then undefined)."""
  table = np.asarray(table, np.float64)
  table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
  if table.size == 0 or min(table.shape) < 2:
    return None
  n = float(table.sum())
  expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
  return float(((table - expected) ** 2 / expected).sum()), n, table.shape


def cramers_v(table: np.ndarray) -> float:
  """Cramér's V of a contingency table (empty rows/columns ignored); 0 when undefined."""
  chi2 = _chi2(table)
  if chi2 is None:
    return 0.0
  stat, n, shape = chi2
  return float(np.sqrt(stat / (n * (min(shape) - 1))))


def independence_p_value(table: np.ndarray) -> float:
  """p-value of Pearson's chi-squared test that the rows and columns of a contingency table are
  independent (empty rows/columns ignored); 1 when undefined (one row or column left)."""
  chi2 = _chi2(table)
  if chi2 is None:
    return 1.0
  stat, _, shape = chi2
  return float(scipy.stats.chi2.sf(stat, (shape[0] - 1) * (shape[1] - 1)))


def phi(table: np.ndarray) -> float:
  """Signed phi coefficient of a 2x2 table (value 1 of A with value 1 of B); 0 when undefined."""
  (a, b), (c, d) = np.asarray(table, np.float64)
  denominator = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
  return float((a * d - b * c) / denominator) if denominator > 0 else 0.0


def contingency_table(a: np.ndarray, b: np.ndarray, num_a: int, num_b: int) -> np.ndarray:
  """Counts of each (value of a, value of b)."""
  table = np.zeros((num_a, num_b), np.int64)
  np.add.at(table, (a, b), 1)
  return table


def select(labels: np.ndarray, spec: BiasSpec, split: str = '') -> tuple[np.ndarray, dict]:
  """Indices (sorted) of the examples to keep, and the report of what was achieved.

  Args:
    labels: int (num_examples, num_attributes), the dataset's attribute matrix.
    spec: the resolved bias.
    split: only used in the report and log.
  """
  labels = np.asarray(labels)
  codes = a_codes(labels, spec)
  b = labels[:, spec.target].astype(np.int64)
  tied = dict(spec.mapping)
  rng = np.random.default_rng(spec.seed)
  s = spec.strength
  keep = np.zeros(len(labels), bool)
  if spec.out_of_scope == 'keep':
    keep |= ~np.isin(codes, list(tied))
  for a_value, b_value in spec.mapping:
    group = np.flatnonzero(codes == a_value)
    agree = group[b[group] == b_value]
    disagree = group[b[group] != b_value]
    n_agree, n_dis = len(agree), len(disagree)
    # Keep every example of the scarcer kind and as many of the other as strength s allows.
    if s >= 1.0:
      k_agree, k_dis = n_agree, 0
    elif s <= 0.0:
      k_agree, k_dis = 0, n_dis
    elif n_agree * (1.0 - s) <= n_dis * s:
      k_agree, k_dis = n_agree, min(n_dis, int(round(n_agree * (1.0 - s) / s)))
    else:
      k_agree, k_dis = min(n_agree, int(round(n_dis * s / (1.0 - s)))), n_dis
    keep[rng.permutation(agree)[:k_agree]] = True
    keep[rng.permutation(disagree)[:k_dis]] = True
    if k_agree + k_dis == 0:
      logging.warning('Bias: no example left for %s = %s (available: %d agreeing, %d not).',
                      spec.attribute, spec.a_values[a_value], n_agree, n_dis)
  indices = np.flatnonzero(keep).astype(np.int64)
  return indices, report(labels, spec, keep, split)


def _strength(agrees: np.ndarray, mask: np.ndarray) -> float:
  """Fraction of the masked examples whose B is the one tied to their A (NaN for none)."""
  n = int(mask.sum())
  return float(agrees[mask].sum() / n) if n else float('nan')


def _per_value(codes: np.ndarray, agrees: np.ndarray, keep: np.ndarray, spec: BiasSpec) -> dict:
  """Per tied value of A: how many examples exist, were kept, agree; strength before and after."""
  out = {}
  for a_value, b_value in spec.mapping:
    group = codes == a_value
    kept = group & keep
    out[spec.a_values[a_value]] = dict(
        tied_to=spec.b_values[b_value], available=int(group.sum()), kept=int(kept.sum()),
        agree=int((kept & agrees).sum()), strength=_strength(agrees, kept),
        natural_strength=_strength(agrees, group))
  return out


def report(labels: np.ndarray, spec: BiasSpec, keep: np.ndarray, split: str = '') -> dict:
  """What a selection `keep` (bool per example) achieves for the bias `spec`.

  Strength and association are measured over the kept in-scope examples; the 'natural_'
  values over all in-scope examples before selection. JSON-ready except for NaN where a
  quantity is undefined (`patronus_jax.core.files.write_json` writes those as null).
  """
  labels = np.asarray(labels)
  keep = np.asarray(keep, bool)
  num = len(labels)
  codes = a_codes(labels, spec)
  b = labels[:, spec.target].astype(np.int64)
  tied = dict(spec.mapping)
  num_a, num_b = len(spec.a_values), len(spec.b_values)
  in_scope = np.isin(codes, list(tied))
  target_of = np.array([tied.get(v, -1) for v in range(num_a)])
  agrees = in_scope & (b == target_of[np.clip(codes, 0, None)])
  strength = lambda mask: _strength(agrees, mask)
  scope_after = in_scope & keep
  before = contingency_table(codes[in_scope], b[in_scope], num_a, num_b)
  after = contingency_table(codes[scope_after], b[scope_after], num_a, num_b)
  rows = sorted(tied)
  two_by_two = len(rows) == 2 and num_b == 2
  result = dict(
      split=split,
      attribute=spec.attribute,
      target=spec.target_name,
      a_values=list(spec.a_values),
      b_values=list(spec.b_values),
      mapping={spec.a_values[a]: spec.b_values[v] for a, v in spec.mapping},
      requested_strength=spec.strength,
      achieved_strength=strength(scope_after),
      natural_strength=strength(in_scope),
      cramers_v=cramers_v(after[rows]),
      natural_cramers_v=cramers_v(before[rows]),
      phi=phi(after[rows]) if two_by_two else float('nan'),
      natural_phi=phi(before[rows]) if two_by_two else float('nan'),
      total=int(num),
      in_scope=int(in_scope.sum()),
      kept=int(keep.sum()),
      kept_in_scope=int(scope_after.sum()),
      out_of_scope=int(num - in_scope.sum()),
      out_of_scope_policy=spec.out_of_scope,
      counts=after.tolist(),  # rows: a_values, columns: b_values (kept, in scope)
      natural_counts=before.tolist(),
      per_value=_per_value(codes, agrees, keep, spec),
  )
  logging.info('Bias on %s: %s -> %s kept %d of %d examples; strength %.3f (requested %.3f, '
               'natural %.3f), Cramér\'s V %.3f (natural %.3f).', split or 'split',
               spec.attribute, spec.target_name, result['kept'], num,
               result['achieved_strength'], spec.strength, result['natural_strength'],
               result['cramers_v'], result['natural_cramers_v'])
  return result


def set_celeba_hair_smile(config) -> None:
  """The paper's CelebA shortcut (blond/brown hair <-> smiling, black hair <-> not smiling).

  Used by configs/celeba_bias.py and by the import of official 'celeba_hair_smile' checkpoints.
  """
  bias = config.data.bias
  bias.enabled = True
  bias.attribute = 'Blond_Hair|Brown_Hair|Black_Hair'
  bias.target = 'Smiling'
  bias.mapping = 'Blond_Hair:yes,Brown_Hair:yes,Black_Hair:no'
  bias.strength = 0.95
  bias.out_of_scope = 'drop'
  config.interpret.diagnosis_attributes = ('Smiling', 'Black_Hair', 'Blond_Hair', 'Brown_Hair')


# ----------------------------------------------------------------------------- undoing a bias


def dependent_pairs(labels: np.ndarray, num_values: Sequence[int], p_value: float = 1e-3,
                    min_cramers_v: float = 0.1) -> list[tuple[int, int]]:
  """The attribute column pairs (a < b) that go together in `labels`: the chi-squared test of independence
  rejects at `p_value` and Cramér's V is at least `min_cramers_v` (on large data every pair is
  significant; V keeps those whose tie matters)."""
  labels = np.asarray(labels, np.int64)
  out = []
  for a in range(labels.shape[1]):
    for b in range(a + 1, labels.shape[1]):
      table = contingency_table(labels[:, a], labels[:, b], num_values[a], num_values[b])
      if independence_p_value(table) <= p_value and cramers_v(table) >= min_cramers_v:
        out.append((a, b))
  return out


def independence_weights(labels: np.ndarray, pairs: Sequence[tuple[int, int]], num_values: Sequence[int],
                         iterations: int = 50) -> np.ndarray:
  """Per-example weights (mean 1) under which the attribute columns of every pair are independent.

  For one pair (a, b) the weight of an example in cell (u, v) is P(a=u) P(b=v) / P(a=u, b=v): the
  weighted joint is exactly the product of the (unchanged) marginals. Several pairs are raked
  (iterative proportional fitting, `iterations` rounds): each round applies that factor per pair;
  pairs that share no attribute are independent after one round. A cell with no example cannot be
  filled: its share stays 0 and the others' are scaled up (`weighted_table` shows what is achieved).
  """
  labels = np.asarray(labels, np.int64)
  w = np.ones(len(labels), np.float64)
  for _ in range(iterations if len(pairs) > 1 else 1):
    for a, b in pairs:
      joint = weighted_table(labels[:, a], labels[:, b], w, num_values[a], num_values[b])
      pa, pb = joint.sum(1), joint.sum(0)
      target = np.outer(pa, pb)
      # cells with mass are rescaled to the product; empty cells' target goes to the other cells of their row
      target = np.where(joint > 0, target, 0.0)
      target *= np.divide(pa, target.sum(1), out=np.zeros_like(pa), where=target.sum(1) > 0)[:, None]
      factor = np.divide(target, joint, out=np.zeros_like(joint), where=joint > 0)
      w = w * factor[labels[:, a], labels[:, b]]
  return w / w.mean()


def weighted_table(a: np.ndarray, b: np.ndarray, weights: np.ndarray, num_a: int, num_b: int) -> np.ndarray:
  """Normalised joint distribution of two attribute columns under per-example weights."""
  table = np.zeros((num_a, num_b), np.float64)
  np.add.at(table, (np.asarray(a, np.int64), np.asarray(b, np.int64)), np.asarray(weights, np.float64))
  return table / table.sum()


def resample(weights: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` example indices drawn in proportion to `weights`, shuffled: systematic resampling, so each
  example appears floor or ceil of its expected count num * w_i / sum(w) times (the cell frequencies
  of the result are those of the weights up to one example per example, not up to sampling noise)."""
  cum = np.cumsum(np.asarray(weights, np.float64))
  positions = (rng.random() + np.arange(num)) * (cum[-1] / num)
  return rng.permutation(np.minimum(np.searchsorted(cum, positions, side='right'), len(cum) - 1))
