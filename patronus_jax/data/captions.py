"""Captions built from attribute labels (one builder per dataset) and the words each can emit.

The training records carry these captions (CelebA's through `sources.CelebAConvert`, the shapes
dataset's `shapes.caption` through its TFDS builder), batches without one get theirs from
`captions_for`, and the B-cos tokenizer's fixed vocabularies are the words these same builders
emit, so no caption word of CelebA or the shapes dataset is ever <unk>.

Text is normalised by `words`: lower case, split on anything that is not a letter, a digit or
an apostrophe ("top-left" -> "top", "left").
"""

from __future__ import annotations

import itertools
import re
from typing import Optional, Sequence

import numpy as np

from patronus_jax.data import shapes

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
  """Normalised words of a text: lower case, split on everything but [a-z0-9']."""
  return _WORD.findall(str(text).lower())


def join(items: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


# ----------------------------------------------------------------------------- shapes

def shapes_captions() -> list[str]:
  """Every caption the shapes dataset can produce (one per combination of factors)."""
  combos = itertools.product(*[range(len(v)) for v in shapes.FACTOR_VALUES])
  return [shapes.caption(labels) for labels in combos]


# ----------------------------------------------------------------------------- CelebA

# Attribute name -> phrase, grouped by where it goes in
# "a {adjectives} {subject} with {features}, wearing {items}".
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
# The attribute names the phrase tables know (CelebA's 40).
CELEBA_PHRASE_NAMES = ((_CELEBA_SUBJECT[0],) + tuple(_CELEBA_ADJECTIVES) + tuple(_CELEBA_HAIR_COLOUR)
                       + tuple(_CELEBA_HAIR_STYLE) + tuple(_CELEBA_FEATURES)
                       + tuple(_CELEBA_NOT_FEATURES) + tuple(_CELEBA_WEARING))


def _celeba_features(on: set, names: Sequence[str]) -> list[str]:
  """The "with ..." phrases: hair (first colour, first style), features, unknown names."""
  features = []
  hair = [p for n, p in _CELEBA_HAIR_COLOUR.items() if n in on][:1]
  hair += [p for n, p in _CELEBA_HAIR_STYLE.items() if n in on][:1]
  if hair:
    features.append(' '.join(hair) + ' hair')
  features += [p for n, p in _CELEBA_FEATURES.items() if n in on]
  features += [p for n, p in _CELEBA_NOT_FEATURES.items() if n in names and n not in on]
  features += [' '.join(words(n)) for n in names if n in on and n not in CELEBA_PHRASE_NAMES]
  return features


def celeba_caption(attributes: Sequence[int], names: Sequence[str]) -> str:
  """'a smiling young woman with blond wavy hair, bangs and eyeglasses, wearing lipstick'.

  `attributes` are 0/1 (or -1/1) per name in CelebA's 40 binary attributes (any subset, in any
  order); names that the phrase tables do not know are added as "with <name in words>" when set.
  """
  on = {n for n, v in zip(names, attributes) if int(v) > 0}
  adjectives = [p for n, p in _CELEBA_ADJECTIVES.items() if n in on]
  if _CELEBA_SUBJECT[0] not in names:
    subject = 'person'
  else:
    subject = _CELEBA_SUBJECT[1] if _CELEBA_SUBJECT[0] in on else _CELEBA_SUBJECT[2]
  features = _celeba_features(on, names)
  wearing = [p for n, p in _CELEBA_WEARING.items() if n in on]
  text = 'a ' + ' '.join(adjectives + [subject])
  if features:
    text += ' with ' + join(features)
  if wearing:
    text += (', ' if features else ' ') + 'wearing ' + join(wearing)
  return text


def celeba_vocabulary(names: Optional[Sequence[str]] = None) -> list[str]:
  """Every word `celeba_caption` can emit for the attribute names (default CelebA's 40), sorted.

  Read off the builder itself, from the captions of: nothing set, everything set, each name
  alone set and each name alone unset. Every phrase appears in one of them (each is tied to one
  attribute being set, or for No_Beard unset), and so do the joining words.
  """
  names = tuple(CELEBA_PHRASE_NAMES if names is None else names)
  eye = np.eye(len(names), dtype=np.int32)
  rows = np.concatenate([np.zeros((1, len(names)), np.int32), np.ones((1, len(names)), np.int32),
                         eye, 1 - eye])
  return sorted({w for row in rows for w in words(celeba_caption(row, names))})


# ----------------------------------------------------------------------------- any dataset

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
  """Captions of a batch built from its labels (for batches that carry none of their own)."""
  attributes = np.asarray(attributes)
  if dataset == 'celeb_a':
    return [celeba_caption(row, names) for row in attributes]
  if dataset == 'patronus_shapes':
    return [shapes.caption(row) for row in attributes]
  return [attribute_caption(row, names, values) for row in attributes]
