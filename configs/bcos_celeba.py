"""B-cos diffusion on CelebA 64x64, conditioned on captions built from the 40 attributes.

  --config=configs/bcos_celeba.py           the paper-scale run (accelerator)
  --config=configs/bcos_celeba.py:tiny      smoke-test size (CPU)
  --config=configs/bcos_celeba.py:x0        x0-prediction (the poster: costs some quality)
  --config=configs/bcos_celeba.py:prototypes  the Patronus model built from B-cos layers:
                                            tokens s_j e_j of 100 prototype activations
"""

from patronus_jax.config import base_config


def get_config(arg=None):
  variant = arg or 'default'
  if variant not in ('default', 'tiny', 'x0', 'prototypes'):
    raise ValueError(f"configs/bcos_celeba.py: unknown variant {variant!r}; "
                     "expected 'default', 'tiny', 'x0' or 'prototypes'")
  config = base_config()
  config.name = f'bcos_celeba_{variant}'
  config.model_type = 'bcos'
  config.data.name = 'celeb_a'
  config.data.image_size = 64
  config.data.channels = 3

  config.diffusion.timesteps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.prediction = 'x0' if variant == 'x0' else 'eps'
  config.diffusion.sample_steps = 100

  config.bcos.b = 2.0
  config.bcos.max_out = 1
  config.bcos.base_channels = 64
  config.bcos.channel_mults = (1, 2, 4, 4)
  config.bcos.num_res_blocks = 2
  config.bcos.self_attention = (False, False, True, True)
  config.bcos.cross_attention = (False, True, True, True)
  config.bcos.num_heads = 4
  config.bcos.token_dim = 128
  config.bcos.max_tokens = 48
  config.bcos.token_dropout = 0.1
  config.bcos.num_explain = 16

  config.train.batch_size = 64
  config.train.num_steps = 200_000
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 1000
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.9999
  config.train.checkpoint_every = 5000

  if variant == 'prototypes':
    config.bcos.conditioning = 'prototypes'
    config.model.num_prototypes = 100
  elif variant == 'tiny':
    config.data.image_size = 32
    config.bcos.base_channels = 8
    config.bcos.channel_mults = (1, 2)
    config.bcos.num_res_blocks = 1
    config.bcos.self_attention = (False, True)
    config.bcos.cross_attention = (False, True)
    config.bcos.num_groups = 4
    config.bcos.num_heads = 2
    config.bcos.time_dim = 16
    config.bcos.token_dim = 16
    config.bcos.num_explain = 2
    config.diffusion.sample_steps = 10
    config.train.batch_size = 8
    config.train.num_steps = 50
    config.train.warmup_steps = 5
    config.train.ema_decay = 0.0
    config.train.log_every = 10
    config.train.checkpoint_every = 25
  return config
