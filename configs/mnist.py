"""MNIST 32x32x1: 30 prototypes, batch 128, 100 epochs (~47k steps).

30 is not divisible by 4, so the official three-level latent UNet1D would return 28 values;
here s is zero-padded to 32 and cropped back (latent.py, pad_to_fit).

  python -m patronus_jax.main --config=configs/mnist.py --workdir=runs/mnist
  variants: ':tiny'
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'mnist'
  config.data.name = 'mnist'
  config.data.image_size = 32
  config.data.channels = 1
  config.model.num_prototypes = 30
  config.train.batch_size = 128
  config.train.num_steps = 47_000
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.num_steps = 47_000
  config.evaluate.num_samples = 10_000
  if arg == 'tiny':
    config_lib.tiny_variant(config)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/mnist.py; expected '' or 'tiny'")
  return config
