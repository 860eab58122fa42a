"""Fashion-MNIST 32x32x1: 30 prototypes, batch 128, 100 epochs (~47k steps).

The official latent UNet1D for Fashion-MNIST has two levels, mults (1, 2).

  python -m patronus_jax.main --config=configs/fmnist.py --workdir=runs/fmnist
  variants: ':tiny'
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'fmnist'
  config.data.name = 'fashion_mnist'
  config.data.image_size = 32
  config.data.channels = 1
  config.model.num_prototypes = 30
  config.train.batch_size = 128
  config.train.num_steps = 47_000  # 100 epochs of 60,000 images
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.channel_mults = (1, 2)
  config.latent.num_steps = 47_000  # 200 epochs
  config.evaluate.num_samples = 10_000
  if arg == 'tiny':
    config_lib.tiny_variant(config)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/fmnist.py; expected '' or 'tiny'")
  return config
