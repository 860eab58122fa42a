"""The semantics scorecard (evaluate/semantics.py) on constructed s, labels and generators whose
answers are known in closed form."""

import numpy as np
import pytest

from patronus_jax.evaluate import semantics


def _data(n=400, seed=0):
  rng = np.random.default_rng(seed)
  colour = rng.integers(0, 3, n)  # 3 classes
  stripes = np.arange(n) % 2  # binary, balanced: the median of prototype 4 lies between its two clusters
  s = rng.normal(size=(n, 6))
  s[:, 2] = colour + 0.01 * rng.normal(size=n)  # prototype 2 orders the colours (one-vs-rest: not all perfect)
  s[:, 4] = -3.0 * stripes + 0.1 * rng.normal(size=n)  # prototype 4 reads stripes, with a negative sign
  s[:, 5] = 2.0 * s[:, 4] + 1.0  # a copy of prototype 4
  s[:, 0] = 0.5  # dead
  return s, np.stack([colour, stripes], 1)


def test_representation_scores_known_answers():
  s, attrs = _data()
  out = semantics.representation_scores(s, attrs, ('colour', 'stripes'))
  assert out['controlling_prototype']['stripes'] in (4, 5)
  assert out['best_prototype_auroc']['stripes'] == pytest.approx(1.0)
  # colour: classes 0 and 2 are at the ends of prototype 2 (AUROC 1), class 1 in the middle (~0.5-0.75)
  assert out['controlling_prototype']['colour'] == 2
  assert 0.8 < out['best_prototype_auroc']['colour'] < 0.95
  assert out['alive_prototypes'] == 5 and out['num_prototypes'] == 6
  assert out['duplicate_pairs'] == 1  # (4, 5); the dead prototype alone makes no pair
  assert out['duplicate_prototypes'] == [[4, 5, 1.0]] and out['largest_correlation'] == pytest.approx(1.0)


def test_random_s_reads_at_chance():
  rng = np.random.default_rng(1)
  attrs = rng.integers(0, 2, (4000, 1))
  out = semantics.representation_scores(rng.normal(size=(4000, 3)), attrs, ('a',))
  assert out['best_prototype_auroc']['a'] == pytest.approx(0.5, abs=0.03)
  assert out['duplicate_pairs'] == 0 and out['alive_prototypes'] == 3
  assert out['duplicate_prototypes'] == [] and out['largest_correlation'] < 0.1


def test_keep_rates_of_a_perfect_and_of_an_ignoring_generator():
  rng = np.random.default_rng(2)
  real = rng.integers(0, 4, (2000, 2))
  keep, chance = semantics.keep_rates(real, np.stack([real, real]), ('a', 'b'))
  assert keep == {'a': 1.0, 'b': 1.0}
  assert chance['a'] == pytest.approx(0.25, abs=0.02)  # 4 balanced classes: random pairs agree 1/4
  ignoring = rng.integers(0, 4, (2, 2000, 2))
  keep, chance = semantics.keep_rates(real, ignoring, ('a', 'b'))
  assert keep['a'] == pytest.approx(chance['a'], abs=0.03) and keep['a'] == pytest.approx(0.25, abs=0.03)


def test_the_chance_pairs_never_pair_an_image_with_itself():
  real = np.arange(50)[:, None]  # every image its own class
  keep, chance = semantics.keep_rates(real, real[None], ('id',))
  assert keep['id'] == 1.0 and chance['id'] == 0.0


def test_edits_and_keep_rates_through_a_stub_generator():
  s, attrs = _data()
  names = ('colour', 'stripes')
  out = semantics.representation_scores(s, attrs, names)

  def generate(s_batch, noise):  # the "image" is s; noise index 1 scrambles prototype 2
    images = np.array(s_batch, copy=True)
    if noise == 1:
      images[:, 2] = images[::-1, 2]
    return images

  def classify(images):  # reads colour from prototype 2 and stripes from prototype 4
    return np.stack([np.clip(np.rint(images[:, 2]), 0, 2), (images[:, 4] < -1.5)], 1).astype(np.int32)

  scores = semantics.generation_scores(s, attrs, s, out['controlling_prototype'], names, generate, classify,
                                       generations=2, seed=0)
  # generation 0 keeps everything, generation 1 loses colour (reversed order: agreement ~ chance)
  assert scores['keep_rate']['stripes'] == 1.0
  assert 0.5 < scores['keep_rate']['colour'] < 0.75
  assert scores['keep_rate_chance']['colour'] == pytest.approx(1 / 3, abs=0.06)
  # moving prototype 4 (or its copy 5, which the classifier does not read) flips stripes only
  controlling = scores['edited_prototypes']
  assert 2 in controlling
  # every colour moves to an end it was not at (the middle class to one of the two), stripes stay
  assert scores['edit_success']['colour'] == 1.0
  expected_stripes = 1.0 if out['controlling_prototype']['stripes'] == 4 else 0.0
  assert scores['edit_success']['stripes'] == expected_stripes
  assert scores['edit_changed_attribute']['stripes'] == expected_stripes


def test_an_edit_that_moves_two_attributes_is_no_success():
  s = np.linspace(-1, 1, 100)[:, None]
  labels = lambda images: np.stack([images[:, 0] > 0, images[:, 0] > 0], 1).astype(np.int32)
  scores = semantics.generation_scores(s, labels(s), s, {'a': 0, 'b': 0}, ('a', 'b'), lambda x, g: x, labels,
                                       generations=1, seed=0)
  assert scores['edit_changed_attribute'] == {'a': 1.0, 'b': 1.0}
  assert scores['edit_success'] == {'a': 0.0, 'b': 0.0}
  assert scores['edited_prototypes'] == [0]


def _causal_data(n=200, seed=3):
  """Prototype 0 reads attribute a perfectly but the generator ignores it; prototype 1 reads it
  weakly and is what the generator draws a from; prototype 2 is dead."""
  rng = np.random.default_rng(seed)
  a = np.arange(n) % 2
  s = rng.normal(size=(n, 4))
  s[:, 0] = a + 0.01 * rng.normal(size=n)
  s[:, 1] = 0.3 * a + rng.normal(size=n)
  s[:, 2] = 0.0
  return s, a[:, None]


def _paired(blocks):  # the "image" is s itself; every block row i shares row i's noise trivially
  return blocks.reshape(-1, blocks.shape[-1])


def test_the_edited_prototype_is_the_one_whose_edit_works_not_the_best_reader():
  s, attrs = _causal_data()
  names = ('a',)
  rep = semantics.representation_scores(s, attrs, names)
  assert rep['reading_prototype']['a'] == 0 and rep['controlling_prototype']['a'] == 0
  assert np.argmax(rep['prototype_auroc']['a']) == 0
  # the generator draws a from s_1 (the edit moves it across the middle of its range)
  middle = np.mean(np.quantile(s[:, 1], semantics.EDIT_QUANTILES))
  classify = lambda images: (images[:, 1:2] > middle).astype(np.int32)
  chosen, table = semantics.select_controlling(s[:40], s, rep['prototype_auroc'], names, _paired, classify)
  assert chosen == {'a': 1}
  assert table['candidates'] == [0, 1, 3]  # the dead prototype is not tried
  row = table['per_attribute']['a']
  assert row['reading_prototype'] == 0 and row['reading_success'] == 0.0 and row['success'] == 1.0
  scores = semantics.generation_scores(s, classify(s), s, chosen, names, lambda x, g: x, classify, generations=1,
                                       seed=0, edit_from=40)
  assert scores['edit_success']['a'] == 1.0 and scores['edit_images'] == len(s) - 40
  reading = semantics.generation_scores(s, classify(s), s, rep['reading_prototype'], names, lambda x, g: x,
                                        classify, generations=1, seed=0)
  assert reading['edit_success']['a'] == 0.0


def test_without_a_working_edit_the_best_reader_is_kept():
  s, attrs = _causal_data()
  rep = semantics.representation_scores(s, attrs, ('a',))
  constant = lambda images: np.zeros((len(images), 1), np.int32)  # a generator that draws no a at all
  chosen, table = semantics.select_controlling(s[:20], s, rep['prototype_auroc'], ('a',), _paired, constant)
  assert chosen == {'a': 0} and table['per_attribute']['a']['success'] == 0.0


def test_edits_are_scored_only_after_the_choosing_images():
  n, k = 30, 10
  s = np.stack([np.linspace(-1, 1, n), np.arange(n)], 1)  # column 1 carries the row index through edits

  def classify(images):  # a flips with s_0 on the first k rows only
    return np.where(images[:, 1] < k, images[:, 0] > 0, 0).astype(np.int32)[:, None]

  score = lambda first: semantics.generation_scores(s, classify(s), s, {'a': 0}, ('a',), lambda x, g: x, classify,
                                                    generations=1, seed=0, edit_from=first)['edit_success']['a']
  assert score(0) == pytest.approx(k / n) and score(k) == 0.0
  with pytest.raises(ValueError, match='no image left'):
    score(n)


def test_a_one_of_k_reader_is_edited_across_its_two_clusters():
  """A prototype high on one of 4 classes has its median inside the low cluster: every image must
  still be moved to the other cluster (a median split leaves a quarter where they are)."""
  rng = np.random.default_rng(4)
  colour = np.arange(400) % 4
  s = np.stack([(colour == 0) + 0.05 * rng.normal(size=400), rng.normal(size=400)], 1)
  edited = semantics.edited_activations(s, 0, s)
  low, high = np.quantile(s[:, 0], semantics.EDIT_QUANTILES)
  np.testing.assert_array_equal(edited[:, 0], np.where(colour == 0, low, high))
  np.testing.assert_array_equal(edited[:, 1], s[:, 1])
  is_red = lambda images: (images[:, :1] > 0.5).astype(np.int32)
  scores = semantics.generation_scores(s, is_red(s), s, {'red': 0}, ('red',), lambda x, g: x, is_red,
                                       generations=1, seed=0)
  assert scores['edit_success']['red'] == 1.0
