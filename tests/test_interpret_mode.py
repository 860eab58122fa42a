"""interpret: `--mode=interpret` on a tiny shapes workdir writes report.json and the figures,
skips what it has done, and fails early on bad `config.interpret` values.

The workdir holds fixed random weights written as a finished checkpoint and a saved
attribute classifier, so no training runs here: the numbers are those of an untrained model,
and the test checks the mode's mechanics and outputs, not the model's quality. (The weights
are drawn with NumPy into the shapes `eval_shape` gives: compiling the U-Net's Flax init takes
minutes on a loaded CPU.)
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes
from patronus_jax import config as config_lib
from patronus_jax.core import diffusion
from patronus_jax.core import files
from patronus_jax import main
from patronus_jax.tasks.patronus import loading
from patronus_jax.models import unet


def tiny_config():
  c = shapes.get_config('tiny')
  ic = c.interpret
  ic.sampler = 'dpmpp2m'  # every inversion, regeneration and trajectory (shapes.py may pick ddim)
  ic.sample_steps = 3
  ic.batch_size = 8
  ic.num_eval_images = 32
  ic.num_visualize_images = 3
  ic.num_consistency_images = 2
  ic.visualize_prototypes = (0, 5)
  ic.num_semantic_images = 2
  ic.num_variations = 1
  ic.manipulate_prototypes = (1,)
  ic.extrapolation_alphas = (0.0, 2.0)
  ic.manipulate_amounts = (1.0,)
  ic.num_interpolation_pairs = 1
  ic.interpolation_steps = 3
  ic.num_emergence_samples = 8
  ic.num_diagnosis_samples = 8
  ic.diagnosis_prototypes = (0, 1)
  ic.diagnosis_bootstrap = 50
  return c


def random_like(shapes_, seed=0):
  """NumPy weights for a tree of ShapeDtypeStructs (buffers get their true values)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'ones':
      return np.ones(leaf.shape, np.float32)
    if name == 'table':
      return unet.sinusoidal_table(*leaf.shape)
    if name == 'prototype_vectors':
      return rng.uniform(0, 1, leaf.shape).astype(np.float32)
    if name == 'scale':
      return np.ones(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0
    if not fan_in:
      return np.zeros(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes_)


def fixed_variables(c):
  model = unet.patronus_from_config(c, dtype='float32')
  return random_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                    jnp.zeros((1,), jnp.int32)))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  from patronus_jax.evaluate import classifier as clf_lib
  from patronus_jax.evaluate.workdir_classifier import classifier_dir, trained_for
  wd = str(tmp_path_factory.mktemp('interpret_tiny'))
  c = tiny_config()
  variables = fixed_variables(c)
  loading.write_imported_state('stage1', wd, c, variables, 'fixed test weights')
  cards = (3, 3, 4, 2, 4, 2)
  names = ('background', 'shape', 'color', 'size', 'position', 'stripes')
  net = clf_lib.AttributeClassifierNet(cards, (8, 8), 16)
  params = random_like(jax.eval_shape(net.init, jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3))), 1)['params']
  clf = clf_lib.AttributeClassifier(params, cards, (32, 32, 3), names, (8, 8), 16)
  clf_lib.save_classifier(clf, classifier_dir(c, wd), {'trained_for': trained_for(c), 'mean_accuracy': 0.5,
                                                       'accuracy': {n: 0.5 for n in names}})
  return wd


def test_interpret_mode_writes_report_and_figures(workdir):
  c = tiny_config()
  main.run(c, workdir, 'interpret')
  out = os.path.join(workdir, 'interpret')
  report = files.read_json(os.path.join(out, 'report.json'))
  for part in ('visualize', 'semantics', 'emergence', 'diagnosis'):
    assert part in report and os.path.exists(os.path.join(out, f'{part}.json'))
  expected = {'prototypes.png', 'consistency/prototype_000.png', 'consistency/prototype_005.png',
              'reconstruction.png', 'extrapolation.png', 'manipulation.png', 'interpolation.png',
              'emergence_prototypes.png', 'emergence_steps.png', 'emergence_attributes.png',
              'emergence_snapshots.png', 'diagnosis_effects.png', 'diagnosis_findings.png',
              'diagnosis_examples.png'}
  assert expected <= set(report['figures'])
  for name in report['figures']:
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  vis = report['visualize']
  assert [p['prototype'] for p in vis['prototypes']] == [0, 5]
  for p in vis['prototypes']:
    y0, y1, x0, x1 = p['best_box']
    assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
  em = report['emergence']
  assert em['num_steps'] == 3 and em['source'] == 'data'
  # the trajectories are the dpmpp2m loop's: its logSNR-spaced timesteps, noisiest first
  spec = diffusion.SamplerSpec(c.diffusion.schedule, c.diffusion.timesteps, 'dpmpp2m', 3, spacing='logsnr')
  assert em['timesteps'] == spec.timesteps_used().tolist() != [999, 500, 0]
  assert report['sampler'] == 'dpmpp2m' and report['sample_steps'] == 3
  for p in em['prototypes']:
    assert 0 <= p['step']['mean'] <= 2 and 0 <= p['fraction']['mean'] <= 1
  assert sorted(em['attribute_ranking']) == sorted(report['attributes'])
  diag = report['diagnosis']
  assert [p['prototype'] for p in diag['prototypes']] == [0, 1]
  assert diag['num_samples'] == 8 and diag['classifier']['mean_accuracy'] == 0.5
  assert set(diag['prototypes'][0]['directions']) == {'lower', 'raise'}
  assert len(report['observed_range']['low']) == c.model.num_prototypes
  assert report['summary']['suspected_pairs'] == diag['suspected_pairs']

  # Same checkpoint and config: nothing is recomputed.
  status = files.read_json(os.path.join(workdir, 'status', 'interpret.json'))
  main.run(c, workdir, 'interpret')
  again = files.read_json(os.path.join(out, 'report.json'))
  assert again['part_seconds'] == report['part_seconds']
  assert files.read_json(os.path.join(workdir, 'status', 'interpret.json')) == status


@pytest.mark.parametrize('field, value, message', [
    ('parts', ('visualize', 'dreams'), 'interpret.parts'),
    ('sample_steps', 0, 'interpret.sample_steps'),
    ('sampler', 'ddpm', 'interpret.sampler'),
    ('high_quantile', 0.0, 'interpret.low_quantile'),
    ('visualize_scope', 'local', 'interpret.visualize_scope'),
    ('diagnosis_ci_level', 1.0, 'interpret.diagnosis_ci_level'),
    ('visualize_prototypes', (1, 1), 'interpret.visualize_prototypes'),
    ('emergence_steps', -2, 'interpret.emergence_steps'),
])
def test_bad_values_name_the_field(field, value, message):
  c = tiny_config()
  c.interpret[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def test_model_dependent_checks():
  from configs import celeba_bias
  from patronus_jax.interpret import config as icfg
  c = celeba_bias.get_config()
  config_lib.validate(c)
  assert tuple(c.interpret.diagnosis_attributes) == ('Smiling', 'Black_Hair', 'Blond_Hair', 'Brown_Hair')
  c = tiny_config()
  c.interpret.diagnosis_prototypes = (9,)
  with pytest.raises(config_lib.ConfigError, match='interpret.diagnosis_prototypes.*8'):
    icfg.check_against_model(c.interpret, 8)
  c.interpret.diagnosis_prototypes = ()
  c.interpret.diagnosis_attributes = ('colour',)
  with pytest.raises(config_lib.ConfigError, match="interpret.diagnosis_attributes.*'colour'"):
    icfg.check_against_model(c.interpret, 8, ('shape', 'color'))
