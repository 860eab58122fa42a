"""Per-example preprocessing (runs inside grain, in threads or worker processes).

As in the paper's training code: the whole image is resized to the configured square with
bicubic, antialiased filtering (PIL's resampling widens the filter when it shrinks, like
torchvision's `Resize(antialias=True)`), without cropping; `crop='center'` takes the largest
centred square first instead. Images become RGB or grayscale (PIL's ITU-R 601-2 luma) as
configured and are scaled to float32 in [-1, 1], NHWC.

Image-folder records carry a file path and are decoded here. A file that cannot be decoded
(e.g. a truncated JPEG that passed the header check) is an error when `config.data.strict` is
set; otherwise the example is dropped (grain filters the None) and the path is logged with a
running count. Never is a blank image substituted.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

from absl import logging
import numpy as np
from PIL import Image

from patronus_jax.data.errors import DataError

# How many files this process failed to decode (image folders, non-strict mode): the running
# count in the warnings. Grain may decode in threads, hence the lock.
_skipped_lock = threading.Lock()
_skipped_count = 0


def _record_skip(path: str, error: Exception) -> None:
  global _skipped_count
  with _skipped_lock:
    _skipped_count += 1
    count = _skipped_count
  if count <= 10 or count % 100 == 0:
    logging.warning('Skipping unreadable image %s (%s: %s); %d skipped so far in this process. '
                    'Set config.data.strict=True to make this an error.',
                    path, type(error).__name__, error, count)


def _to_8bit(image: Image.Image) -> Image.Image:
  """16/32-bit integer and float images (e.g. some X-rays) -> 8-bit grayscale."""
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N'):
    array = np.asarray(image, dtype=np.float64) / 65535.0
  elif image.mode in ('I', 'F'):
    array = np.asarray(image, dtype=np.float64)
    high = 65535.0 if array.max() > 255 else 255.0
    array = array / high
  else:
    return image
  return Image.fromarray(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8), mode='L')


def open_image(path: str) -> Image.Image:
  """Decodes an image file completely (raises OSError & co. when it is corrupt)."""
  with Image.open(path) as image:
    image.load()
    return _to_8bit(image)


def array_to_pil(array: np.ndarray, where: str) -> Image.Image:
  """uint8 HW / HW1 / HW3 / HW4 array -> PIL image; DataError naming `where` otherwise."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise DataError(f'{where}: expected a uint8 image of shape (H, W), (H, W, 1), (H, W, 3) '
                    f'or (H, W, 4), got {array.dtype} {array.shape}')
  return Image.fromarray(array)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Record -> model-ready example: {'image' float32 (S, S, C) in [-1, 1], 'attributes',
  'caption' (when the dataset has captions), 'index'}. Returns None for a skipped file."""

  dataset: str
  image_size: int
  channels: int
  crop: str = 'none'
  strict: bool = False
  has_captions: bool = False
  # Examples in the split: this many undecodable files in a row, with none decoded in between, mean
  # no file can be decoded at all, and an endless stream would skip them forever (0: no limit).
  num_records: int = 0
  # Failures in a row and a few of their paths (mutable state inside the frozen settings; each
  # grain worker process has its own copy).
  failures: dict = dataclasses.field(default_factory=lambda: {'in_a_row': 0, 'paths': []}, compare=False)

  def image(self, source: Any, where: str) -> np.ndarray:
    """Any decoded image (PIL or array) -> float32 (S, S, C) in [-1, 1]."""
    image = source if isinstance(source, Image.Image) else array_to_pil(source, where)
    image = image.convert('L' if self.channels == 1 else 'RGB')
    if self.crop == 'center':
      width, height = image.size
      side = min(width, height)
      left, top = (width - side) // 2, (height - side) // 2
      image = image.crop((left, top, left + side, top + side))
    if image.size != (self.image_size, self.image_size):
      image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
      array = array[..., None]
    return array / 127.5 - 1.0

  def _count_failure(self, path: str) -> None:
    f = self.failures
    f['in_a_row'] += 1
    if len(f['paths']) < 3 and path not in f['paths']:
      f['paths'].append(path)
    if self.num_records and f['in_a_row'] >= self.num_records:
      raise DataError(f'none of the last {f["in_a_row"]} images of {self.dataset} could be decoded (the split '
                      f'has {self.num_records}), e.g. {", ".join(f["paths"])}: the files are corrupt or not '
                      'images. Replace them, or check config.data.folder.path.')

  def __call__(self, record: dict) -> dict | None:
    source = record['image']
    index = int(record['index'])
    if isinstance(source, str):  # an image-folder file
      try:
        source = open_image(source)
      except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
        if self.strict:
          raise DataError(f'cannot decode image {source} ({type(e).__name__}: {e}); it is corrupt '
                          'or not an image. Remove it or set config.data.strict=False to skip '
                          'unreadable files.') from e
        _record_skip(source, e)
        self._count_failure(source)
        return None
      self.failures['in_a_row'] = 0
      where = record['image']
    else:
      where = f'{self.dataset} example {index}'
    out = {
        'image': self.image(source, where),
        'attributes': np.asarray(record['attributes'], np.int32),
        'index': np.int64(index),
    }
    if self.has_captions:
      out['caption'] = str(record['caption'])
    return out


def stack_examples(examples: Sequence[dict]) -> dict:
  """grain batch_fn: stacks arrays; captions become an object array of Python str."""
  batch = {
      'image': np.stack([e['image'] for e in examples]).astype(np.float32, copy=False),
      'attributes': np.stack([e['attributes'] for e in examples]).astype(np.int32, copy=False),
      'index': np.asarray([e['index'] for e in examples], np.int64),
  }
  if examples and 'caption' in examples[0]:
    captions = np.empty(len(examples), dtype=object)
    captions[:] = [str(e['caption']) for e in examples]
    batch['caption'] = captions
  return batch
