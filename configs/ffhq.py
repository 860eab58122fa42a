"""FFHQ at 64x64 (paper: FID 37.3, AUROC 0.92), from an image folder.

Point `data.folder.path` at the FFHQ images (any resolution; resized bicubic/antialiased):
  python -m patronus_jax.main --config=configs/ffhq.py --workdir=runs/ffhq \
      --config.data.folder.path=/data/ffhq/images1024x1024
Optional labels: --config.data.folder.labels_csv=attributes.csv (a path column + label columns).
  variants: ':tiny'
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'ffhq'
  config.data.name = 'ffhq'
  config.data.image_size = 64
  config.data.folder.check_channels = 3
  config.data.eval_split = 'test'
  config.model.num_prototypes = 100
  config.train.batch_size = 64
  config.train.num_steps = 328_000  # 300 epochs of 70,000 images
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.num_steps = 55_000
  config.evaluate.num_samples = 10_000
  if arg == 'tiny':
    config_lib.tiny_variant(config, image_size=32)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/ffhq.py; expected '' or 'tiny'")
  return config
