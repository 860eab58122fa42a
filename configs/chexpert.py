"""CheXpert 224x224x1 (paper's medical setting), from an image folder + the CheXpert CSVs.

Prototype encoder of 5 layers, kernels 5, strides (2, 2, 1, 1, 1), paddings (1, 1, 0, 0, 0);
100 prototypes; batch 16. At 224x224 the U-Net's activations are large: `model.remat=True`
(default here) recomputes each residual block in the backward pass to fit 16 GB accelerators.

  python -m patronus_jax.main --config=configs/chexpert.py --workdir=runs/chexpert \
      --config.data.folder.path=/data/chexpert   (the directory holding CheXpert-v1.0-small/)
  variants: ':tiny'
"""

from patronus_jax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = 'chexpert'
  config.data.name = 'chexpert'
  config.data.image_size = 224
  config.data.channels = 1
  config.data.folder.labels_csv = 'CheXpert-v1.0-small/train.csv'
  config.data.folder.eval_labels_csv = 'CheXpert-v1.0-small/valid.csv'
  config.data.folder.check_channels = 1
  config.model.num_prototypes = 100
  config.model.encoder_channels = (32, 64, 64, 128, 128)
  config.model.encoder_kernels = (5, 5, 5, 5, 5)
  config.model.encoder_strides = (2, 2, 1, 1, 1)
  config.model.encoder_paddings = (1, 1, 0, 0, 0)
  config.model.remat = True
  config.train.batch_size = 16
  config.train.num_steps = 300_000
  config.train.learning_rate = 1e-5
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.latent.num_steps = 50_000
  config.sample.batch_size = 16
  config.evaluate.num_samples = 1_000
  if arg == 'tiny':
    config_lib.tiny_variant(config, image_size=64)
    config.model.encoder_channels = (8, 16, 16, 16, 16)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/chexpert.py; expected '' or 'tiny'")
  return config
