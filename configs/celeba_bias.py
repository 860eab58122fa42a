"""CelebA with a planted shortcut: blond/brown hair <-> smiling, black hair <-> not smiling.

The paper's diagnosis experiment: Patronus is trained on a CelebA subset selected so that
hair colour predicts smiling; `--mode=interpret` must then find that raising the black-hair
prototype removes the smile. Examples are selected, never duplicated (see data/bias.py).

  python -m patronus_jax.main --config=configs/celeba_bias.py --workdir=runs/celeba_bias
  variants: ':tiny'
"""

import os

from patronus_jax import config as config_lib
from patronus_jax.data import bias as bias_lib

CELEBA = os.path.join(os.path.dirname(__file__), 'celeba.py')


def get_config(arg=None):
  config = config_lib.config_from_file(f'{CELEBA}:{arg or ""}')  # celeba.py's get_config(arg)
  config.name = 'celeba_bias'
  bias_lib.set_celeba_hair_smile(config)
  return config
