"""The built-in shapes dataset: factors, rendering and captions (NumPy only, no TFDS).

Every image shows one object on a flat background. Its generative factors are the labels:

  background  dark / gray / light          global, lowest frequency (most of the pixels)
  shape       circle / square / triangle   (equal-area circle and square; fill ratio of the
                                           bounding box 0.79 / 1.0 / 0.5)
  color       red / green / blue / yellow  bold, well separated from each other and the backgrounds
  size        small / large                half extent 0.15 / 0.24 of the side
  position    top-left / top-right / bottom-left / bottom-right   (quadrant centres at 0.3 / 0.7)
  stripes     plain / striped              local, highest frequency: rows alternating with a
                                           dark shade of the object colour every `stripe_width` px

Small continuous nuisances (centre jitter +-3% of the side, size jitter +-8%) keep the images
from being 576 exact copies, while every factor stays unambiguous in the pixels: the object's
centre never leaves its quadrant, it stays inside the image, and it always spans several
stripes.

Sampling and rendering are separate so that labels can be produced without pixels (the bias
selection tests and `bias_report`s use this cheap path). All randomness comes from
`np.random.default_rng([seed, split_stream])` in a fixed draw order, so the same seed always
gives byte-identical images and labels. The TFDS builder that stores them as ArrayRecord is
in `shapes_builder.py`.
"""

from __future__ import annotations

import numpy as np

FACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('background', ('dark', 'gray', 'light')),
    ('shape', ('circle', 'square', 'triangle')),
    ('color', ('red', 'green', 'blue', 'yellow')),
    ('size', ('small', 'large')),
    ('position', ('top-left', 'top-right', 'bottom-left', 'bottom-right')),
    ('stripes', ('plain', 'striped')),
)
FACTOR_NAMES: tuple[str, ...] = tuple(name for name, _ in FACTORS)
FACTOR_VALUES: tuple[tuple[str, ...], ...] = tuple(values for _, values in FACTORS)

BACKGROUND_RGB = np.array([[24, 24, 32], [128, 128, 128], [232, 232, 224]], np.uint8)
COLOR_RGB = np.array([[230, 40, 40], [40, 200, 60], [50, 90, 240], [245, 215, 40]], np.uint8)
STRIPE_SHADE = 0.35  # the off-stripe rows are this fraction of the object colour
STRIPE_RGB = np.round(COLOR_RGB.astype(np.float64) * STRIPE_SHADE).astype(np.uint8)

POSITION_CENTERS = np.array([[0.3, 0.3], [0.7, 0.3], [0.3, 0.7], [0.7, 0.7]])  # (x, y), y down
SIZE_HALF_EXTENT = np.array([0.15, 0.24])  # fraction of the side
CENTER_JITTER = 0.03  # fraction of the side
SIZE_JITTER = 0.08  # relative
SQUARE_HALF_SIDE = 0.886  # x half extent; sqrt(pi)/2: the square has the circle's area
TRIANGLE_CIRCUMRADIUS = 1.25  # x half extent; an equilateral triangle, apex up, box-centred

SPLIT_STREAMS = {'train': 0, 'test': 1}


def stripe_width(resolution: int) -> int:
  """Height in pixels of one stripe (half a period): 2 px at 32x32, 4 px at 64x64."""
  return max(2, resolution // 16)


def planted_shape_of_color(mapping: str) -> np.ndarray:
  """Parses 'red:circle,...' into the shape index tied to each colour (-1: not tied).

  Raises ValueError naming the bad item.
  """
  shapes, colors = FACTOR_VALUES[1], FACTOR_VALUES[2]
  tied = np.full(len(colors), -1, np.int64)
  items = [item.strip() for item in mapping.split(',') if item.strip()]
  if not items:
    raise ValueError("must give at least one 'colour:shape' pair")
  for item in items:
    parts = [p.strip() for p in item.split(':')]
    if len(parts) != 2 or parts[0] not in colors or parts[1] not in shapes:
      raise ValueError(f"has a bad item {item!r}: expected 'colour:shape' with a colour in "
                       f'{colors} and a shape in {shapes}')
    tied[colors.index(parts[0])] = shapes.index(parts[1])
  return tied


def split_stream(split: str) -> int:
  if split not in SPLIT_STREAMS:
    raise ValueError(f'the shapes dataset has splits {tuple(SPLIT_STREAMS)}, not {split!r}')
  return SPLIT_STREAMS[split]


def sample_factors(num: int, seed: int, split: str = 'train', planted_strength: float = -1.0,
                   planted_mapping: str = 'red:circle,green:square,blue:triangle,yellow:circle'
                   ) -> dict[str, np.ndarray]:
  """Draws the factors of `num` images without rendering them.

  Returns 'labels' int32 (num, 6) in FACTOR_NAMES order, 'center' float64 (num, 2) as (x, y)
  fractions of the side, 'half_extent' float64 (num,) as a fraction of the side.

  With planted_strength p >= 0, an object whose colour is tied to a shape gets that shape with
  probability p and one of the other shapes (uniformly) otherwise. The draws are the same with
  and without planting, so a planted dataset differs from the plain one only in those shapes.
  """
  rng = np.random.default_rng([seed, split_stream(split)])
  labels = np.stack([rng.integers(0, len(values), size=num) for values in FACTOR_VALUES], axis=1)
  keep_tied = rng.random(num)
  other = rng.integers(0, len(FACTOR_VALUES[1]) - 1, size=num)
  jitter = rng.uniform(-1.0, 1.0, size=(num, 2))
  scale = rng.uniform(-1.0, 1.0, size=num)
  if planted_strength >= 0:
    tied = planted_shape_of_color(planted_mapping)[labels[:, 2]]
    # The k-th shape other than the tied one, k uniform in 0..1.
    others = other + (other >= tied)
    planted = np.where(keep_tied < planted_strength, tied, others)
    labels[:, 1] = np.where(tied >= 0, planted, labels[:, 1])
  center = POSITION_CENTERS[labels[:, 4]] + CENTER_JITTER * jitter
  half_extent = SIZE_HALF_EXTENT[labels[:, 3]] * (1.0 + SIZE_JITTER * scale)
  return dict(labels=labels.astype(np.int32), center=center, half_extent=half_extent)


def object_masks(factors: dict[str, np.ndarray], resolution: int) -> np.ndarray:
  """Boolean (num, S, S): the pixels (by their centres) covered by each object."""
  coords = np.arange(resolution, dtype=np.float64) + 0.5
  cx = factors['center'][:, 0, None, None] * resolution
  cy = factors['center'][:, 1, None, None] * resolution
  r = factors['half_extent'][:, None, None] * resolution
  dx = coords[None, None, :] - cx
  dy = coords[None, :, None] - cy
  shape = factors['labels'][:, 1, None, None]
  circle = dx * dx + dy * dy <= r * r
  square = np.maximum(np.abs(dx), np.abs(dy)) <= SQUARE_HALF_SIDE * r
  big_r = TRIANGLE_CIRCUMRADIUS * r  # height 1.5 R, centred on the box: apex at -0.75 R
  triangle = (dy <= 0.75 * big_r) & (np.abs(dx) * np.sqrt(3.0) <= dy + 0.75 * big_r)
  return np.where(shape == 0, circle, np.where(shape == 1, square, triangle))


def render(factors: dict[str, np.ndarray], resolution: int = 32, chunk: int = 256) -> np.ndarray:
  """uint8 (num, S, S, 3) images of the sampled factors."""
  num = len(factors['labels'])
  out = np.empty((num, resolution, resolution, 3), np.uint8)
  rows = np.arange(resolution)
  off_row = ((rows // stripe_width(resolution)) % 2 == 1)[None, :, None]
  for start in range(0, num, chunk):
    part = {k: v[start:start + chunk] for k, v in factors.items()}
    labels = part['labels']
    mask = object_masks(part, resolution)
    striped = (labels[:, 5] == 1)[:, None, None]
    dark = mask & striped & off_row
    image = np.broadcast_to(BACKGROUND_RGB[labels[:, 0]][:, None, None, :],
                            (len(labels), resolution, resolution, 3)).copy()
    image = np.where(mask[..., None], COLOR_RGB[labels[:, 2]][:, None, None, :], image)
    image = np.where(dark[..., None], STRIPE_RGB[labels[:, 2]][:, None, None, :], image)
    out[start:start + chunk] = image
  return out


def caption(labels) -> str:
  """'a large red striped circle in the top left on a dark background'."""
  background, shape, color, size, position, stripes = (
      FACTOR_VALUES[i][int(v)] for i, v in enumerate(labels))
  texture = 'striped ' if stripes == 'striped' else ''
  return (f'a {size} {color} {texture}{shape} in the {position.replace("-", " ")} '
          f'on a {background} background')
