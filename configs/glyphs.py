"""The quickstart's model and run lengths on glyphs: a second labelled dataset, unlike shapes.

Rendered characters (experiments/make_glyphs.py) with seven independent factors: glyph (6),
font_style (3), weight (2), ink (4), paper (2), rotation (3), scale (2). Read through the
`folder` loader from train.csv / test.csv; checks that a recipe tuned on shapes carries over.

  python experiments/make_glyphs.py /tmp/glyphs        # 4,000 train + 500 test, 32x32, seconds
  python -m patronus_jax.main --config=configs/glyphs.py --workdir=runs/glyphs
  # data elsewhere: --config.data.folder.path=/data/glyphs

Variants (as configs/quickstart.py):
  ''      unbiased
  'bias'  ink -> glyph planted by selecting training examples (data.bias, strength 0.95:
          red:A, green:E, blue:K, orange:O); keeps about 18% of the training images, so make a
          larger set for it (--num_train=20000 gives about 3,500)
  'tiny'  the test-sized smoke run (configs/shapes.py:tiny's model and lengths)
  'paper' the paper's prototype geometry and conditioning (quickstart.py:paper), the baseline
"""

import os

from patronus_jax import config as config_lib

QUICKSTART = os.path.join(os.path.dirname(__file__), 'quickstart.py')
DEFAULT_PATH = '/tmp/glyphs'


def get_config(arg=None):
  variants = set(arg.split(',')) if arg else set()
  unknown = variants - {'bias', 'tiny', 'paper'}
  if unknown:
    raise ValueError(f"unknown variant(s) {sorted(unknown)} of configs/glyphs.py; expected 'bias', 'tiny' and/or "
                     "'paper'")
  # quickstart.py's get_config, without shapes' planted bias: glyphs plant theirs via data.bias.
  config = config_lib.config_from_file(f'{QUICKSTART}:{",".join(sorted(variants & {"tiny", "paper"}))}')
  config.name = 'glyphs'
  defaults = config_lib.base_config().data
  config.data.shapes = defaults.shapes  # unused by the folder loader; back to the defaults
  d = config.data
  d.name = 'folder'
  d.image_size = 32
  d.channels = 3
  d.train_split = 'train'
  d.eval_split = 'test'
  f = d.folder
  f.path = DEFAULT_PATH
  f.labels_csv = 'train.csv'
  f.eval_labels_csv = 'test.csv'
  f.path_column = 'path'
  f.label_columns = ''  # every other column: the seven factors
  f.check_channels = 3
  if 'bias' in variants:
    config.name = 'glyphs_bias'
    b = d.bias
    b.enabled = True
    b.attribute = 'ink'
    b.target = 'glyph'
    b.mapping = 'red:A,green:E,blue:K,orange:O'
    b.strength = 0.95
    b.out_of_scope = 'drop'
  return config
