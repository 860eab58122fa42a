"""Small shared helpers for what the modes write into a workdir: images, grids, JSON.

Every file is written to a temporary name and renamed into place, so that a crash or a
kill never leaves a half-written result where a previous good one stood.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np
from PIL import Image
import matplotlib.pyplot as plt


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if hasattr(obj, 'tolist'):  # numpy and jax arrays and scalars
    return _jsonable(obj.tolist())
  if isinstance(obj, float) and not np.isfinite(obj):
    return None if np.isnan(obj) else (1e308 if obj > 0 else -1e308)
  return obj


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` (numpy values allowed) as indented JSON, atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
      f.write('\n')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats (any leading shape, NHWC) -> uint8 [0, 255]."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 or [-1, 1] float images (N, H, W, C) into one (H', W', C) uint8 array."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  if images.ndim == 3:
    images = images[..., None]
  n, h, w, c = images.shape
  ncol = max(1, min(nrow, n))
  nrows = -(-n // ncol)
  grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Saves one uint8 (H, W, C) or (H, W) image as PNG, atomically."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = to_uint8(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  with atomic_path(path) as tmp:
    Image.fromarray(image).save(tmp, format='PNG')


def save_image_grid(path: str, images: np.ndarray, nrow: int = 8) -> np.ndarray:
  """Saves a grid of [-1, 1] (or uint8) NHWC images as PNG and returns the grid."""
  grid = image_grid(images, nrow=nrow)
  save_png(path, grid)
  return grid


def save_figure(path: str, fig) -> None:
  """Saves a matplotlib figure as PNG, atomically, and closes it."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format='png', dpi=100, bbox_inches='tight')
  plt.close(fig)
