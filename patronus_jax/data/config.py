"""Defaults and checks of `config.data` (owned by the data layer).

Every field has a non-None default of the type it must keep (the project-wide check in
`patronus_jax.config.check_fields` compares types against these defaults): '' means "not
set" for strings, 0 / -1 for numbers where documented.

`validate_data_config` only looks at values (no file system, no TFDS): whether a dataset is
actually present is checked when it is opened (`patronus_jax.data.get_info`).
"""

from __future__ import annotations

import re

import ml_collections

from patronus_jax.core.config import fail
from patronus_jax.data import shapes

# Datasets the data layer knows. TFDS datasets are read through `tfds.data_source`
# (ArrayRecord); 'ffhq', 'chexpert' and 'folder' are image folders with an optional CSV.
TFDS_DATASETS = ('patronus_shapes', 'celeb_a', 'cifar10', 'fashion_mnist', 'mnist')
FOLDER_DATASETS = ('ffhq', 'chexpert', 'folder')
DATASETS = TFDS_DATASETS + FOLDER_DATASETS


def data_config() -> ml_collections.ConfigDict:
  """All `config.data` fields with their defaults (the quickstart: shapes at 32x32)."""
  return ml_collections.ConfigDict(dict(
      name='patronus_shapes',  # one of DATASETS
      data_dir='',  # TFDS data directory; '' = TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)
      image_size=32,  # square side after preprocessing
      channels=3,  # 3 = RGB, 1 = grayscale (converted when the source differs)
      crop='none',  # 'none': resize the whole image to a square (paper); 'center': centre square crop first
      train_split='train',  # TFDS split names (slicing such as 'train[:90%]' allowed)
      eval_split='test',
      strict=False,  # image folders: corrupt files are an error instead of being skipped
      num_workers=0,  # grain worker processes; 0 = read in the main process
      worker_buffer_size=2,  # elements prefetched per worker process
      read_threads=4,  # threads reading and preprocessing inside each process
      prefetch_buffer_size=64,  # elements prefetched by the reading threads
      # Plant a correlation by selecting examples (see patronus_jax/data/bias.py).
      bias=ml_collections.ConfigDict(dict(
          enabled=False,
          # Attribute A. Several binary attributes joined by '|' form one categorical
          # attribute whose value is the one that is set, e.g. 'Blond_Hair|Brown_Hair|Black_Hair';
          # examples with none or several of them set are out of scope.
          attribute='',
          target='',  # attribute B
          # 'a_value:b_value' pairs, comma separated: which value of B each value of A is tied
          # to, e.g. 'Blond_Hair:yes,Brown_Hair:yes,Black_Hair:no'. Values by name or index.
          mapping='',
          # Fraction of the kept in-scope examples where B equals mapping[A] (per value of A).
          strength=0.9,
          out_of_scope='drop',  # examples whose A value is not in `mapping`: 'drop' or 'keep'
          apply_to_eval=False,  # bias the eval split as well (default: train split only)
          seed=0,  # which examples are dropped
      )),
      # The built-in shapes dataset (patronus_jax/data/shapes.py); these values name the
      # TFDS builder config, so a change prepares a new dataset beside the old one.
      shapes=ml_collections.ConfigDict(dict(
          resolution=0,  # rendered side in pixels; 0 = data.image_size
          num_train=20_000,
          num_test=2_000,
          seed=0,
          # A colour -> shape correlation planted at generation: P(shape = mapping[colour]);
          # -1 = factors independent.
          planted_strength=-1.0,
          planted_mapping='red:circle,green:square,blue:triangle,yellow:circle',
      )),
      # Image folders (ffhq, chexpert, folder).
      folder=ml_collections.ConfigDict(dict(
          path='',  # root directory; image paths are relative to it
          labels_csv='',  # CSV of the train split: a path column + label columns; '' = all images, no labels
          eval_labels_csv='',  # CSV of the eval split (e.g. CheXpert valid.csv); '' = hold out eval_fraction
          path_column='',  # '' = the first column
          label_columns='',  # comma separated; '' = every column but the path/caption columns
          caption_column='',  # a column holding a caption per image; '' = none
          eval_fraction=0.05,  # held out (seeded) when no eval CSV is given
          split_seed=0,
          extensions='.png,.jpg,.jpeg,.bmp,.webp',
          verify=True,  # check every file's header (and PNG checksums) when the folder is indexed
          check_size=0,  # >0: every image must be check_size x check_size pixels
          check_channels=0,  # >0: every image must have this many channels (1 or 3)
      )),
  ))


_MAPPING_ITEM = re.compile(r'^[^:,|]+:[^:,|]+$')


def parse_mapping(text: str) -> list[tuple[str, str]]:
  """'a:b,c:d' -> [('a', 'b'), ('c', 'd')] (whitespace around items ignored)."""
  items = [item.strip() for item in text.split(',') if item.strip()]
  pairs = []
  for item in items:
    if not _MAPPING_ITEM.match(item):
      raise ValueError(item)
    a, b = item.split(':')
    pairs.append((a.strip(), b.strip()))
  return pairs


def validate_data_config(data) -> None:
  """Raises ConfigError (naming the dotted field) for impossible values. No I/O."""
  if data.name not in DATASETS:
    fail('data.name', f'must be one of {DATASETS}, got {data.name!r}')
  if data.image_size <= 0:
    fail('data.image_size', f'must be positive, got {data.image_size}')
  if data.channels not in (1, 3):
    fail('data.channels', f'must be 1 (grayscale) or 3 (RGB), got {data.channels}')
  if data.crop not in ('none', 'center'):
    fail('data.crop', f"must be one of ('none', 'center'), got {data.crop!r}")
  for field in ('train_split', 'eval_split'):
    if not data[field]:
      fail(f'data.{field}', 'must name a split, got an empty string')
  for field in ('num_workers',):
    if data[field] < 0:
      fail(f'data.{field}', f'must be >= 0, got {data[field]}')
  for field in ('worker_buffer_size', 'read_threads', 'prefetch_buffer_size'):
    if data[field] < 1:
      fail(f'data.{field}', f'must be >= 1, got {data[field]}')
  _validate_bias(data.bias)
  _validate_shapes(data)
  _validate_folder(data)


def planted_bias(data) -> bool:
  """Whether the data config plants a correlation (data.bias selection or the shapes generator's)."""
  return bool(data.bias.enabled) or float(data.shapes.planted_strength) >= 0.0


def without_planted_bias(data):
  """A copy of the data config with the planted correlation off: the same source, factors independent."""
  data = data.copy_and_resolve_references()
  data.bias.enabled = False
  data.shapes.planted_strength = -1.0
  return data


def _validate_bias(b) -> None:
  if b.enabled:
    if not b.attribute:
      fail('data.bias.attribute', "must name attribute A when 'data.bias.enabled' is set")
    if not b.target:
      fail('data.bias.target', "must name attribute B when 'data.bias.enabled' is set")
    if b.target in b.attribute.split('|'):
      fail('data.bias.target', f'must differ from data.bias.attribute, both name {b.target!r}')
    try:
      pairs = parse_mapping(b.mapping)
    except ValueError as e:
      fail('data.bias.mapping', f"must be 'a_value:b_value' pairs separated by commas, "
            f'got {b.mapping!r} (bad item {e.args[0]!r})')
    if not pairs:
      fail('data.bias.mapping', "must give at least one 'a_value:b_value' pair when the bias is enabled")
    keys = [a for a, _ in pairs]
    if len(set(keys)) != len(keys):
      fail('data.bias.mapping', f'maps a value of A twice: {b.mapping!r}')
  if not 0.0 <= b.strength <= 1.0:
    fail('data.bias.strength', f'must be in [0, 1], got {b.strength}')
  if b.out_of_scope not in ('drop', 'keep'):
    fail('data.bias.out_of_scope', f"must be one of ('drop', 'keep'), got {b.out_of_scope!r}")


def _validate_shapes(data) -> None:
  s = data.shapes
  if s.resolution < 0 or (0 < s.resolution < 16):
    fail('data.shapes.resolution', f'must be 0 (= data.image_size) or >= 16, got {s.resolution}')
  if data.name == 'patronus_shapes' and s.resolution == 0 and data.image_size < 16:
    fail('data.image_size', f'must be >= 16 for the shapes dataset (or set data.shapes.resolution), '
          f'got {data.image_size}')
  if s.num_train < 1:
    fail('data.shapes.num_train', f'must be >= 1, got {s.num_train}')
  if s.num_test < 0:
    fail('data.shapes.num_test', f'must be >= 0, got {s.num_test}')
  if s.seed < 0:
    fail('data.shapes.seed', f'must be >= 0, got {s.seed}')
  if s.planted_strength != -1.0 and not 0.0 <= s.planted_strength <= 1.0:
    fail('data.shapes.planted_strength', f'must be -1 (off) or in [0, 1], got {s.planted_strength}')
  if s.planted_strength != -1.0:
    try:
      shapes.planted_shape_of_color(s.planted_mapping)
    except ValueError as e:
      fail('data.shapes.planted_mapping', str(e))


def _validate_folder(data) -> None:
  f = data.folder
  if data.name in FOLDER_DATASETS and not f.path:
    fail('data.folder.path', f"must name the image directory for data.name={data.name!r}")
  if not 0.0 <= f.eval_fraction < 1.0:
    fail('data.folder.eval_fraction', f'must be in [0, 1), got {f.eval_fraction}')
  if f.check_size < 0:
    fail('data.folder.check_size', f'must be 0 (any) or a positive size, got {f.check_size}')
  if f.check_channels not in (0, 1, 3):
    fail('data.folder.check_channels', f'must be 0 (any), 1 or 3, got {f.check_channels}')
  if not [e for e in f.extensions.split(',') if e.strip()]:
    fail('data.folder.extensions', 'must list at least one file extension')
