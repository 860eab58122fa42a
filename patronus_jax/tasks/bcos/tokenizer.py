"""A small word-level tokenizer with fixed vocabularies for the datasets whose captions we build.

The B-cos diffusion poster conditions on learned token embeddings instead of a CLIP text
encoder (and finds that slightly better). A caption such as "a large red striped circle in
the top left on a dark background" becomes one id per word; each id looks up a learned
vector that enters the B-cos U-Net as an input token, so every word gets an exact
contribution to the generation.

Text is normalised by `data.captions.words`: lower-casing and splitting on anything that is not
a letter, a digit or an apostrophe ("top-left" -> "top", "left"). Id 0 is padding, id 1 stands for any word
outside the vocabulary. Optionally every text starts with a start token <s> (id 2), as CLIP's
does: one input present in every prompt and never dropped, which the bias-free B-cos network
can use for what would otherwise be a bias, instead of leaning on words that every prompt
happens to contain ("a", "on"); its relevance is reported like any token's (on shapes it did
not lower the function words' share, README). Vocabularies are built deterministically: for
the shapes dataset and CelebA from every word their caption builders (`data/captions.py`, the
same ones the training records use) can emit (so no pass over the data is needed and the ids
never change), otherwise from a list of training captions.
"""

from __future__ import annotations

import collections
import json
from typing import Iterable, Optional, Sequence

import numpy as np

from patronus_jax.core import files as pio
from patronus_jax.data import captions as captions_lib
from patronus_jax.data.captions import words

PAD = '<pad>'
UNK = '<unk>'
START = '<s>'
PAD_ID = 0
UNK_ID = 1
START_ID = 2  # only with start_token=True

# Words that carry grammar rather than content in the captions of this project; used to
# group relevance scores (content vs function words), never to drop anything.
FUNCTION_WORDS = frozenset((
    'a', 'an', 'the', 'on', 'in', 'of', 'with', 'and', 'or', 'to', 'at', 'by', 'for', 'is',
    'photo', 'wearing',
))


class Tokenizer:
  """Word -> id map with <pad> = 0, <unk> = 1 and, with `start_token`, <s> = 2 before every text."""

  def __init__(self, vocabulary: Sequence[str], start_token: bool = False):
    vocabulary = [w for w in vocabulary if w not in (PAD, UNK, START)]
    if len(set(vocabulary)) != len(vocabulary):
      raise ValueError('Tokenizer: the vocabulary has repeated words')
    bad = [w for w in vocabulary if words(w) != [w]]
    if bad:
      raise ValueError(f'Tokenizer: vocabulary entries that are not single normalised words: {bad[:5]}')
    self.start_token = bool(start_token)
    self.vocabulary: tuple[str, ...] = (PAD, UNK) + ((START,) if start_token else ()) + tuple(vocabulary)
    self._ids = {w: i for i, w in enumerate(self.vocabulary)}

  @classmethod
  def from_texts(cls, texts: Iterable[str], min_count: int = 1, max_size: int = 0,
                 start_token: bool = False) -> 'Tokenizer':
    """Vocabulary of the words seen at least `min_count` times, most frequent first
    (ties alphabetical); at most `max_size` words (0: no limit)."""
    counts = collections.Counter(w for t in texts for w in words(t))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return cls(ranked[:max_size] if max_size > 0 else ranked, start_token)

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def word_id(self, word: str) -> int:
    return self._ids.get(word, UNK_ID)

  @property
  def start_id(self) -> Optional[int]:
    return START_ID if self.start_token else None

  def encode(self, text: str) -> list[int]:
    return [START_ID] * self.start_token + [self.word_id(w) for w in words(text)]

  def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (N, max_length), mask bool (N, max_length)); longer texts are truncated."""
    ids = np.zeros((len(texts), max_length), np.int32)
    for i, text in enumerate(texts):
      row = self.encode(text)[:max_length]
      ids[i, :len(row)] = row
    return ids, ids != PAD_ID

  def decode(self, ids: Iterable[int]) -> str:
    return ' '.join(self.tokens(ids))

  def tokens(self, ids: Iterable[int]) -> list[str]:
    """The word of every non-padding id (<unk> for unknown words)."""
    return [self.vocabulary[int(i)] for i in ids if int(i) != PAD_ID]

  def to_dict(self) -> dict:
    return {'vocabulary': list(self.vocabulary[2 + self.start_token:]), 'start_token': self.start_token}

  @classmethod
  def from_dict(cls, d: dict) -> 'Tokenizer':
    return cls(d['vocabulary'], bool(d.get('start_token', False)))  # files from before: no <s>

  def save(self, path: str) -> None:
    pio.write_json(path, self.to_dict())

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def __eq__(self, other) -> bool:
    return isinstance(other, Tokenizer) and self.vocabulary == other.vocabulary

  def __repr__(self) -> str:
    return f'Tokenizer(vocab_size={self.vocab_size}, start_token={self.start_token})'


def tokenizer_for(dataset: str, captions: Optional[Iterable[str]] = None,
                  attribute_names: Optional[Sequence[str]] = None,
                  max_size: int = 0, start_token: bool = False) -> Tokenizer:
  """The tokenizer of a dataset: for shapes and CelebA the fixed vocabulary of every word their
  caption builders (data/captions.py) can emit, else the words of the training captions."""
  if dataset == 'patronus_shapes':
    return Tokenizer.from_texts(captions_lib.shapes_captions(), start_token=start_token)
  if dataset == 'celeb_a':
    return Tokenizer(captions_lib.celeba_vocabulary(attribute_names), start_token)
  if captions is None:
    raise ValueError(f'tokenizer_for({dataset!r}) needs training captions to build a vocabulary')
  return Tokenizer.from_texts(captions, max_size=max_size, start_token=start_token)
