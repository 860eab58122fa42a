"""Emergence: when, along a sampling trajectory, each prototype and each attribute appears.

At every DDIM step k (k = 0 the noisiest, K-1 the last) the predicted clean image x0_hat is
encoded into s(k) and, when an attribute classifier is given, classified. A prototype has
*emerged* at the first step from which |s_j(k) - s_j(final)| stays within
`tolerance * spread_j` (its observed held-out range) until the end; an attribute has
*settled* in a trajectory at the first step from which the predicted class of x0_hat stays
the final one. Both are aggregated over many trajectories with their spread and bootstrap CIs.

Attributes are ranked by a chance-corrected version of the settling step: per step, Cohen's
kappa between the class predicted for x0_hat and the final image's class over all
trajectories, and the attribute's *settling fraction* = (1 - kappa) integrated over diffusion
time (the mean over steps when they are uniform in t, as DDIM's; in time, so that samplers that
place their steps otherwise, such as DPM-Solver++ in log-SNR, report the same trajectory alike). A raw
per-trajectory settling step is biased by the classifier's default answer on the blurry,
noisy x0_hat of the first steps: trajectories whose final class happens to be that default
(e.g. 'plain' for the stripes) count as settled from step 0; kappa gives such a constant
prediction no credit. (The paper: low-frequency attributes such as a colour emerge before
high-frequency ones such as a texture.)

Attributes are also linked to prototypes without a classifier: eta^2 of s_j with each
attribute on held-out data (`stats.association_matrix`) says which prototypes carry which
attribute; their emergence steps, weighted by eta^2, give a second, classifier-free ranking.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from patronus_jax.interpret import stats


def analyse(s_traj: np.ndarray, spread: np.ndarray, tolerance: float, timesteps: Sequence[int],
            probs_traj: Optional[Sequence[np.ndarray]] = None, names: Sequence[str] = (),
            values: Sequence[Sequence[str]] = (), association: Optional[np.ndarray] = None,
            association_threshold: float = 0.1, level: float = 0.95, num_bootstrap: int = 1000,
            seed: int = 0, kappa_threshold: float = 0.8) -> dict:
  """The emergence report.

  Args:
    s_traj: (N, K, P) activations of x0_hat per trajectory and step.
    spread: (P,) observed spread of each prototype (tolerances are relative to it).
    tolerance: fraction of the spread.
    timesteps: (K,) diffusion timestep of each step (noisiest first).
    probs_traj: optional, per attribute (N, K, V_a) class probabilities of x0_hat.
    names, values: attribute names and value names.
    association: optional (A, P) eta^2 of prototypes with attributes on held-out data.
    kappa_threshold: an attribute's `kappa_step` is the first step from which kappa stays at
      or above it.
  """
  ci = dict(level=level, num_bootstrap=num_bootstrap, seed=seed)
  report, frac = prototype_emergence(s_traj, spread, tolerance, timesteps, **ci)
  if association is not None and len(names):
    report.update(association_emergence(frac, association, names, association_threshold, **ci))
  if probs_traj is not None and len(names):
    report.update(attribute_settling(probs_traj, names, values, report['timesteps'], report['num_steps'],
                                     kappa_threshold, **ci))
  return report


def time_fractions(timesteps: Sequence[int]) -> np.ndarray:
  """(K,) how far along the trajectory in diffusion time each step is: (t_0 - t_k) / (t_0 - t_{K-1}).

  k / (K-1) on a grid uniform in t (DDIM's); a sampler that places its steps otherwise (DPM-Solver++
  uniform in log-SNR spends more of them at both ends) still reports the same trajectory the same."""
  ts = np.asarray(timesteps, np.float64)
  span = ts[0] - ts[-1]
  return (ts[0] - ts) / span if len(ts) > 1 and span > 0 else np.zeros(len(ts))


def unsettled_time(kappa: np.ndarray, timesteps: Sequence[int]) -> float:
  """1 - kappa integrated over diffusion time: step k stands for [t_{k+1}, t_k] (`stats.unsettled_fraction`,
  the mean over all steps but the last, on a grid uniform in t)."""
  kappa = np.asarray(kappa, np.float64)
  if len(kappa) < 2:
    return 0.0
  width = np.diff(time_fractions(timesteps))
  return float(np.sum(width * (1.0 - np.clip(kappa[:-1], 0.0, 1.0))))


def prototype_emergence(s_traj: np.ndarray, spread: np.ndarray, tolerance: float, timesteps: Sequence[int], *,
                        level: float, num_bootstrap: int, seed: int) -> tuple[dict, np.ndarray]:
  """(report of each prototype's emergence step, (N, P) emergence fractions of diffusion time)."""
  s_traj = np.asarray(s_traj, np.float64)
  n, k, p = s_traj.shape
  spread = np.asarray(spread, np.float64)
  steps = stats.emergence_steps(s_traj, tolerance * spread)  # (N, P)
  frac = time_fractions(timesteps)[steps]
  ts = [int(t) for t in timesteps]
  normalized = (s_traj - s_traj[:, -1:, :]) / spread  # (N, K, P): 0 at the end
  report = {
      'num_trajectories': n, 'num_steps': k, 'timesteps': ts, 'tolerance': tolerance,
      'convention': ('step k in 0..K-1 in sampling order (0 = noisiest, K-1 = final image); '
                     'fraction = (t_0 - t_k) / (t_0 - t_{K-1}), the share of diffusion time (k / (K-1) for '
                     'steps uniform in t); timestep = the diffusion t of that step'),
      'prototypes': [],
      'curves': {'normalized_mean': normalized.mean(0).T.tolist(),  # (P, K)
                 'normalized_std': normalized.std(0).T.tolist()},
  }
  for j in range(p):
    summary = stats.summarize(frac[:, j], level, num_bootstrap, seed + j)
    report['prototypes'].append({
        'prototype': j, 'step': stats.summarize(steps[:, j], level, num_bootstrap, seed + j),
        'fraction': summary, 'median_timestep': ts[int(round(np.median(steps[:, j])))]})
  order = np.argsort([e['fraction']['mean'] for e in report['prototypes']], kind='stable')
  report['prototype_order'] = [int(j) for j in order]
  return report, frac


def association_emergence(frac: np.ndarray, association: np.ndarray, names: Sequence[str], threshold: float, *,
                          level: float, num_bootstrap: int, seed: int) -> dict:
  """The classifier-free ranking: each attribute's carriers (eta^2 >= threshold) and their
  emergence fractions weighted by eta^2."""
  association = np.asarray(association, np.float64)
  by_attr = {}
  for a, name in enumerate(names):
    carriers = [int(j) for j in np.argsort(-association[a]) if association[a, j] >= threshold]
    entry = {'carriers': carriers, 'eta2': [float(association[a, j]) for j in carriers]}
    if carriers:
      w = association[a, carriers]
      per_sample = (frac[:, carriers] * w).sum(1) / w.sum()
      entry['fraction'] = stats.summarize(per_sample, level, num_bootstrap, seed + 100 + a)
    by_attr[name] = entry
  ranked = [nm for nm in names if 'fraction' in by_attr[nm]]
  return {'by_prototype_association': by_attr,
          'association_ranking': sorted(ranked, key=lambda nm: by_attr[nm]['fraction']['mean'])}


def attribute_settling(probs_traj: Sequence[np.ndarray], names: Sequence[str], values: Sequence[Sequence[str]],
                       ts: Sequence[int], num_steps: int, kappa_threshold: float, *, level: float,
                       num_bootstrap: int, seed: int) -> dict:
  """Per attribute: raw settling steps, kappa curves and settling fractions with CIs; the two
  rankings and the paired differences between attributes."""
  settle = np.stack([stats.settling_steps(pt) for pt in probs_traj], 1)  # (N, A)
  settle_frac = time_fractions(ts)[settle]
  attrs = {name: _raw_settling(np.asarray(probs_traj[a]), settle[:, a], settle_frac[:, a],
                               values[a] if len(values) > a else [], level, num_bootstrap, seed + a)
           for a, name in enumerate(names)}
  preds = [np.asarray(pt).argmax(-1) for pt in probs_traj]
  cards = [np.asarray(pt).shape[-1] for pt in probs_traj]
  kappas = [stats.kappa_curve(p, p[:, -1], v) for p, v in zip(preds, cards)]
  point = np.array([unsettled_time(kc, ts) for kc in kappas])
  boot = _bootstrap_unsettled(preds, cards, ts, num_bootstrap, seed + 500)
  alpha = (1.0 - level) / 2.0
  for a, name in enumerate(names):
    kc = kappas[a]
    above = stats.first_stable_index(kc >= kappa_threshold)
    attrs[name].update(
        kappa_curve=kc.tolist(), settling=float(point[a]),
        settling_ci=[float(np.quantile(boot[:, a], alpha)), float(np.quantile(boot[:, a], 1 - alpha))],
        kappa_step=int(above), kappa_step_timestep=ts[min(int(above), num_steps - 1)])
  return {'attributes': attrs, 'kappa_threshold': kappa_threshold,
          'attribute_ranking': sorted(names, key=lambda nm: (attrs[nm]['settling'], nm)),
          'attribute_ranking_raw': sorted(names, key=lambda nm: (attrs[nm]['fraction']['mean'], nm)),
          'pairwise_settling_difference': _pairwise_differences(names, point, boot, settle_frac, alpha)}


def _raw_settling(pt: np.ndarray, settle: np.ndarray, settle_frac: np.ndarray, value_names: Sequence[str],
                  level: float, num_bootstrap: int, seed: int) -> dict:
  """One attribute's per-trajectory settling (biased by the classifier's default answer; see the
  module doc), overall and by final value, and its agreement curves. pt: (N, K, V) probabilities."""
  n, k = pt.shape[:2]
  pred = pt.argmax(-1)  # (N, K)
  final = pred[:, -1]
  agree = (pred == final[:, None]).mean(0)  # (K,)
  p_final = np.take_along_axis(pt, np.broadcast_to(final[:, None, None], (n, k, 1)), -1)[..., 0]
  per_value = {}
  for v, vname in enumerate(value_names):
    mask = final == v
    if mask.sum() >= 2:
      per_value[vname] = stats.summarize(settle_frac[mask], level, num_bootstrap, seed + 200)
  return {'fraction': stats.summarize(settle_frac, level, num_bootstrap, seed + 300),
          'step': stats.summarize(settle, level, num_bootstrap, seed + 300),
          'by_final_value': per_value,
          'agreement_curve': agree.tolist(), 'final_class_probability_curve': p_final.mean(0).tolist()}


def _bootstrap_unsettled(preds: Sequence[np.ndarray], cards: Sequence[int], ts: Sequence[int],
                         num_bootstrap: int, seed: int) -> np.ndarray:
  """(num_bootstrap, A) unsettled fractions over resampled trajectories: the same resamples for
  every attribute, so that differences between attributes are paired."""
  n = len(preds[0])
  rng = np.random.default_rng(seed)
  boot = np.empty((num_bootstrap, len(preds)))
  for b in range(num_bootstrap):
    idx = rng.integers(0, n, n)
    for a in range(len(preds)):
      p = preds[a][idx]
      boot[b, a] = unsettled_time(stats.kappa_curve(p, p[:, -1], cards[a]), ts)
  return boot


def _pairwise_differences(names: Sequence[str], point: np.ndarray, boot: np.ndarray, settle_frac: np.ndarray,
                          alpha: float) -> dict:
  """For every pair of attributes: the difference in settling fraction with its paired CI, and raw
  per-trajectory comparisons."""
  pairwise = {}
  for ia, a in enumerate(names):
    for ib, b in enumerate(names):
      if ia < ib:
        diff = boot[:, ia] - boot[:, ib]
        raw = settle_frac[:, ia] - settle_frac[:, ib]
        pairwise[f'{a} - {b}'] = {
            'difference': float(point[ia] - point[ib]),
            'ci': [float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))],
            'raw_mean_difference': float(raw.mean()),
            'raw_fraction_first_earlier': float(np.mean(raw < 0)), 'raw_fraction_tied': float(np.mean(raw == 0))}
  return pairwise
