"""CelebA 64x64, the paper's main setting (Patronus, ICLR 2026).

100 prototypes; U-Net base 64, mults (1, 2, 4, 4), no level attention, dropout 0.1; linear
betas over T=1000; AdamW lr 1e-5, batch 64, 300 epochs (162,770 images: ~763k steps).
Latent UNet1D: base 64, mults (1, 2, 4), 3 blocks, dropout 0.2, T=100, Adam 1e-4, batch 256,
200 epochs (~127k steps), DDIM eta 0.1.

  python -m patronus_jax.main --config=configs/celeba.py --workdir=runs/celeba
  variants: ':tiny' (a minute on CPU, same code paths)
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'celeba'
  config.data.name = 'celeb_a'
  config.data.image_size = 64
  config.data.eval_split = 'test'
  config.model.num_prototypes = 100
  config.train.batch_size = 64
  config.train.num_steps = 763_000  # 300 epochs
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.num_steps = 127_000  # 200 epochs
  config.sample.num_samples = 64
  config.evaluate.num_samples = 19_962  # the CelebA test set, as the paper
  if arg == 'tiny':
    config_lib.tiny_variant(config, image_size=32)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/celeba.py; expected '' or 'tiny'")
  return config
