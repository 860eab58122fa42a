r"""Glyphs: a second labelled image dataset (rendered characters), read through the `folder` loader.

  python experiments/make_glyphs.py /tmp/glyphs [--num_train=4000] [--num_test=500] [--size=32] [--seed=0]
  python -m patronus_jax.main --config=configs/glyphs.py --workdir=runs/glyphs

Each image is one character drawn with a DejaVu font (found under /usr/share/fonts) in an ink
colour on a paper colour, rotated, scaled, sheared and shifted by a random affine transform.
Seven factors, each sampled independently and uniformly, are the label columns of the CSVs:

  glyph       A E K O S X
  font_style  sans serif mono           (DejaVuSans, DejaVuSerif, DejaVuSansMono)
  weight      regular bold              (the fonts' -Bold files)
  ink         red green blue orange
  paper       light dark
  rotation    left none right           (+15..+30, -4..+4, -30..-15 degrees; left = anticlockwise)
  scale       small large               (cap height 30-38% or 52-60% of the side)

Nuisances, not labelled: a shear of up to +-0.08, a shift of up to size/16 pixels from the
centre, the angle and size within their bins. Writes OUT_DIR/images/{train,test}_NNNNN.png and
OUT_DIR/train.csv, OUT_DIR/test.csv (column `path`, relative to OUT_DIR, then the factors),
which `config.data.folder` reads as `labels_csv` / `eval_labels_csv` (configs/glyphs.py).
Deterministic for a seed (on one Pillow/FreeType version); train and test come from separate
random streams, so the test set does not depend on --num_train. Images are drawn 4x larger and
reduced with a box filter (anti-aliased). Older images/{train,test}_NNNNN.png beyond the new
counts are removed, so the folder holds exactly the listed images.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
import sys
import time

from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from patronus_jax import experiment

FONT_ROOTS = ('/usr/share/fonts/truetype/dejavu', '/usr/share/fonts')
FONT_FILES = {  # (font_style, weight) -> DejaVu file
    ('sans', 'regular'): 'DejaVuSans.ttf', ('sans', 'bold'): 'DejaVuSans-Bold.ttf',
    ('serif', 'regular'): 'DejaVuSerif.ttf', ('serif', 'bold'): 'DejaVuSerif-Bold.ttf',
    ('mono', 'regular'): 'DejaVuSansMono.ttf', ('mono', 'bold'): 'DejaVuSansMono-Bold.ttf',
}
INKS = {'red': (215, 40, 40), 'green': (35, 165, 60), 'blue': (50, 90, 225), 'orange': (245, 145, 20)}
PAPERS = {'light': (238, 234, 222), 'dark': (28, 28, 36)}
ROTATIONS = {'left': (15.0, 30.0), 'none': (-4.0, 4.0), 'right': (-30.0, -15.0)}  # degrees, anticlockwise
SCALES = {'small': (0.30, 0.38), 'large': (0.52, 0.60)}  # cap height / image side
FACTORS = {  # CSV label column -> values
    'glyph': ('A', 'E', 'K', 'O', 'S', 'X'),
    'font_style': ('sans', 'serif', 'mono'),
    'weight': ('regular', 'bold'),
    'ink': tuple(INKS),
    'paper': tuple(PAPERS),
    'rotation': tuple(ROTATIONS),
    'scale': tuple(SCALES),
}
COLUMNS = ('path',) + tuple(FACTORS)
SPLITS = ('train', 'test')  # also the random stream of each: default_rng([seed, SPLITS.index(split)])
MAX_SHEAR = 0.08
SUPERSAMPLE = 4
FONT_PIXELS = 128  # glyph masks are drawn once per (glyph, font) at this font size
_IMAGE_NAME = re.compile(r'^(train|test)_(\d+)\.png$')


class FontsMissing(RuntimeError):
  pass


def find_fonts() -> dict[tuple[str, str], str]:
  """(font_style, weight) -> path of its DejaVu TTF; FontsMissing (one line) if any is absent."""
  found = {}
  for root in FONT_ROOTS:
    for path in sorted(glob.glob(os.path.join(root, '**', 'DejaVu*.ttf'), recursive=True)):
      found.setdefault(os.path.basename(path), path)
  missing = sorted(name for name in FONT_FILES.values() if name not in found)
  if missing:
    raise FontsMissing(f'DejaVu fonts {missing} not found under {" or ".join(FONT_ROOTS)}; install them '
                       '(Debian/Ubuntu: apt-get install fonts-dejavu-core fonts-dejavu-extra)')
  return {key: found[name] for key, name in FONT_FILES.items()}


def glyph_masks(fonts: dict[tuple[str, str], str]) -> dict[tuple[str, str, str], tuple[Image.Image, float]]:
  """(glyph, font_style, weight) -> (the glyph's tight 'L' mask, the font's cap height in pixels)."""
  masks = {}
  for (style, weight), path in fonts.items():
    font = ImageFont.truetype(path, FONT_PIXELS)
    cap = font.getbbox('H')
    for glyph in FACTORS['glyph']:
      left, top, right, bottom = font.getbbox(glyph)
      mask = Image.new('L', (right - left + 2, bottom - top + 2), 0)
      ImageDraw.Draw(mask).text((1 - left, 1 - top), glyph, fill=255, font=font)
      masks[(glyph, style, weight)] = (mask, float(cap[3] - cap[1]))
  return masks


def sample_factors(num: int, seed: int, split: str) -> dict[str, np.ndarray]:
  """Independent uniform factor indices per column, and the unlabelled transform parameters."""
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  out = {name: rng.integers(0, len(values), num) for name, values in FACTORS.items()}
  out['angle_u'] = rng.uniform(0.0, 1.0, num)  # position inside the rotation bin
  out['scale_u'] = rng.uniform(0.0, 1.0, num)  # position inside the scale bin
  out['shear'] = rng.uniform(-MAX_SHEAR, MAX_SHEAR, num)
  out['shift'] = rng.uniform(-1.0, 1.0, (num, 2))  # in units of size/16 pixels
  return out


def render(mask: Image.Image, cap_height: float, *, size: int, angle: float, scale: float, shear: float,
           shift: tuple[float, float], ink: tuple[int, int, int], paper: tuple[int, int, int]) -> np.ndarray:
  """One (size, size, 3) uint8 image: the glyph mask, transformed, in `ink` on `paper`.

  `scale` is the cap height as a fraction of the side, `angle` degrees anticlockwise, `shear`
  horizontal, `shift` the glyph centre's offset from the image centre in pixels.
  """
  big = size * SUPERSAMPLE
  s = scale * big / cap_height
  t = math.radians(angle)
  rotate = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])  # y points down
  forward = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) * s  # mask pixels -> output pixels
  inverse = np.linalg.inv(forward)
  centre_in = np.array([mask.width / 2, mask.height / 2])
  centre_out = np.array([big / 2 + shift[0] * SUPERSAMPLE, big / 2 + shift[1] * SUPERSAMPLE])
  offset = centre_in - inverse @ centre_out
  data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
  drawn = mask.transform((big, big), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC, fillcolor=0)
  alpha = np.asarray(drawn.resize((size, size), Image.Resampling.BOX), np.float32)[..., None] / 255.0
  paper_rgb, ink_rgb = np.asarray(paper, np.float32), np.asarray(ink, np.float32)
  return np.round(paper_rgb + (ink_rgb - paper_rgb) * alpha).astype(np.uint8)


def _remove_stale(images_dir: str, counts: dict[str, int]) -> int:
  """Removes images/{split}_N.png with N >= that split's new count (from a larger earlier run)."""
  removed = 0
  for name in os.listdir(images_dir):
    match = _IMAGE_NAME.match(name)
    if match and int(match.group(2)) >= counts[match.group(1)]:
      os.remove(os.path.join(images_dir, name))
      removed += 1
  return removed


def make_glyphs(out_dir: str, num_train: int = 4000, num_test: int = 500, size: int = 32, seed: int = 0) -> dict:
  """Writes the dataset (module docstring); returns {'train': n, 'test': n, 'removed': n, 'seconds': s}."""
  if num_train < 1 or num_test < 0 or size < 8 or seed < 0:
    raise ValueError(f'need num_train >= 1, num_test >= 0, size >= 8, seed >= 0; got num_train={num_train}, '
                     f'num_test={num_test}, size={size}, seed={seed}')
  start = time.perf_counter()
  masks = glyph_masks(find_fonts())
  images_dir = os.path.join(out_dir, 'images')
  os.makedirs(images_dir, exist_ok=True)
  counts = {'train': num_train, 'test': num_test}
  removed = _remove_stale(images_dir, counts)
  for split, num in counts.items():
    f = sample_factors(num, seed, split)
    rows = []
    for i in range(num):
      labels = {name: values[f[name][i]] for name, values in FACTORS.items()}
      low, high = ROTATIONS[labels['rotation']]
      small, large = SCALES[labels['scale']]
      mask, cap_height = masks[(labels['glyph'], labels['font_style'], labels['weight'])]
      image = render(mask, cap_height, size=size, angle=low + (high - low) * f['angle_u'][i],
                     scale=small + (large - small) * f['scale_u'][i], shear=float(f['shear'][i]),
                     shift=tuple(f['shift'][i] * size / 16), ink=INKS[labels['ink']], paper=PAPERS[labels['paper']])
      relative = f'images/{split}_{i:05d}.png'
      Image.fromarray(image).save(os.path.join(out_dir, relative))
      rows.append([relative] + [labels[name] for name in FACTORS])
    with open(os.path.join(out_dir, f'{split}.csv'), 'w', newline='') as csv_file:
      writer = csv.writer(csv_file, lineterminator='\n')
      writer.writerow(COLUMNS)
      writer.writerows(rows)
  return dict(train=num_train, test=num_test, removed=removed, seconds=time.perf_counter() - start)


def define_flags() -> flags.FlagValues:
  """The script's absl flags (patronus_jax/experiment.py), in their own FlagValues so that `main`
  can be called with an argument list (tests)."""
  fv = flags.FlagValues()
  flags.DEFINE_bool('help', False, 'Show this help.', short_name='h', flag_values=fv)
  flags.DEFINE_integer('num_train', 4000, 'Training images (train.csv).', flag_values=fv)
  flags.DEFINE_integer('num_test', 500, 'Test images (test.csv).', flag_values=fv)
  flags.DEFINE_integer('size', 32, 'Image side in pixels.', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Random seed (same seed, same images).', flag_values=fv)
  return fv


def main(argv=None) -> int:
  """argv: the arguments after the program name (default: the command line). Returns the exit status."""
  args = define_flags()
  usage = f'usage: {os.path.basename(sys.argv[0])} [flags] OUT_DIR\n{__doc__.splitlines()[0]}'
  positional, status = experiment.parse_positional(args, argv, usage)
  if status is not None:
    return status
  if len(positional) != 1:
    print(f'{usage}\nerror: give exactly one OUT_DIR, got {positional}', file=sys.stderr)
    return 2
  out_dir = positional[0]
  try:
    done = make_glyphs(out_dir, args.num_train, args.num_test, args.size, args.seed)
  except (FontsMissing, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  factors = ' '.join(f'{name}({len(values)})' for name, values in FACTORS.items())
  stale = f'; removed {done["removed"]} older image(s)' if done['removed'] else ''
  print(f'glyphs: {done["train"]} train + {done["test"]} test images, {args.size}x{args.size}, seed {args.seed}, '
        f'in {out_dir} ({done["seconds"]:.1f} s); factors {factors}{stale}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
