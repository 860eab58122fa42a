"""Random-access record sources for every dataset, and what to say when data is missing.

A source is what `grain.MapDataset.source` reads: `len(source)` and `source[i]` -> a record
`{'image': uint8 array (TFDS) or file path (folders), 'attributes': int32 (A,),
'caption': str, 'index': int}`. `index` is the example's position in its split as stored
(TFDS record number, or row of the folder's split), also after bias selection, so every
example can be traced back. Records are decoded and resized later (`preprocess.py`).

TFDS datasets (patronus_shapes, celeb_a, cifar10, fashion_mnist, mnist) are read with
`tfds.data_source`, i.e. ArrayRecord files with random access, which is what grain needs for
global shuffling, sharding and exact resumption. Nothing is downloaded implicitly: a missing
dataset raises `DataError` explaining how to prepare it; only the shapes dataset, being
procedural, is prepared on the spot.

Image folders (ffhq, chexpert, folder) are indexed once per process: listed (or read from a
labels CSV), every file's header opened (and PNG checksums verified), corrupt files skipped
with a count or rejected under `strict`, files of the wrong size/channels rejected outright.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import threading
from typing import Any, Sequence

from absl import logging
import numpy as np
from PIL import Image

from patronus_jax.data import bias as bias_lib
from patronus_jax.data import captions as captions_lib
from patronus_jax.data import shapes
from patronus_jax.data import shapes_builder
from patronus_jax.data.errors import DataError
from patronus_jax.data.tfds_compat import tfds
from patronus_jax.data.config import validate_data_config

CELEBA_ATTRIBUTES = (
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs',
    'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair',
    'Bushy_Eyebrows', 'Chubby', 'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair',
    'Heavy_Makeup', 'High_Cheekbones', 'Male', 'Mouth_Slightly_Open', 'Mustache',
    'Narrow_Eyes', 'No_Beard', 'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline',
    'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair', 'Wavy_Hair', 'Wearing_Earrings',
    'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace', 'Wearing_Necktie', 'Young')
BINARY = ('no', 'yes')
CHEXPERT_OBSERVATIONS = (
    'No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion',
    'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
    'Pleural Other', 'Fracture', 'Support Devices')


def _text(value: Any) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return value.decode('utf-8')
  return str(value)


# ----------------------------------------------------------------------------- TFDS records


@dataclasses.dataclass(frozen=True)
class ShapesConvert:
  """patronus_shapes example -> record."""

  def attributes(self, example: dict) -> np.ndarray:
    return np.asarray([int(example[n]) for n in shapes.FACTOR_NAMES], np.int32)

  def __call__(self, example: dict, index: int) -> dict:
    return dict(image=example['image'], attributes=self.attributes(example),
                caption=_text(example['caption']), index=index)


@dataclasses.dataclass(frozen=True)
class CelebAConvert:
  """celeb_a example -> record: the 40 binary attributes and a caption built from them."""

  def attributes(self, example: dict) -> np.ndarray:
    attrs = example['attributes']
    return np.asarray([int(bool(attrs[n])) for n in CELEBA_ATTRIBUTES], np.int32)

  def __call__(self, example: dict, index: int) -> dict:
    attributes = self.attributes(example)
    return dict(image=example['image'], attributes=attributes,
                caption=captions_lib.celeba_caption(attributes, CELEBA_ATTRIBUTES), index=index)


@dataclasses.dataclass(frozen=True)
class LabelConvert:
  """Classification example -> record: the class as the one attribute, a class-name caption."""

  class_names: tuple[str, ...]
  template: str  # e.g. 'a photo of a {}'

  def attributes(self, example: dict) -> np.ndarray:
    return np.asarray([int(example['label'])], np.int32)

  def __call__(self, example: dict, index: int) -> dict:
    label = int(example['label'])
    return dict(image=example['image'], attributes=np.asarray([label], np.int32),
                caption=self.template.format(self.class_names[label]), index=index)


class TfdsRecords:
  """A TFDS data source (optionally a subset of its records) as a grain source of records."""

  def __init__(self, source, convert, indices: np.ndarray | None = None):
    self._source = source
    self._convert = convert
    self._indices = None if indices is None else np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def _record_index(self, i: int) -> int:
    return int(i) if self._indices is None else int(self._indices[i])

  def __getitem__(self, i: int) -> dict:
    j = self._record_index(i)
    return self._convert(self._source[j], j)

  def subset(self, indices: np.ndarray) -> 'TfdsRecords':
    """The records at `indices` (positions in this source); `index` stays the original one."""
    base = np.arange(len(self)) if self._indices is None else self._indices
    return TfdsRecords(self._source, self._convert, base[np.asarray(indices, np.int64)])


# ----------------------------------------------------------------------------- TFDS datasets

_CIFAR10 = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
            'truck')
_FASHION = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker',
            'bag', 'ankle boot')

_DOWNLOAD_AND_BUILD = (
    'Prepare it once (it needs internet access) in ArrayRecord format, which random access '
    'through tfds.data_source/grain requires:\n'
    '  tfds build {name} --data_dir={dir} --file_format=array_record\n'
    'or in Python: tfds.builder("{name}", data_dir="{dir}").download_and_prepare('
    'file_format="array_record"). Then keep config.data.data_dir={dir!r}.')

_CELEBA_HOWTO = (
    'TFDS downloads CelebA from Google Drive, which often refuses with a quota error. If it does, '
    'download the files yourself from the CelebA page (https://mmlab.ie.cuhk.edu.hk/projects/'
    'CelebA.html, Google Drive folders "Img", "Anno" and "Eval"): img_align_celeba.zip, '
    'list_attr_celeba.txt, list_eval_partition.txt, list_landmarks_align_celeba.txt and '
    'identity_CelebA.txt, and put them, with exactly these names, into {dir}/downloads/manual/ '
    '(TFDS checks their checksums and uses them instead of downloading). Then run:\n'
    '  tfds build celeb_a --data_dir={dir} --file_format=array_record\n'
    'Then keep config.data.data_dir={dir!r}.')


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  convert: Any
  attribute_names: tuple[str, ...]
  attribute_values: tuple[tuple[str, ...], ...]
  howto: str


def tfds_spec(name: str) -> TfdsSpec:
  if name == 'patronus_shapes':
    return TfdsSpec(ShapesConvert(), shapes.FACTOR_NAMES, shapes.FACTOR_VALUES, '')
  if name == 'celeb_a':
    return TfdsSpec(CelebAConvert(), CELEBA_ATTRIBUTES, (BINARY,) * len(CELEBA_ATTRIBUTES),
                    _CELEBA_HOWTO)
  if name == 'cifar10':
    return TfdsSpec(LabelConvert(_CIFAR10, 'a photo of a {}'), ('label',), (_CIFAR10,),
                    _DOWNLOAD_AND_BUILD)
  if name == 'fashion_mnist':
    return TfdsSpec(LabelConvert(_FASHION, 'a photo of a {}'), ('label',), (_FASHION,),
                    _DOWNLOAD_AND_BUILD)
  if name == 'mnist':
    digits = tuple(str(d) for d in range(10))
    return TfdsSpec(LabelConvert(digits, 'a handwritten digit {}'), ('label',), (digits,),
                    _DOWNLOAD_AND_BUILD)
  raise DataError(f'no TFDS reader for dataset {name!r}')


def tfds_data_dir(data_cfg) -> str:
  """The directory TFDS reads: config.data.data_dir, else TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_cfg.data_dir:
    return os.path.expanduser(data_cfg.data_dir)
  return os.path.expanduser(str(tfds.core.constants.DATA_DIR))


def _builder_kwargs(data_cfg) -> dict:
  if data_cfg.name != 'patronus_shapes':
    return {}
  return {'config': shapes_builder.builder_config_from(data_cfg)}


_prepare_lock = threading.Lock()


def prepare_shapes(data_cfg) -> None:
  """Renders and writes the configured shapes dataset if it is not prepared yet (offline)."""
  data_dir = tfds_data_dir(data_cfg)
  config = shapes_builder.builder_config_from(data_cfg)
  with _prepare_lock:
    builder = shapes_builder.PatronusShapes(config=config, data_dir=data_dir)
    if builder.is_prepared():
      return
    logging.info('Preparing the shapes dataset %s in %s (offline, ArrayRecord).', config.name,
                 data_dir)
    try:
      builder.download_and_prepare(
          file_format='array_record',
          # Nothing to fetch: never ask GCS for a prepared copy (no network needed at all).
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as e:  # pylint: disable=broad-except
      # Another process sharing data_dir (multi-host) may have finished it first; the data
      # are deterministic, so its copy is as good as ours.
      if shapes_builder.PatronusShapes(config=config, data_dir=data_dir).is_prepared():
        return
      raise DataError(f'cannot prepare the shapes dataset {config.name} in {data_dir} '
                      f'({type(e).__name__}: {e}). Set config.data.data_dir to a writable '
                      'directory.') from e


def _missing_tfds_error(data_cfg, split: str, error: Exception) -> DataError:
  """Explains why `tfds.data_source` failed: not prepared, wrong format or unknown split."""
  name = data_cfg.name
  data_dir = tfds_data_dir(data_cfg)
  where = (f"config.data.data_dir={data_cfg.data_dir!r}" if data_cfg.data_dir else
           'config.data.data_dir is empty, so the TFDS default')
  howto = tfds_spec(name).howto.format(name=name, dir=data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir, **_builder_kwargs(data_cfg))
    prepared = builder.is_prepared()
  except Exception:  # pylint: disable=broad-except
    builder, prepared = None, False
  if not prepared:
    return DataError(f'dataset {name!r} is not prepared in {data_dir} ({where}).\n{howto}')
  formats = {f.value for f in builder.info.available_file_formats()}
  if 'array_record' not in formats:
    return DataError(
        f'dataset {name!r} is prepared in {builder.data_dir} only as {sorted(formats)}; '
        'random access (tfds.data_source + grain) needs ArrayRecord. Convert it with\n'
        f'  tfds convert_format --dataset_version_dir={builder.data_dir} '
        '--out_file_format=array_record\nor prepare it again into another data_dir with '
        '--file_format=array_record.')
  splits = sorted(builder.info.splits.keys())
  return DataError(f'cannot read split {split!r} of dataset {name!r} in {builder.data_dir} '
                   f'(available splits: {splits}; set config.data.train_split / eval_split): '
                   f'{type(error).__name__}: {error}')


def open_tfds(data_cfg, split: str, skip_images: bool = False):
  """`tfds.data_source` of one split; DataError (not a TFDS traceback) when it is missing."""
  if data_cfg.name == 'patronus_shapes':
    base = split.split('[')[0]
    if base not in shapes.SPLIT_STREAMS or (base == 'test' and data_cfg.shapes.num_test == 0):
      have = ['train'] + (['test'] if data_cfg.shapes.num_test else [])
      raise DataError(f'the shapes dataset has no split {split!r}; it has {have} '
                      '(sizes from config.data.shapes.num_train / num_test)')
    prepare_shapes(data_cfg)
  decoders = {'image': tfds.decode.SkipDecoding()} if skip_images else None
  try:
    return tfds.data_source(data_cfg.name, split=split, data_dir=tfds_data_dir(data_cfg),
                            download=False, decoders=decoders,
                            builder_kwargs=_builder_kwargs(data_cfg))
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
    raise _missing_tfds_error(data_cfg, split, e) from e


_DECODE_LABELS_BELOW = 2048


def tfds_labels(data_cfg, split: str, spec: TfdsSpec) -> np.ndarray:
  """The attribute matrix (num, A) of a split, read without decoding images."""
  if data_cfg.name == 'patronus_shapes' and '[' not in split:
    s = data_cfg.shapes
    num = s.num_train if split == 'train' else s.num_test
    return shapes.sample_factors(num, s.seed, split, s.planted_strength,
                                 s.planted_mapping)['labels']
  source = open_tfds(data_cfg, split)
  num = len(source)
  if num > _DECODE_LABELS_BELOW:  # large: skip the image decoding, which dominates the time
    source = open_tfds(data_cfg, split, skip_images=True)
  labels = np.zeros((num, len(spec.attribute_names)), np.int32)
  logging.info('Reading the labels of %s/%s (%d examples).', data_cfg.name, split, num)
  for k in range(num):  # (record by record: TFDS's mock sources lack a working __getitems__)
    labels[k] = spec.convert.attributes(source[k])
  return labels


# ----------------------------------------------------------------------------- image folders


class FolderRecords:
  """Rows of an indexed image folder split as a grain source of records (paths, decoded later)."""

  def __init__(self, paths: Sequence[str], labels: np.ndarray, captions: Sequence[str] | None,
               indices: np.ndarray | None = None):
    self._paths = list(paths)
    self._labels = np.asarray(labels, np.int32)
    self._captions = None if captions is None else list(captions)
    self._indices = (np.arange(len(self._paths), dtype=np.int64) if indices is None
                     else np.asarray(indices, np.int64))

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    j = int(self._indices[i])
    return dict(image=self._paths[j], attributes=self._labels[j],
                caption='' if self._captions is None else self._captions[j], index=j)

  def subset(self, indices: np.ndarray) -> 'FolderRecords':
    return FolderRecords(self._paths, self._labels, self._captions,
                         self._indices[np.asarray(indices, np.int64)])


@dataclasses.dataclass
class FolderSplit:
  paths: list[str]
  labels: np.ndarray
  captions: list[str] | None


@dataclasses.dataclass
class FolderIndex:
  attribute_names: tuple[str, ...]
  attribute_values: tuple[tuple[str, ...], ...]
  splits: dict[str, FolderSplit]  # 'train', 'eval'
  skipped: list[str]


_FOLDER_HOWTO = {
    'ffhq': ('FFHQ: download the 70,000 aligned images (e.g. images1024x1024/ or the 256x256 '
             'version) from https://github.com/NVlabs/ffhq-dataset and set config.data.folder.path '
             'to that directory (sub-folders are searched). No labels CSV is needed; attributes '
             'are optional (folder.labels_csv with a path column and label columns).'),
    'chexpert': ('CheXpert: download CheXpert-v1.0-small from https://stanfordmlgroup.github.io/'
                 'competitions/chexpert/ and set config.data.folder.path to the directory that '
                 'contains CheXpert-v1.0-small/, folder.labels_csv to CheXpert-v1.0-small/train.csv '
                 'and folder.eval_labels_csv to CheXpert-v1.0-small/valid.csv (column "Path").'),
    'folder': ('Set config.data.folder.path to a directory of images (searched recursively) and '
               'optionally folder.labels_csv to a CSV with a column of paths relative to it plus '
               'label columns.'),
}


def _channels_of(mode: str) -> int:
  return {'1': 1, 'L': 1, 'P': 3, 'I': 1, 'F': 1, 'LA': 2, 'RGB': 3, 'YCbCr': 3, 'LAB': 3,
          'HSV': 3, 'RGBA': 4, 'RGBX': 4, 'CMYK': 4}.get(mode, 1 if mode.startswith('I;16') else 0)


def check_image(path: str, folder_cfg) -> tuple[str | None, int]:
  """Opens a file's header (and verifies it). Returns (why it is unreadable or None if fine, its
  smaller side; 0 when unreadable).

  Raises DataError for a readable image of the wrong size or channel count.
  """
  try:
    with Image.open(path) as image:
      width, height, mode = image.width, image.height, image.mode
      if folder_cfg.verify:
        image.verify()
  except FileNotFoundError:
    return 'file not found', 0
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    return f'{type(e).__name__}: {e}', 0
  channels = _channels_of(mode)
  size = folder_cfg.check_size
  want_c = folder_cfg.check_channels
  if (size and (width, height) != (size, size)) or (want_c and channels != want_c):
    expected = f'{size or "H"}x{size or "W"}x{want_c or "C"}'
    raise DataError(f'image {path} is {height}x{width} with {channels} channel(s) (mode {mode}); '
                    f'expected {expected} (config.data.folder.check_size / check_channels). '
                    'Convert or remove it, or relax those fields.')
  if channels == 0:
    raise DataError(f'image {path} has PIL mode {mode!r}, which cannot be converted to RGB or '
                    'grayscale. Convert or remove it.')
  return None, min(width, height)


def _numeric(value: str) -> float | None:
  try:
    return float(value)
  except ValueError:
    return None


def _value_names(raw: Sequence[str]) -> tuple[str, ...]:
  """Distinct CSV values, numbers in numeric order, then text, then 'missing' for blanks."""
  present = {v for v in raw if v != ''}
  numbers = {v: _numeric(v) for v in present}
  if present and all(x is not None for x in numbers.values()):
    by_value: dict[float, str] = {}
    for v, x in numbers.items():
      by_value.setdefault(x, v)
    names = [f'{x:g}' for x in sorted(by_value)]
  else:
    names = sorted(present)
  if '' in raw:
    names.append('missing')
  return tuple(names)


def _value_index(value: str, names: tuple[str, ...]) -> int:
  if value == '':
    return names.index('missing')
  x = _numeric(value)
  if x is not None and f'{x:g}' in names:
    return names.index(f'{x:g}')
  return names.index(value)


def _resolve_csv(path: str, root: str, field: str) -> str:
  """A relative CSV path names a file in the data folder first: a same-named file in the
  current directory (another dataset's train.csv) would label these images with its rows."""
  if os.path.isabs(path) or os.path.exists(os.path.join(root, path)):
    return os.path.join(root, path)
  if not os.path.exists(path):
    raise DataError(f'config.data.folder.{field}={path!r} is neither in config.data.folder.path ({root}) '
                    'nor in the current directory; give the CSV of labels (relative to folder.path, or '
                    'an absolute path)')
  return path


def _read_csv(path: str, field: str) -> tuple[list[str], list[dict[str, str]]]:
  try:
    # utf-8-sig: a spreadsheet's UTF-8 export starts with a byte-order mark, which would else
    # become part of the first column's name
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = list(reader.fieldnames or [])
  except OSError as e:
    raise DataError(f'cannot read {path} (config.data.folder.{field}): {e}') from e
  except UnicodeDecodeError as e:  # e.g. a spreadsheet's export in Latin-1 or UTF-16
    raise DataError(f'{path} (config.data.folder.{field}) is not UTF-8 text '
                    f'(byte 0x{e.object[e.start]:02x}: {e.reason}); save it as UTF-8') from e
  if not columns:
    raise DataError(f'{path} (config.data.folder.{field}) is empty; expected a header row with a '
                    'path column and label columns')
  for line, row in enumerate(rows, start=2):  # line 1 is the header
    if None in row or any(v is None for v in row.values()):
      found = len(columns) + len(row.get(None) or ()) - sum(v is None for v in row.values())
      raise DataError(f'{path} (config.data.folder.{field}) line {line} has {found} field(s), the header '
                      f'has {len(columns)}: fix that row (a missing or extra comma?)')
  return columns, rows


def _unlisted_images(root: str, extensions: tuple[str, ...], listed: set[str]) -> list[str]:
  """Image files under `root` that no labels CSV row names (they are not used)."""
  out = []
  for directory, _, files in os.walk(root):
    for file in files:
      if file.lower().endswith(extensions):
        path = os.path.normpath(os.path.join(directory, file))
        if path not in listed:
          out.append(path)
  return sorted(out)


def _image_path(root: str, relative: str) -> str:
  path = os.path.join(root, relative)
  if not os.path.exists(path):
    # CheXpert lists 'CheXpert-v1.0-small/train/...': allow the root to be that folder itself.
    parts = relative.replace('\\', '/').split('/')
    if len(parts) > 1 and parts[0] == os.path.basename(os.path.normpath(root)):
      alternative = os.path.join(os.path.dirname(os.path.normpath(root)), relative)
      if os.path.exists(alternative):
        return alternative
  return path


def index_folder(data_cfg) -> FolderIndex:
  """Lists, labels, checks and splits an image folder (see the module docstring)."""
  f = data_cfg.folder
  root = os.path.expanduser(f.path)
  howto = _FOLDER_HOWTO[data_cfg.name]
  if not os.path.isdir(root):
    raise DataError(f'image folder {root!r} for dataset {data_cfg.name!r} does not exist '
                    f'(config.data.folder.path). {howto}')
  extensions = tuple(e.strip().lower() for e in f.extensions.split(',') if e.strip())
  if f.labels_csv:
    names, tables = _csv_tables(data_cfg, root)
    listed = {os.path.normpath(_image_path(root, rel)) for table in tables.values() for rel in table[0]}
    unlisted = _unlisted_images(root, extensions, listed)
    if unlisted:
      logging.warning('%d image(s) under %s are not listed in the labels CSV and are not used, e.g. %s',
                      len(unlisted), root, ', '.join(unlisted[:3]))
  else:
    relative = sorted(os.path.relpath(p, root) for p in _unlisted_images(root, extensions, set()))
    names, tables = (), {'train': (relative, [[] for _ in relative], None)}
  if not tables['train'][0]:
    raise DataError(f'no images found for dataset {data_cfg.name!r} under {root} (extensions '
                    f'{extensions}; config.data.folder.path / labels_csv). {howto}')
  values = tuple(
      _value_names([row[k] for table in tables.values() for row in table[1]])
      for k in range(len(names)))
  splits, skipped = _checked_splits(data_cfg, root, tables, values, len(names))
  if 'eval' not in splits:
    splits = _split_off_eval(splits['train'], f.eval_fraction, f.split_seed)
  return FolderIndex(names, values, splits, skipped)


CSV_FIELDS = {'train': 'labels_csv', 'eval': 'eval_labels_csv'}  # the folder fields naming each part's CSV


def _csv_tables(data_cfg, root: str):
  """(label column names, {part: (relative paths, raw label rows, captions or None)}) of the CSVs."""
  f = data_cfg.folder
  csvs = {part: (field, _resolve_csv(f[field], root, field)) for part, field in CSV_FIELDS.items() if f[field]}
  read = {part: _read_csv(path, field) for part, (field, path) in csvs.items()}
  columns = read['train'][0]
  path_column = f.path_column or columns[0]
  label_columns = [c.strip() for c in f.label_columns.split(',') if c.strip()]
  if not label_columns:
    exclude = {path_column, f.caption_column}
    label_columns = [c for c in columns if c not in exclude]
    if data_cfg.name == 'chexpert' and set(CHEXPERT_OBSERVATIONS) <= set(columns):
      label_columns = list(CHEXPERT_OBSERVATIONS)
  tables, keys = {}, {}
  for part, (columns_here, rows) in read.items():
    field = csvs[part][0]
    needed = [path_column] + label_columns + ([f.caption_column] if f.caption_column else [])
    missing = [c for c in needed if c not in columns_here]
    if missing:
      raise DataError(f'{csvs[part][1]} (config.data.folder.{field}) has no column(s) '
                      f'{missing}; its columns are {columns_here} (set folder.path_column, '
                      'label_columns, caption_column)')
    first_line = keys[part] = {}  # normalised path -> its line
    for line, row in enumerate(rows, start=2):  # a second row of an image: two labels, or counted twice
      key = os.path.normpath(row[path_column])
      if key in first_line:
        raise DataError(f'{csvs[part][1]} (config.data.folder.{field}) lists {row[path_column]!r} twice '
                        f'(lines {first_line[key]} and {line}); list each image once')
      first_line[key] = line
    tables[part] = ([r[path_column] for r in rows],
                    [[(r[c] or '').strip() for c in label_columns] for r in rows],
                    [r[f.caption_column] for r in rows] if f.caption_column else None)
  if 'eval' in tables:  # an image in both splits: the held-out metrics would score training images
    both = [p for p in tables['eval'][0] if os.path.normpath(p) in keys['train']]
    if both:
      raise DataError(f'{len(both)} image(s) are listed in both config.data.folder.labels_csv ({csvs["train"][1]}) '
                      f'and eval_labels_csv ({csvs["eval"][1]}), e.g. {both[0]!r}; the held-out split must not '
                      'share images with the training split')
  return tuple(label_columns), tables


def _checked_splits(data_cfg, root: str, tables: dict, values: tuple, num_names: int):
  """FolderSplits of the readable images, and the unreadable paths (DataError if strict)."""
  splits, skipped, reasons, small = {}, [], [], []
  for part, (relative, raw, captions) in tables.items():
    paths, labels, kept_captions = [], [], []
    for i, rel in enumerate(relative):
      path = _image_path(root, rel)
      problem, side = check_image(path, data_cfg.folder)
      if problem is not None:
        skipped.append(path)
        reasons.append(problem)
        continue
      if side < data_cfg.image_size:
        small.append((side, path))
      paths.append(path)
      labels.append([_value_index(v, values[k]) for k, v in enumerate(raw[i])])
      if captions is not None:
        kept_captions.append(captions[i])
    if relative and not paths:  # else the run fails later on an empty split, without the reason
      first = len(skipped) - len(relative)
      listed = ''
      if data_cfg.folder.labels_csv:
        listed = (f' listed in config.data.folder.{CSV_FIELDS[part]} (its paths are relative to '
                  'config.data.folder.path)')
      raise DataError(f'none of the {len(relative)} image(s){listed} can be read, e.g. {skipped[first]} '
                      f'({reasons[first]}); check config.data.folder.path and the image files')
    splits[part] = FolderSplit(paths, np.asarray(labels, np.int32).reshape(len(paths), num_names),
                               kept_captions if captions is not None else None)
  if skipped:
    first = '\n'.join(f'  {p} ({r})' for p, r in list(zip(skipped, reasons))[:5])
    if data_cfg.strict:
      raise DataError(f'{len(skipped)} unreadable image(s) in {root} (config.data.strict=True):\n'
                      f'{first}\nRemove or replace them, or set config.data.strict=False to skip them.')
    logging.warning('Skipping %d unreadable image(s) in %s; the first:\n%s', len(skipped), root, first)
  if small:  # resized up, they come out blurred: the model learns the blur
    side, path = min(small)
    logging.warning('%d image(s) in %s have a side below config.data.image_size=%d and are upsampled, the '
                    'smallest %s (%d pixels); use larger images or a smaller image_size',
                    len(small), root, data_cfg.image_size, path, side)
  return splits, skipped


def _split_off_eval(train: FolderSplit, eval_fraction: float, seed: int) -> dict[str, FolderSplit]:
  """A seeded random eval_fraction of the images as 'eval', the rest as 'train' (both in order)."""
  num = len(train.paths)
  num_eval = int(round(eval_fraction * num))
  order = np.random.default_rng(seed).permutation(num)
  parts = {'eval': np.sort(order[:num_eval]), 'train': np.sort(order[num_eval:])}
  return {part: FolderSplit([train.paths[i] for i in idx], train.labels[idx],
                            None if train.captions is None else [train.captions[i] for i in idx])
          for part, idx in parts.items()}


_folder_cache: dict[str, FolderIndex] = {}
_folder_lock = threading.Lock()


def folder_index(data_cfg) -> FolderIndex:
  """`index_folder`, once per process and folder configuration."""
  key = json.dumps([data_cfg.name, data_cfg.strict, data_cfg.folder.to_dict()], sort_keys=True)
  with _folder_lock:
    if key not in _folder_cache:
      _folder_cache[key] = index_folder(data_cfg)
    return _folder_cache[key]


def folder_part(data_cfg, split: str) -> str:
  """Maps a split name to the folder's 'train' or 'eval' part."""
  if split in (data_cfg.train_split, 'train'):
    return 'train'
  if split in (data_cfg.eval_split, 'test', 'validation', 'valid', 'eval'):
    return 'eval'
  raise DataError(f'image folder datasets have a train split ({data_cfg.train_split!r}) and an '
                  f'eval split ({data_cfg.eval_split!r}), not {split!r}')


# ----------------------------------------------------------------------------- opened splits


@dataclasses.dataclass
class OpenedSplit:
  """One split of the configured dataset, ready for grain (bias selection applied)."""

  name: str
  split: str
  records: Any  # TfdsRecords or FolderRecords
  attribute_names: tuple[str, ...]
  attribute_values: tuple[tuple[str, ...], ...]
  has_captions: bool
  native_channels: int  # channels of the stored images (0 = varies, e.g. folders)
  bias_report: dict | None = None


def _bias_applies(data_cfg, split: str) -> bool:
  b = data_cfg.bias
  return b.enabled and (split == data_cfg.train_split or
                        (b.apply_to_eval and split == data_cfg.eval_split))


def _planted_report(data_cfg, split: str, labels: np.ndarray) -> dict:
  """The colour -> shape association of a shapes dataset generated with a planted bias."""
  s = data_cfg.shapes
  tied = shapes.planted_shape_of_color(s.planted_mapping)
  colors, shape_names = shapes.FACTOR_VALUES[2], shapes.FACTOR_VALUES[1]
  spec = bias_lib.BiasSpec(
      attribute='color', members=(2,), a_values=colors, target=1, target_name='shape',
      b_values=shape_names, mapping=tuple((c, int(t)) for c, t in enumerate(tied) if t >= 0),
      strength=float(s.planted_strength), out_of_scope='keep', seed=0)
  report = bias_lib.report(labels, spec, np.ones(len(labels), bool), split)
  report['planted'] = True
  return report


_labels_cache: dict[str, np.ndarray] = {}
_labels_lock = threading.Lock()


def _cached_labels(data_cfg, split: str, spec: TfdsSpec) -> np.ndarray:
  key = json.dumps([data_cfg.name, tfds_data_dir(data_cfg), split,
                    data_cfg.shapes.to_dict(), data_cfg.image_size], sort_keys=True)
  with _labels_lock:
    if key not in _labels_cache:
      _labels_cache[key] = tfds_labels(data_cfg, split, spec)
    return _labels_cache[key]


def open_split(data_cfg, split: str) -> OpenedSplit:
  """Opens a split of `config.data` (preparing shapes, applying the bias)."""
  validate_data_config(data_cfg)  # cheap, and the config may not have gone through config.validate
  name = data_cfg.name
  if name in ('ffhq', 'chexpert', 'folder'):
    index = folder_index(data_cfg)
    part = index.splits[folder_part(data_cfg, split)]
    records = FolderRecords(part.paths, part.labels, part.captions)
    names, values = index.attribute_names, index.attribute_values
    opened = OpenedSplit(name, split, records, names, values, part.captions is not None, 0)
    labels = part.labels
  else:
    spec = tfds_spec(name)
    source = open_tfds(data_cfg, split)
    records = TfdsRecords(source, spec.convert)
    channels = 1 if name in ('mnist', 'fashion_mnist') else 3
    opened = OpenedSplit(name, split, records, spec.attribute_names, spec.attribute_values,
                         True, channels)
    labels = None
    if _bias_applies(data_cfg, split) or (
        name == 'patronus_shapes' and data_cfg.shapes.planted_strength >= 0):
      labels = _cached_labels(data_cfg, split, spec)
      if len(labels) != len(records):
        raise DataError(f'{name}/{split}: read {len(labels)} labels for {len(records)} records')
  if name == 'patronus_shapes' and data_cfg.shapes.planted_strength >= 0:
    opened.bias_report = _planted_report(data_cfg, split, labels)
  if _bias_applies(data_cfg, split):
    spec_b = bias_lib.resolve(data_cfg.bias, opened.attribute_names, opened.attribute_values, name)
    keep, report = bias_lib.select(labels, spec_b, split)
    if len(keep) == 0:
      raise DataError(f'the bias {data_cfg.bias.attribute} -> {data_cfg.bias.target} at strength '
                      f'{data_cfg.bias.strength} keeps no example of {name}/{split}; check '
                      'config.data.bias.mapping')
    opened.records = opened.records.subset(keep)
    opened.bias_report = report
  return opened
