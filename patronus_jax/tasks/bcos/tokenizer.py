"""A small word-level tokenizer and captions built from attribute labels.

The B-cos diffusion poster conditions on learned token embeddings instead of a CLIP text
encoder (and finds that slightly better). A caption such as "a large red striped circle in
the top left on a dark background" becomes one id per word; each id looks up a learned
vector that enters the B-cos U-Net as an input token, so every word gets an exact
contribution to the generation.

Text is normalised by lower-casing and splitting on anything that is not a letter, a digit
or an apostrophe ("top-left" -> "top", "left"). Id 0 is padding, id 1 stands for any word
outside the vocabulary. Optionally every text starts with a start token <s> (id 2), as CLIP's
does: one input present in every prompt and never dropped, which the bias-free B-cos network
can use for what would otherwise be a bias, instead of leaning on words that every prompt
happens to contain ("a", "on"); its relevance is reported like any token's (on shapes it did
not lower the function words' share, README). Vocabularies are built deterministically: for
the shapes dataset and CelebA from every word their caption builders can emit (so no pass over
the data is needed and the ids never change), otherwise from a list of training captions.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from typing import Iterable, Optional, Sequence

import numpy as np
from patronus_jax.core import files as pio
from patronus_jax.data import shapes

PAD = '<pad>'
UNK = '<unk>'
START = '<s>'
PAD_ID = 0
UNK_ID = 1
START_ID = 2  # only with start_token=True
_WORD = re.compile(r"[a-z0-9']+")

# Words that carry grammar rather than content in the captions of this project; used to
# group relevance scores (content vs function words), never to drop anything.
FUNCTION_WORDS = frozenset((
    'a', 'an', 'the', 'on', 'in', 'of', 'with', 'and', 'or', 'to', 'at', 'by', 'for', 'is',
    'photo', 'wearing',
))


def words(text: str) -> list[str]:
  """Normalised words of a text: lower case, split on everything but [a-z0-9']."""
  return _WORD.findall(str(text).lower())


def normalize(text: str) -> str:
  return ' '.join(words(text))


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


# ----------------------------------------------------------------------------- captions

def shapes_captions() -> list[str]:
  """Every caption the shapes dataset can produce (one per combination of factors)."""
  combos = itertools.product(*[range(len(v)) for v in shapes.FACTOR_VALUES])
  return [shapes.caption(labels) for labels in combos]


# CelebA: attribute name -> (phrase when set, phrase when not set); '' adds nothing.
# Phrases are grouped by where they go in "a photo of a {adjectives} {subject} with {features},
# wearing {items}".
_CELEBA_SUBJECT = ('Male', 'man', 'woman')
_CELEBA_ADJECTIVES = {
    'Smiling': 'smiling', 'Young': 'young', 'Attractive': 'attractive', 'Chubby': 'chubby',
    'Bald': 'bald', 'Pale_Skin': 'pale', 'Blurry': 'blurry',
}
_CELEBA_HAIR_COLOUR = {'Black_Hair': 'black', 'Blond_Hair': 'blond', 'Brown_Hair': 'brown',
                       'Gray_Hair': 'gray'}
_CELEBA_HAIR_STYLE = {'Straight_Hair': 'straight', 'Wavy_Hair': 'wavy'}
_CELEBA_FEATURES = {
    '5_o_Clock_Shadow': 'stubble', 'Arched_Eyebrows': 'arched eyebrows',
    'Bags_Under_Eyes': 'bags under the eyes', 'Bangs': 'bangs', 'Big_Lips': 'big lips',
    'Big_Nose': 'a big nose', 'Bushy_Eyebrows': 'bushy eyebrows', 'Double_Chin': 'a double chin',
    'Eyeglasses': 'eyeglasses', 'Goatee': 'a goatee', 'High_Cheekbones': 'high cheekbones',
    'Mouth_Slightly_Open': 'an open mouth', 'Mustache': 'a mustache', 'Narrow_Eyes': 'narrow eyes',
    'Oval_Face': 'an oval face', 'Pointy_Nose': 'a pointy nose',
    'Receding_Hairline': 'a receding hairline', 'Rosy_Cheeks': 'rosy cheeks',
    'Sideburns': 'sideburns', 'Heavy_Makeup': 'heavy makeup',
}
_CELEBA_NOT_FEATURES = {'No_Beard': 'a beard'}  # phrase when the attribute is NOT set
_CELEBA_WEARING = {
    'Wearing_Earrings': 'earrings', 'Wearing_Hat': 'a hat', 'Wearing_Lipstick': 'lipstick',
    'Wearing_Necklace': 'a necklace', 'Wearing_Necktie': 'a necktie',
}
_CELEBA_KNOWN = ({_CELEBA_SUBJECT[0]} | set(_CELEBA_ADJECTIVES) | set(_CELEBA_HAIR_COLOUR)
                 | set(_CELEBA_HAIR_STYLE) | set(_CELEBA_FEATURES) | set(_CELEBA_NOT_FEATURES)
                 | set(_CELEBA_WEARING))


def _join(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def celeba_caption(attributes: Sequence[int], names: Sequence[str]) -> str:
  """'a photo of a smiling young woman with blond wavy hair and bangs, wearing lipstick'.

  `attributes` are 0/1 (or -1/1) per name in CelebA's 40 binary attributes; names that the
  phrase table does not know are added as "with <name in words>" when set.
  """
  on = {n for n, v in zip(names, attributes) if int(v) > 0}
  adjectives = [p for n, p in _CELEBA_ADJECTIVES.items() if n in on]
  subject = _CELEBA_SUBJECT[1] if _CELEBA_SUBJECT[0] in on else _CELEBA_SUBJECT[2]
  if _CELEBA_SUBJECT[0] not in names:
    subject = 'person'
  features = []
  hair = [p for n, p in _CELEBA_HAIR_COLOUR.items() if n in on][:1]
  hair += [p for n, p in _CELEBA_HAIR_STYLE.items() if n in on][:1]
  if hair:
    features.append(' '.join(hair) + ' hair')
  features += [p for n, p in _CELEBA_FEATURES.items() if n in on]
  features += [p for n, p in _CELEBA_NOT_FEATURES.items() if n in names and n not in on]
  features += [' '.join(words(n)) for n in names if n in on and n not in _CELEBA_KNOWN]
  wearing = [p for n, p in _CELEBA_WEARING.items() if n in on]
  text = 'a photo of a ' + ' '.join(adjectives + [subject])
  if features:
    text += ' with ' + _join(features)
  if wearing:
    text += (', ' if features else ' ') + 'wearing ' + _join(wearing)
  return text


def celeba_vocabulary(names: Optional[Sequence[str]] = None) -> list[str]:
  """Every word `celeba_caption` can emit (for the given attribute names), sorted."""
  phrases = ['a photo of a with and wearing hair person', *_CELEBA_SUBJECT[1:],
             *_CELEBA_ADJECTIVES.values(), *_CELEBA_HAIR_COLOUR.values(),
             *_CELEBA_HAIR_STYLE.values(), *_CELEBA_FEATURES.values(),
             *_CELEBA_NOT_FEATURES.values(), *_CELEBA_WEARING.values()]
  phrases += [n for n in (names or ()) if n not in _CELEBA_KNOWN]
  return sorted({w for p in phrases for w in words(p)})


def attribute_caption(attributes: Sequence[int], names: Sequence[str],
                      values: Optional[Sequence[Sequence[str]]] = None) -> str:
  """A generic caption from categorical labels: 'name value, name value, ...'."""
  parts = []
  for i, (n, v) in enumerate(zip(names, attributes)):
    value = values[i][int(v)] if values is not None and values[i] else str(int(v))
    parts.append(f'{n} {value}')
  return ' '.join(words(', '.join(parts)))


def captions_for(dataset: str, attributes: np.ndarray, names: Sequence[str],
                 values: Optional[Sequence[Sequence[str]]] = None) -> list[str]:
  """Captions of a batch built from its labels (datasets without captions of their own)."""
  attributes = np.asarray(attributes)
  if dataset == 'celeb_a':
    return [celeba_caption(row, names) for row in attributes]
  if dataset == 'patronus_shapes':
    return [shapes.caption(row) for row in attributes]
  return [attribute_caption(row, names, values) for row in attributes]


def tokenizer_for(dataset: str, captions: Optional[Iterable[str]] = None,
                  attribute_names: Optional[Sequence[str]] = None,
                  max_size: int = 0, start_token: bool = False) -> Tokenizer:
  """The tokenizer of a dataset: fixed vocabularies for shapes and CelebA, else from captions."""
  if dataset == 'patronus_shapes':
    return Tokenizer.from_texts(shapes_captions(), start_token=start_token)
  if dataset == 'celeb_a':
    return Tokenizer(celeba_vocabulary(attribute_names), start_token)
  if captions is None:
    raise ValueError(f'tokenizer_for({dataset!r}) needs training captions to build a vocabulary')
  return Tokenizer.from_texts(captions, max_size=max_size, start_token=start_token)
