"""experiments/pooling_probe.py's capacity check: a fresh prototype network trained on labels."""

import importlib.util
import os

import numpy as np

from patronus_jax import config as config_lib

ROOT = os.path.join(os.path.dirname(__file__), '..')


def _probe_module():
  spec = importlib.util.spec_from_file_location('pooling_probe', os.path.join(ROOT, 'experiments', 'pooling_probe.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _squares(n, rng):
  """Grey images with one 6x6 square of a random primary colour at a random place."""
  images = np.full((n, 16, 16, 3), -0.5, np.float32)
  colour = rng.randint(0, 3, n)
  for i in range(n):
    y, x = rng.randint(0, 10, 2)
    images[i, y:y + 6, x:x + 6] = -1.0
    images[i, y:y + 6, x:x + 6, colour[i]] = 1.0
  return images, colour


def test_capacity_reads_what_one_patch_shows_and_not_noise():
  probe = _probe_module()
  config = config_lib.load('configs/quickstart.py:tiny', {'data.image_size': 16})
  rng = np.random.RandomState(0)
  x_train, c_train = _squares(256, rng)
  x_test, c_test = _squares(128, rng)
  noise_train, noise_test = rng.randint(0, 3, 256), rng.randint(0, 3, 128)  # labels that no image shows
  accuracy = probe.supervised_capacity(
      config, {'image': x_train, 'attributes': np.stack([c_train, noise_train], 1)},
      {'image': x_test, 'attributes': np.stack([c_test, noise_test], 1)}, [3, 3], steps=150)
  assert accuracy.shape == (2,)
  assert accuracy[0] >= 0.95, accuracy  # the square's colour: any patch on it shows it
  assert accuracy[1] <= 0.5, accuracy  # held-out noise labels stay near chance (1/3)
