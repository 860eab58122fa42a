"""CIFAR-10 32x32 (paper: FID 32.9): 100 prototypes, batch 128, 300 epochs (~117k steps).

  python -m patronus_jax.main --config=configs/cifar10.py --workdir=runs/cifar10
  variants: ':tiny'
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'cifar10'
  config.data.name = 'cifar10'
  config.data.image_size = 32
  config.model.num_prototypes = 100
  config.train.batch_size = 128
  config.train.num_steps = 117_000  # 300 epochs of 50,000 images
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.num_steps = 39_000  # 200 epochs
  config.evaluate.num_samples = 10_000  # the test set
  if arg == 'tiny':
    config_lib.tiny_variant(config)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/cifar10.py; expected '' or 'tiny'")
  return config
