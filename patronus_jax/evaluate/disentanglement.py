"""Disentanglement of a representation: TAD and DCI.

TAD (targeted attribute disentanglement; Yeats et al., 2022, "NashAE: Disentangling
Representations through Adversarial Covariance Minimization"), exactly as InfoDiffusion's
`eval_disentanglement.py` (`TADMetric.evaluate`, taken from `ericyeats/nashae-beamsynthesis`)
computes it, which Patronus reports (CelebA 0.43):

1. For every binary attribute i and latent dimension j, the sign-free AUROC of that single
   dimension as a detector: A[i, j] = max(AUROC(y_i, z_j), AUROC(y_i, -z_j)).
2. gap_i = max_j A[i, j] - (second largest A[i, j]) (0 stands in for the second when D = 1).
3. Attributes are filtered by their labels: with H_i the entropy of attribute i and I(i, k) the
   mutual information between attributes i and k (empirical, natural log), attribute i counts
   only if max_j A[i, j] >= 0.75 (`auroc_threshold`) and max_{k != i} I(i, k) / H_i <= 0.2
   (`entropy_threshold`: the attribute shares at most a fifth of its entropy with another one).
4. TAD = sum of gap_i over the attributes that count; "attributes captured" = their number.

InfoDiffusion evaluates it on the standardised training part of each of 5 shuffled folds
(KFold(5, shuffle=True, random_state=0), first 10000 CelebA examples) and reports the mean
(and std) over folds; `tad_score(folds=5)` does the same (standardising does not change AUROC).

DCI (Eastwood & Williams, 2018, "A Framework for the Quantitative Evaluation of Disentangled
Representations"), as implemented in `google-research/disentanglement_lib`
(`evaluation/metrics/dci.py`, also used by InfoDiffusion): one gradient-boosted tree ensemble per
factor predicts the factor from all codes; R[j, k] = |feature importance of code j for factor k|;
disentanglement = sum_j rho_j (1 - H_K(R[j, :] / sum_k R[j, k])) with rho_j = sum_k R[j, k] / sum R
and entropy base K (number of factors); completeness = sum_k rho_k (1 - H_D(R[:, k] / sum_j R[j, k]))
with entropy base D (number of codes); informativeness = mean prediction accuracy of the
ensembles on held-out data (R^2 for continuous factors, regressors).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import entropy
from sklearn.model_selection import KFold

from patronus_jax.evaluate.probes import _check_codes, _names, auroc_matrix, encode_labels
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor


# ----------------------------------------------------------------------------------------
# TAD


def _binary_labels(attributes: np.ndarray) -> np.ndarray:
  labels, cards = encode_labels(attributes)
  if max(cards) > 2:
    bad = [a for a, k in enumerate(cards) if k > 2]
    raise ValueError(f'TAD is defined for binary attributes; attributes {bad} have more than 2 values')
  return labels


def mutual_information_matrix(labels: np.ndarray) -> np.ndarray:
  """Empirical mutual information (nats) between binary label columns; the diagonal = entropy."""
  y = np.asarray(labels, np.float64)
  n = y.shape[0]
  mi = np.zeros((y.shape[1], y.shape[1]))
  for a_value in (0.0, 1.0):
    ya = (y == a_value).astype(np.float64)
    pa = ya.mean(axis=0)
    for b_value in (0.0, 1.0):
      yb = (y == b_value).astype(np.float64)
      pb = yb.mean(axis=0)
      joint = ya.T @ yb / n
      outer = np.outer(pa, pb)
      with np.errstate(divide='ignore', invalid='ignore'):
        term = joint * np.log(joint / outer)
      mi += np.where((joint > 0) & (outer > 0), term, 0.0)
  return mi


def tad_details(codes: np.ndarray, attributes: np.ndarray, *, auroc_threshold: float = 0.75,
                entropy_threshold: float = 0.2) -> dict[str, np.ndarray | float | int]:
  """One TAD evaluation on all the given examples (see the module docstring for the definition).

  Returns numpy arrays per attribute (aurocs (A, D), best_dim, best_auroc, gap, entropy_share,
  counted) and tad (float), num_captured (int). Constant attributes never count.
  """
  codes = np.asarray(codes, np.float64)
  labels = _binary_labels(attributes)
  aurocs = auroc_matrix(codes, labels)
  aurocs = np.maximum(aurocs, 1.0 - aurocs)  # the better sign of each dimension
  constant = ~np.isfinite(aurocs).all(axis=1)
  aurocs[~np.isfinite(aurocs)] = 0.5  # InfoDiffusion initialises every entry as a random guess
  best_dim = np.argmax(aurocs, axis=1)
  best = aurocs[np.arange(aurocs.shape[0]), best_dim]
  others = aurocs.copy()
  others[np.arange(aurocs.shape[0]), best_dim] = 0.0
  gap = best - others.max(axis=1)
  mi = mutual_information_matrix(labels)
  ent = np.diag(mi).copy()
  shared = (mi * (1.0 - np.eye(mi.shape[0]))).max(axis=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    entropy_share = np.where(ent > 0, shared / np.where(ent > 0, ent, 1.0), np.nan)
  counted = (best >= auroc_threshold) & (entropy_share <= entropy_threshold) & ~constant
  return dict(aurocs=aurocs, best_dim=best_dim, best_auroc=best, gap=gap, entropy_share=entropy_share,
              counted=counted, tad=float(gap[counted].sum()), num_captured=int(counted.sum()))


def tad_score(codes: np.ndarray, attributes: np.ndarray, *, folds: int = 5, seed: int = 0,
              max_examples: int = -1, auroc_threshold: float = 0.75, entropy_threshold: float = 0.2,
              attribute_names: Sequence[str] | None = None) -> dict[str, Any]:
  """TAD of `codes` (N, D) for binary `attributes` (N, A), as InfoDiffusion reports it.

  With folds >= 2: evaluated on the training part of each shuffled KFold split (seeded by
  `seed`) and averaged; with folds <= 1: once on all examples. `max_examples` keeps the first N
  (-1: all). Returns (JSON-ready) tad, tad_std, num_captured (mean over folds),
  num_captured_std, captured {name: fraction of folds where it counts}, and per attribute
  (on all examples) best_dim, best_auroc, gap.
  """
  codes, attributes = _check_codes(codes, attributes, max_examples)
  names = _names(attribute_names, attributes.shape[1])
  kwargs = dict(auroc_threshold=auroc_threshold, entropy_threshold=entropy_threshold)
  if folds >= 2:
    splits = [train for train, _ in KFold(n_splits=folds, shuffle=True, random_state=seed).split(codes)]
  else:
    splits = [np.arange(codes.shape[0])]
  runs = [tad_details(codes[idx], attributes[idx], **kwargs) for idx in splits]
  scores = np.array([r['tad'] for r in runs])
  captured = np.array([r['num_captured'] for r in runs], np.float64)
  counted = np.mean([r['counted'] for r in runs], axis=0)
  full = tad_details(codes, attributes, **kwargs)
  return dict(
      tad=float(scores.mean()), tad_std=float(scores.std()),
      num_captured=float(captured.mean()), num_captured_std=float(captured.std()),
      tad_folds=scores.tolist(),
      captured={name: float(c) for name, c in zip(names, counted) if c > 0},
      best_dim={name: int(d) for name, d in zip(names, full['best_dim'])},
      best_auroc={name: float(v) for name, v in zip(names, full['best_auroc'])},
      gap={name: float(v) for name, v in zip(names, full['gap'])},
      folds=len(splits), num_examples=int(codes.shape[0]),
  )


# ----------------------------------------------------------------------------------------
# DCI


def dci_from_importance(importance: np.ndarray) -> dict[str, float]:
  """Disentanglement and completeness of an importance matrix R (num_codes, num_factors).

  As disentanglement_lib: entropies of the normalised rows (base = num_factors) and columns
  (base = num_codes), with 1e-11 added to avoid log(0), weighted by relative importance.
  """
  r = np.abs(np.asarray(importance, np.float64))
  num_codes, num_factors = r.shape
  weights = r if r.sum() > 0 else np.ones_like(r)
  if num_factors > 1:
    per_code = 1.0 - entropy(r.T + 1e-11, base=num_factors)
  else:
    per_code = np.ones(num_codes)  # one factor: every code is trivially specific to it
  if num_codes > 1:
    per_factor = 1.0 - entropy(r + 1e-11, base=num_codes)
  else:
    per_factor = np.ones(num_factors)
  code_weight = weights.sum(axis=1) / weights.sum()
  factor_weight = weights.sum(axis=0) / weights.sum()
  return dict(disentanglement=float(np.sum(per_code * code_weight)),
              completeness=float(np.sum(per_factor * factor_weight)))


def dci_score(codes: np.ndarray, factors: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0,
              max_examples: int = -1, num_estimators: int = 100, max_depth: int = 3,
              learning_rate: float = 0.1, continuous: Sequence[bool] | None = None,
              factor_names: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """DCI (Eastwood & Williams) with gradient-boosted trees, as disentanglement_lib computes it.

  Args:
    codes: (N, D) representation.
    factors: (N, K) ground-truth factors: categorical labels (classifiers; shapes factors,
      CelebA's binary attributes) or, where `continuous[k]`, real values (regressors).
    test_fraction: share of the (seeded) shuffled examples held out for informativeness.
    num_estimators, max_depth, learning_rate: of sklearn's GradientBoosting* (its defaults).
    progress: called with a line after each factor's ensemble is fitted (long runs).

  Returns (JSON-ready): disentanglement, completeness, informativeness (mean held-out accuracy,
  R^2 for continuous factors), informativeness_train, per-factor informativeness, the
  importance matrix (D x K nested lists) and skipped_factors (constant in the training split).
  """
  codes, factors = _check_codes(codes, factors, max_examples)
  n, num_codes = codes.shape
  names = _names(factor_names, factors.shape[1])
  continuous = [False] * len(names) if continuous is None else list(continuous)
  if len(continuous) != len(names):
    raise ValueError(f'continuous has {len(continuous)} entries for {len(names)} factors')
  num_test = int(round(n * test_fraction))
  if not 0 < num_test < n:
    raise ValueError(f'test_fraction={test_fraction} leaves no train or no test examples among {n}')
  order = np.random.default_rng(seed).permutation(n)
  test, train = order[:num_test], order[num_test:]
  importance = np.zeros((num_codes, len(names)))
  info_train, info_test, skipped = {}, {}, []
  trees = dict(n_estimators=num_estimators, max_depth=max_depth, learning_rate=learning_rate, random_state=seed)
  for k, name in enumerate(names):
    y, model = _factor_model(factors[:, k], continuous[k], train, trees)
    if model is None:
      skipped.append(name)
      continue
    model.fit(codes[train], y[train])
    importance[:, k] = np.abs(model.feature_importances_)
    # score(): accuracy for classifiers, R^2 for regressors.
    info_train[name] = float(model.score(codes[train], y[train]))
    info_test[name] = float(model.score(codes[test], y[test]))
    if progress is not None:
      progress(f'DCI: factor {k + 1}/{len(names)} ({name}) fitted, held-out score {info_test[name]:.3f}')
  kept = [k for k, name in enumerate(names) if name not in skipped]
  if not kept:
    raise ValueError('DCI needs at least one factor that varies in the training split')
  dc = dci_from_importance(importance[:, kept])
  return dict(
      disentanglement=dc['disentanglement'], completeness=dc['completeness'],
      informativeness=float(np.mean(list(info_test.values()))),
      informativeness_train=float(np.mean(list(info_train.values()))),
      informativeness_per_factor=info_test,
      importance=importance.tolist(), skipped_factors=skipped,
      num_train=int(train.size), num_test=int(test.size),
  )


def _factor_model(y: np.ndarray, continuous: bool, train: np.ndarray, trees: dict):
  """(targets, unfitted ensemble) for one factor: a regressor on real values, a classifier on
  labels 0..K-1; (targets, None) when the labels are constant in the training split."""
  if continuous:
    return y.astype(np.float64), GradientBoostingRegressor(**trees)
  y = encode_labels(y)[0][:, 0]
  if np.unique(y[train]).size < 2:
    return y, None
  return y, GradientBoostingClassifier(**trees)
