"""The semantics scorecard: does s carry the image's content, and does the generator use it?

Patronus promises that a user sees what each prototype depicts and that an image made from a
held-out image's s keeps that image's content. Each number below tests one part of that promise
(all in [0, 1]; higher is better unless said otherwise):

  probe_auroc[a]            a linear probe reads attribute a from all of s (the `probe` section;
                            repeated here). 0.5 = chance.
  best_prototype_auroc[a]   the single best prototype s_j read as a score for a (per class v of a:
                            max_j max(AUC, 1 - AUC) of s_j for a == v against the rest, as TAD
                            computes it; mean over the classes). 0.5 = chance; high means one
                            prototype stands for a.
  keep_rate[a]              the attribute classifier's label of a agrees between a held-out image
                            and an image generated from its s with new noise (k generations per
                            image, pooled). Compare with
  keep_rate_chance[a]       the same agreement between an image and a generation from another
                            image's s: what a generator that ignores s scores.
  edit_success[a]           one prototype, `controlling_prototype[a]`, is moved to the other end of
                            its range (its 1% / 99% quantile over the held-out s, whichever is
                            farther from its value) with the noise held fixed; success when the
                            classifier's label of a changes and every other attribute's label stays.
                            The prototype is the one whose edit does that most often on the first
                            `edit_selection.images` held-out images (every alive prototype is tried;
                            ties go to the better reader of a); the rate is measured on the other
                            images. A prototype that reads a well need not move it
                            (`reading_prototype[a]`, the best single reader, is what was edited when
                            no images are set aside for the choice).
  prototype_auroc[a]        per prototype, its best one-vs-rest reading of a (max over classes):
                            which prototypes read what.
  alive_prototypes          prototypes whose std over held-out images is >= 10% of the largest std
                            (of `num_prototypes`); dead prototypes carry nothing.
  duplicate_pairs           prototype pairs with |corr| > 0.95 over held-out images (0 is good):
                            copies of one another; `duplicate_prototypes` lists them as [j, k, corr]
                            (dead prototypes, copies of each other too, are counted, not listed), and
                            `largest_correlation` is the largest |corr| of two live prototypes.

The probes and single-prototype AUROCs read s only; keep and edit rates also need the generator
and the attribute classifier, so they measure both ends: what s holds and whether the U-Net uses it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from patronus_jax.evaluate.probes import auroc_matrix, encode_labels

ALIVE_FRACTION = 0.1  # a prototype is alive when its std is at least this fraction of the largest
DUPLICATE_CORRELATION = 0.95
EDIT_QUANTILES = (0.01, 0.99)


def prototype_aurocs(s: np.ndarray, attributes: np.ndarray) -> list[np.ndarray]:
  """Per attribute, the (classes, prototypes) matrix of max(AUC, 1 - AUC): one row for a binary
  attribute (its larger value against the other), one per value (one-vs-rest) otherwise."""
  labels, cards = encode_labels(attributes)
  out = []
  for a, card in enumerate(cards):
    classes = [1] if card == 2 else list(range(card))
    auc = auroc_matrix(s, np.stack([labels[:, a] == v for v in classes], 1))
    auc = np.maximum(auc, 1.0 - auc)
    out.append(np.where(np.isfinite(auc), auc, 0.5))  # a constant attribute or prototype: chance
  return out


def representation_scores(s: np.ndarray, attributes: np.ndarray, names: Sequence[str]) -> dict:
  """The s-only part: best_prototype_auroc, prototype_auroc, reading_prototype, alive_prototypes,
  duplicate_pairs; controlling_prototype starts as the reading prototype (`select_controlling` replaces
  it by the prototype whose edit works)."""
  s = np.asarray(s, np.float64)
  aurocs = prototype_aurocs(s, attributes)
  best = {n: float(np.mean(m.max(axis=1))) for n, m in zip(names, aurocs)}
  per_prototype = {n: m.max(axis=0) for n, m in zip(names, aurocs)}
  # the prototype with the strongest single reading of any class of the attribute
  reading = {n: int(np.argmax(v)) for n, v in per_prototype.items()}
  std = s.std(axis=0)
  alive = int(_alive(std).sum())
  live = std > 0
  copies, largest = [], 0.0
  if live.sum() > 1:
    index = np.flatnonzero(live)
    corr = np.corrcoef(s[:, live].T)
    upper = np.triu_indices(corr.shape[0], 1)
    pairs = corr[upper]
    largest = float(np.abs(pairs).max())
    # which prototypes are copies, most alike first, so that a user can look at them
    order = np.argsort(-np.abs(pairs), kind='stable')
    copies = [[int(index[upper[0][i]]), int(index[upper[1][i]]), round(float(pairs[i]), 4)]
              for i in order if abs(pairs[i]) > DUPLICATE_CORRELATION]
  duplicates = len(copies)
  # constant prototypes are copies of each other too
  dead = int((~live).sum())
  duplicates += dead * (dead - 1) // 2
  return dict(best_prototype_auroc=best, reading_prototype=reading, controlling_prototype=dict(reading),
              prototype_auroc={n: [float(x) for x in v] for n, v in per_prototype.items()},
              alive_prototypes=alive, num_prototypes=int(s.shape[1]), duplicate_pairs=duplicates,
              duplicate_prototypes=copies, largest_correlation=largest)


def alive_mask(s: np.ndarray) -> np.ndarray:
  """Prototypes whose std over `s` is at least ALIVE_FRACTION of the largest."""
  return _alive(np.asarray(s, np.float64).std(axis=0))


def _alive(std: np.ndarray) -> np.ndarray:
  return std >= ALIVE_FRACTION * std.max() if std.max() > 0 else np.zeros(std.shape, bool)


def keep_rates(real_labels: np.ndarray, generated_labels: np.ndarray, names: Sequence[str],
               seed: int = 0) -> tuple[dict, dict]:
  """(keep_rate, keep_rate_chance) per attribute.

  real_labels: (N, A) classifier labels of the held-out images; generated_labels: (k, N, A) of the
  k images generated from each one's s. Chance pairs image i with generation j of a random
  other image (a derangement per generation round).
  """
  k, n, _ = generated_labels.shape
  if n < 2:
    raise ValueError(f'keep rates need at least 2 held-out images, got {n}')
  rng = np.random.default_rng(seed)
  same = generated_labels == real_labels[None]
  shifted = []
  for g in range(k):
    perm = rng.permutation(n)
    partner = np.roll(perm, 1)[np.argsort(perm)]  # partner[i] != i: a cycle through a random order
    shifted.append(generated_labels[g, partner] == real_labels)
  chance = np.stack(shifted)
  keep = {name: float(same[..., a].mean()) for a, name in enumerate(names)}
  keep_chance = {name: float(chance[..., a].mean()) for a, name in enumerate(names)}
  return keep, keep_chance


def edited_activations(s: np.ndarray, prototype: int, reference: np.ndarray) -> np.ndarray:
  """s with prototype j moved to the far end of its range in `reference` (held-out s): raised to
  its 99% quantile where it lies below the middle of its 1%-99% quantile range, else lowered to 1%.

  The halfway point, not the median, decides: a prototype that reads one of K classes is high on
  about 1/K of the images, so its median lies inside the low cluster, and a median split would
  "lower" the low-cluster images above it to where they already are (no edit at all).
  """
  low, high = np.quantile(reference[:, prototype], EDIT_QUANTILES)
  out = np.array(s, copy=True)
  column = out[:, prototype]
  out[:, prototype] = np.where(column < 0.5 * (low + high), high, low)
  return out


def edit_success(base_labels: np.ndarray, edited_labels: np.ndarray, attribute: int) -> tuple[float, float]:
  """(success, changed): the attribute's label changed and all others stayed; the attribute changed."""
  changed = edited_labels[:, attribute] != base_labels[:, attribute]
  others = np.delete(np.arange(base_labels.shape[1]), attribute)
  kept = np.all(edited_labels[:, others] == base_labels[:, others], axis=1)
  return float(np.mean(changed & kept)), float(np.mean(changed))


def select_controlling(s: np.ndarray, reference: np.ndarray, prototype_auroc: dict, names: Sequence[str],
                       generate_paired: Callable[[np.ndarray], np.ndarray],
                       classify: Callable[[np.ndarray], np.ndarray]) -> tuple[dict, dict]:
  """(controlling_prototype, edit_selection): per attribute the alive prototype whose edit
  (`edited_activations`) changes it alone on the most of these images.

  generate_paired(blocks) takes (m, k, P) activations and returns the m * k images (block-major),
  block b's row i drawn from the same noise as every other block's row i, so that an edit differs
  from its base image only in s. Block 0 is s unedited. Ties (and no success at all) go to the
  prototype that reads the attribute best (`prototype_auroc`), so the reading prototype is kept
  unless another edit does better.
  """
  s = np.asarray(s, np.float32)
  candidates = [int(j) for j in np.flatnonzero(alive_mask(reference))]
  blocks = np.stack([s] + [edited_activations(s, j, reference) for j in candidates])
  labels = np.asarray(classify(generate_paired(blocks))).reshape(len(blocks), s.shape[0], -1)
  chosen, table = {}, {}
  for a, name in enumerate(names):
    success = np.array([edit_success(labels[0], labels[1 + c], a)[0] for c in range(len(candidates))])
    c = max(range(len(candidates)), key=lambda c: (success[c], prototype_auroc[name][candidates[c]]))
    reader = int(np.argmax(prototype_auroc[name]))
    chosen[name] = candidates[c]
    table[name] = dict(prototype=candidates[c], success=float(success[c]), reading_prototype=reader,
                       reading_success=float(success[candidates.index(reader)]) if reader in candidates else 0.0)
  return chosen, dict(images=int(s.shape[0]), candidates=candidates, per_attribute=table)


def generation_scores(s: np.ndarray, real_labels: np.ndarray, reference_s: np.ndarray, controlling: dict,
                      names: Sequence[str], generate: Callable[[np.ndarray, int], np.ndarray],
                      classify: Callable[[np.ndarray], np.ndarray], generations: int, seed: int,
                      edit_from: int = 0) -> dict:
  """keep_rate(_chance) and edit_success from `generate(s, noise_index) -> images` and
  `classify(images) -> (N, A) labels`. Generation 0's noise is reused for every edit, so an edit
  differs from its base image only in s. Prototypes that control several attributes are edited once.
  Edits are scored on images `edit_from:` (the ones before chose the prototypes)."""
  if s.shape[0] - edit_from < 1:
    raise ValueError(f'no image left to score the edits on: {s.shape[0]} images, the first {edit_from} chose')
  generated = np.stack([classify(generate(s, g)) for g in range(generations)])
  keep, chance = keep_rates(real_labels, generated, names, seed)
  success, changed, edited = {}, {}, {}
  for a, name in enumerate(names):
    j = controlling[name]
    if j not in edited:
      edited[j] = classify(generate(edited_activations(s, j, reference_s), 0))
    success[name], changed[name] = edit_success(generated[0][edit_from:], edited[j][edit_from:], a)
  return dict(keep_rate=keep, keep_rate_chance=chance, keep_rate_above_chance={
      n: keep[n] - chance[n] for n in names}, edit_success=success, edit_changed_attribute=changed,
      num_images=int(s.shape[0]), generations_per_image=int(generations), edited_prototypes=sorted(edited),
      edit_images=int(s.shape[0] - edit_from))


def s_consistency(s_wanted: np.ndarray, s_got: np.ndarray) -> dict[str, float]:
  """How faithfully generated images carry their conditioning s (s re-encoded from them).

  pearson_pooled correlates all entries at once, so it is dominated by the differences between
  prototypes' typical values and stays near 1 even when nothing image-specific survives;
  pearson_per_prototype_mean correlates each prototype across images (what varies between
  images) and is the one to read.
  """
  pooled = float(np.corrcoef(s_wanted.ravel(), s_got.ravel())[0, 1])
  per_dim = []
  for j in range(s_wanted.shape[1]):
    if s_wanted[:, j].std() > 0 and s_got[:, j].std() > 0:
      per_dim.append(float(np.corrcoef(s_wanted[:, j], s_got[:, j])[0, 1]))
  return dict(pearson_pooled=pooled, pearson_per_prototype_mean=float(np.mean(per_dim)) if per_dim else float('nan'),
              mean_abs_error=float(np.mean(np.abs(s_wanted - s_got))))
