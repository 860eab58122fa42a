"""B-cos diffusion on CelebA 64x64, conditioned on captions built from the 40 attributes.

  --config=configs/bcos_celeba.py           the paper-scale run (accelerator)
  --config=configs/bcos_celeba.py:tiny      smoke-test size (CPU)
  --config=configs/bcos_celeba.py:x0        x0-prediction (the poster: costs some quality)
  --config=configs/bcos_celeba.py:prototypes  the Patronus model built from B-cos layers:
                                            tokens s_j e_j of 100 prototype activations

The model and training settings are configs/bcos_shapes.py's (':full' for the paper-scale
variants, ':tiny' for ':tiny'); what changes is the data and what depends on it: 64x64 images,
wider middle levels (channel mults (1, 2, 4, 4)), longer captions, batch 64 for 200,000 steps.
"""

import os

from patronus_jax import config as config_lib

BCOS_SHAPES = os.path.join(os.path.dirname(__file__), 'bcos_shapes.py')


def get_config(arg=None):
  variant = arg or 'default'
  if variant not in ('default', 'tiny', 'x0', 'prototypes'):
    raise ValueError(f"configs/bcos_celeba.py: unknown variant {variant!r}; "
                     "expected 'default', 'tiny', 'x0' or 'prototypes'")
  config = config_lib.config_from_file(f"{BCOS_SHAPES}:{'tiny' if variant == 'tiny' else 'full'}")
  config.name = f'bcos_celeba_{variant}'
  config.data.name = 'celeb_a'
  config.diffusion.prediction = 'x0' if variant == 'x0' else 'eps'
  config.bcos.max_tokens = 48  # up to 40 attribute words per caption
  config.bcos.token_subsample = 0.0  # shapes' frequent-word subsampling: off here (not tuned on CelebA)
  config.train.learning_rate = 2e-4
  if variant != 'tiny':
    config.data.image_size = 64
    config.bcos.channel_mults = (1, 2, 4, 4)
    config.bcos.num_explain = 16
    config.train.batch_size = 64
    config.train.num_steps = 200_000
  if variant == 'prototypes':
    config.bcos.conditioning = 'prototypes'
    config.model.num_prototypes = 100
  return config
