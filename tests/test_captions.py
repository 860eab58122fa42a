"""Captions and vocabularies agree: every word a dataset's training captions can contain has an id.

The captions the model trains on come from the data layer (CelebA: `sources.CelebAConvert`,
shapes: `shapes.caption`, written into the TFDS records); the B-cos tokenizer's fixed vocabulary
comes from `tokenizer.tokenizer_for`. A word missing from the vocabulary trains as <unk>.
"""

import itertools

import numpy as np
import pytest

from patronus_jax.data import captions
from patronus_jax.data import shapes
from patronus_jax.data import sources
from patronus_jax.tasks.bcos import tokenizer as text


def _celeba_record_caption(row) -> str:
  """The caption a CelebA training record carries (through the TFDS record converter)."""
  example = {'image': None,
             'attributes': {n: bool(v) for n, v in zip(sources.CELEBA_ATTRIBUTES, row)}}
  return sources.CelebAConvert()(example, 0)['caption']


def _random_celeba_rows(num: int, seed: int = 0) -> np.ndarray:
  """(num, 40) 0/1 rows, each with its own density, so sparse and dense rows both occur."""
  rng = np.random.default_rng(seed)
  density = rng.uniform(0.0, 1.0, (num, 1))
  return (rng.random((num, len(sources.CELEBA_ATTRIBUTES))) < density).astype(np.int32)


@pytest.mark.parametrize('attribute_names', [None, sources.CELEBA_ATTRIBUTES])
def test_celeba_training_captions_have_no_unknown_words(attribute_names):
  # None: how BcosTask builds it (no need to open the dataset); names: from DatasetInfo.
  tok = text.tokenizer_for('celeb_a', attribute_names=attribute_names)
  vocabulary = set(tok.vocabulary)
  unknown = {}
  for row in _random_celeba_rows(2000):
    caption = _celeba_record_caption(row)
    for w in text.words(caption):
      if w not in vocabulary:
        unknown.setdefault(w, caption)
  assert unknown == {}, f'training caption words outside the vocabulary: {unknown}'


def test_bald_caption_is_all_vocabulary():
  tok = text.tokenizer_for('celeb_a')
  row = np.zeros(len(sources.CELEBA_ATTRIBUTES), np.int32)
  for name in ('Bald', 'Male', 'No_Beard'):
    row[sources.CELEBA_ATTRIBUTES.index(name)] = 1
  caption = _celeba_record_caption(row)
  assert caption == 'a bald man'
  ids = tok.encode(caption)
  assert text.UNK_ID not in ids and tok.decode(ids) == caption
  assert tok.word_id('bald') > text.UNK_ID


def test_celeba_captions_of_a_subset_of_attributes():
  # Datasets with some of CelebA's attributes (any order): their vocabulary covers their captions.
  names = ['Male', 'Smiling', 'Young', 'Blond_Hair', 'Wavy_Hair', 'Eyeglasses', 'No_Beard',
           'Wearing_Lipstick', 'Bangs', 'Wearing_Hat']
  tok = text.tokenizer_for('celeb_a', attribute_names=names)
  rng = np.random.default_rng(0)
  for row in rng.integers(0, 2, (200, len(names))):
    caption = captions.celeba_caption(row, names)
    assert text.UNK_ID not in tok.encode(caption), caption
  assert (captions.celeba_caption([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], names)
          == 'a smiling young woman with blond wavy hair, bangs and eyeglasses, wearing lipstick')
  assert captions.celeba_caption([1] + [0] * 9, names) == 'a man with a beard'
  assert captions.celeba_caption([1, 1], ['Smiling', 'Big_Nose']) == 'a smiling person with a big nose'


def test_every_celeba_attribute_reaches_the_caption():
  # The builder's phrase tables cover exactly CelebA's 40 attributes: each one changes the caption.
  assert set(captions.CELEBA_PHRASE_NAMES) == set(sources.CELEBA_ATTRIBUTES)
  base = np.zeros(len(sources.CELEBA_ATTRIBUTES), np.int32)
  plain = _celeba_record_caption(base)
  for i, name in enumerate(sources.CELEBA_ATTRIBUTES):
    row = base.copy()
    row[i] = 1
    assert _celeba_record_caption(row) != plain, name


def test_celeba_caption_paths_agree():
  # Records carry the caption; batches without one get it from their labels: same text.
  rows = _random_celeba_rows(200, seed=1)
  from_labels = captions.captions_for('celeb_a', rows, sources.CELEBA_ATTRIBUTES)
  assert from_labels == [_celeba_record_caption(r) for r in rows]


def test_celeba_vocabulary_is_exactly_what_the_builder_emits():
  # No word the builder never writes (e.g. a prefix dropped from the captions).
  rows = np.concatenate([_random_celeba_rows(2000, seed=2),
                         np.eye(40, dtype=np.int32), 1 - np.eye(40, dtype=np.int32)])
  emitted = {w for r in rows for w in text.words(_celeba_record_caption(r))}
  assert set(captions.celeba_vocabulary()) == emitted


def test_shapes_captions_have_no_unknown_words_and_nothing_else():
  tok = text.tokenizer_for('patronus_shapes')
  combos = list(itertools.product(*[range(len(v)) for v in shapes.FACTOR_VALUES]))
  assert len(combos) == np.prod([len(v) for v in shapes.FACTOR_VALUES])
  emitted = set()
  for labels in combos:
    caption = shapes.caption(labels)
    ids = tok.encode(caption)
    assert text.UNK_ID not in ids and tok.decode(ids) == caption, caption
    emitted.update(text.words(caption))
  assert set(tok.vocabulary[2:]) == emitted
