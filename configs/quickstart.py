"""The quickstart: the built-in shapes data and a model that trains on a 2-core CPU in minutes.

  python -m patronus_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

runs stage 1, stage 2, sampling, interpretation and evaluation, writing samples, prototype
figures and metrics into the workdir. Same architecture family as the paper's model, scaled
down (see configs/shapes.py for the full-length shapes run).
"""

import importlib.util
import os


def _shapes():
  spec = importlib.util.spec_from_file_location('shapes_config', os.path.join(os.path.dirname(__file__), 'shapes.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  config = _shapes().get_config(arg)
  config.name = 'quickstart'
  config.data.shapes.num_train = 6_000
  config.data.shapes.num_test = 500
  config.train.num_steps = 3_000
  config.train.checkpoint_every = 500
  config.train.sample_every = 1_000
  config.latent.num_steps = 1_500
  config.latent.checkpoint_every = 500
  config.sample.num_samples = 64
  config.evaluate.num_samples = 256
  return config
