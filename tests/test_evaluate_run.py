"""--mode=evaluate end to end on a tiny trained shapes workdir: metrics.json, skipping, errors."""

import json
import os
import shutil

import numpy as np
import pytest

from patronus_jax import evaluate
from patronus_jax import main as main_lib
from patronus_jax.data import shapes as shapes_data
from patronus_jax.evaluate import run as run_lib


def _config(data_dir):
  from configs import shapes  # pylint: disable=g-import-not-at-top
  config = shapes.get_config('tiny')
  config.data.data_dir = str(data_dir)
  config.data.read_threads = 2
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  config.train.log_every = 3
  config.latent.num_steps = 3
  config.latent.checkpoint_every = 3
  config.latent.log_every = 3
  config.diffusion.sample_steps = 2
  config.latent.sample_steps = 2
  ev = config.evaluate
  ev.num_samples = 12
  ev.batch_size = 8
  ev.metrics = ('fid', 'probe', 'tad', 'dci')
  ev.probe_folds = 3
  ev.tad_folds = 3
  ev.dci_num_estimators = 5
  ev.fid_num_real = 100
  ev.classifier_num_steps = 20
  ev.classifier_batch_size = 32
  ev.classifier_widths = (8, 16)
  ev.classifier_feature_dim = 16
  ev.classifier_max_examples = 200
  return config


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A workdir with tiny stage-1 and latent checkpoints (and its config)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  workdir = str(tmp_path_factory.mktemp('evaluate_workdir'))
  config = _config(data_dir)
  main_lib.run(config, workdir, 'train')
  main_lib.run(config, workdir, 'train_latent')
  return config, workdir


@pytest.fixture(scope='session')
def evaluated(trained):
  config, workdir = trained
  main_lib.run(config, workdir, 'evaluate')
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return config, workdir, json.load(f)


def test_metrics_json(evaluated):
  config, workdir, metrics = evaluated
  names = list(shapes_data.FACTOR_NAMES)
  # FID: absent, with the reason; fd_classifier instead, its network named.
  assert 'fid' not in metrics
  assert 'inception_weights' in metrics['fid_not_computed']
  fd = metrics['fd_classifier']
  for kind in ('conditional', 'unconditional', 'real_eval_baseline'):
    assert np.isfinite(fd[kind]) and fd[kind] >= -1e-6
  assert fd['network'].startswith('attribute_classifier-')
  assert metrics['feature_networks']['fd_classifier']['name'] == fd['network']
  assert set(metrics['feature_networks']['fd_classifier']['held_out_accuracy']) == set(names)
  assert 'fid' not in metrics['feature_networks']
  assert fd['reference'] == dict(split='train', num_examples=100, cache=fd['reference']['cache'])
  assert os.path.exists(fd['reference']['cache'])
  assert metrics['sample_counts'] == {'conditional': 12, 'unconditional': 12}
  # The eval split has 64 images: conditional samples use the first 12.
  assert fd['num_samples'] == {'conditional': 12, 'unconditional': 12, 'real_eval_baseline': 12}
  cond, uncond = metrics['samples']['conditional'], metrics['samples']['unconditional']
  assert set(cond['attribute_agreement']) == set(names)
  assert set(uncond['attribute_total_variation']) == set(names)
  assert -1.0 <= cond['s_consistency']['pearson_pooled'] <= 1.0
  # Probes: AUROC per shapes factor, and the means.
  probe = metrics['probe']
  assert set(probe['auroc']) == set(names)
  assert all(0.0 <= v <= 1.0 for v in probe['auroc'].values())
  assert 0.0 <= probe['mean_auroc_all'] <= 1.0
  assert probe['folds'] == 3 and probe['num_examples'] == 64
  # TAD on one-vs-rest indicators of the categorical factors; DCI on the factors.
  tad = metrics['tad']
  assert tad['tad'] >= 0.0 and tad['binarisation']
  assert 'color=red' in tad['best_auroc'] and 'size' in tad['best_auroc']
  dci = metrics['dci']
  for k in ('disentanglement', 'completeness', 'informativeness'):
    assert 0.0 <= dci[k] <= 1.0
  assert np.asarray(dci['importance']).shape == (config.model.num_prototypes, len(names))
  # Bookkeeping.
  assert metrics['checkpoints'] == {'stage1_step': 3, 'latent_step': 3}
  assert metrics['config']['evaluate']['num_samples'] == 12
  assert metrics['timings_seconds']['total'] > 0
  assert any('FID not computed' in n for n in metrics['notes'])
  assert os.path.exists(os.path.join(workdir, 'evaluate', 'conditional.png'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert os.path.exists(os.path.join(workdir, 'status', 'evaluate.json'))


def test_second_call_skips(evaluated, monkeypatch):
  config, workdir, metrics = evaluated
  mtime = os.path.getmtime(os.path.join(workdir, 'metrics.json'))

  def fail(*args, **kwargs):
    raise AssertionError('evaluation recomputed although nothing changed')
  monkeypatch.setattr(run_lib, '_pass_over_split', fail)
  again = evaluate.evaluate_mode(config, workdir, None)
  assert again == metrics
  assert os.path.getmtime(os.path.join(workdir, 'metrics.json')) == mtime
  # Another evaluate config is not skipped.
  changed = _config(config.data.data_dir)
  changed.evaluate.num_samples = 10
  with pytest.raises(AssertionError, match='recomputed'):
    evaluate.evaluate_mode(changed, workdir, None)


def test_missing_checkpoints(trained, tmp_path):
  config, workdir = trained
  with pytest.raises(evaluate.MissingCheckpointError, match='--mode=train\\b') as e:
    evaluate.evaluate_mode(config, str(tmp_path / 'empty'), None)
  assert '--mode=train_latent' in str(e.value)
  # Stage 1 only: the latent model is named, with the mode that trains it.
  partial = tmp_path / 'stage1_only'
  shutil.copytree(os.path.join(workdir, 'checkpoints', 'stage1'), partial / 'checkpoints' / 'stage1')
  with pytest.raises(evaluate.MissingCheckpointError) as e:
    evaluate.evaluate_mode(config, str(partial), None)
  assert 'latent' in str(e.value) and '--mode=train_latent' in str(e.value)
  assert 'stage-1' not in str(e.value)
