"""CelebA with a planted shortcut: blond/brown hair <-> smiling, black hair <-> not smiling.

The paper's diagnosis experiment: Patronus is trained on a CelebA subset selected so that
hair colour predicts smiling; `--mode=interpret` must then find that raising the black-hair
prototype removes the smile. Examples are selected, never duplicated (see data/bias.py).

  python -m patronus_jax.main --config=configs/celeba_bias.py --workdir=runs/celeba_bias
  variants: ':tiny'
"""

from patronus_jax.data import bias as bias_lib

import importlib.util
import os


def _celeba():
  spec = importlib.util.spec_from_file_location('celeba_config', os.path.join(os.path.dirname(__file__), 'celeba.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  config = _celeba().get_config(arg)
  config.name = 'celeba_bias'
  bias_lib.set_celeba_hair_smile(config)
  return config
