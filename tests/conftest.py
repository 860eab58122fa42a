"""Test set-up: 8 simulated CPU devices (mesh tests), a shared compilation cache, fixtures."""

import os
import tempfile

# Must happen before JAX is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole session, subprocesses included: tests that
# build the same tiny models compile them once (XLA compiles are the slow part on a CPU).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='patronus_jax_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # pylint: disable=g-import-not-at-top

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


@pytest.fixture(scope='session')
def fixtures_dir():
  return FIXTURES


@pytest.fixture(scope='module')
def shapes_config(tmp_path_factory):
  """The tiny shapes config on 256 training images prepared in a data dir of the test module."""
  from patronus_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(os.path.dirname(FIXTURES), '..', 'configs', 'shapes.py') + ':tiny')
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.data.shapes.num_train = 256
  config.data.shapes.num_test = 32
  config.train.log_every = 2
  return config
