"""--mode=evaluate end to end on a tiny trained shapes workdir: metrics.json, skipping, errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from patronus_jax.tasks.patronus import evaluate_mode as evaluate
from patronus_jax import main as main_lib
from patronus_jax.data import shapes as shapes_data
from patronus_jax.tasks.patronus import evaluate_mode as run_lib
from patronus_jax.evaluate import semantics
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import training as training_lib


def _config(data_dir):
  """configs/shapes.py:tiny with a few steps everywhere (CPU seconds)."""
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
  ev.metrics = ('fid', 'probe', 'tad', 'dci', 'semantics')
  ev.semantics_images = 8
  ev.semantics_selection_images = 3
  ev.semantics_generations = 2
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
  # the 20-step classifier is a weak judge; the note names what it reads badly, with its accuracy
  accuracy = metrics['feature_networks']['attribute_classifier']['held_out_accuracy']
  weak = [k for k, v in accuracy.items() if v < 0.9]
  assert weak
  note = [n for n in metrics['notes'] if n.startswith('the attribute classifier reads')]
  assert len(note) == 1 and all(f'{k} {accuracy[k]:.2f}' in note[0] for k in weak)
  assert os.path.exists(os.path.join(workdir, 'evaluate', 'conditional.png'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert os.path.exists(os.path.join(workdir, 'status', 'evaluate.json'))


def test_semantics_scorecard(evaluated):
  config, workdir, metrics = evaluated
  names = set(shapes_data.FACTOR_NAMES)
  sem = metrics['semantics']
  for key in ('probe_auroc', 'best_prototype_auroc', 'controlling_prototype', 'keep_rate', 'keep_rate_chance',
              'edit_success', 'edit_changed_attribute'):
    assert set(sem[key]) == names, key
  assert sem['probe_auroc'] == metrics['probe']['auroc']
  assert sem['num_images'] == 8 and sem['generations_per_image'] == 2
  assert sem['edited_prototypes'] == sorted(set(sem['controlling_prototype'].values()))
  # the first 3 images chose the edited prototypes among the alive ones, the other 5 scored them
  sel = sem['edit_selection']
  assert sel['images'] == 3 and sem['edit_images'] == 5
  assert set(sem['controlling_prototype'].values()) <= set(sel['candidates'])
  assert len(sel['candidates']) == sem['alive_prototypes']
  for n in names:
    assert sel['per_attribute'][n]['prototype'] == sem['controlling_prototype'][n]
    assert sel['per_attribute'][n]['success'] >= sel['per_attribute'][n]['reading_success']
    assert sem['reading_prototype'][n] == int(np.argmax(sem['prototype_auroc'][n]))
  for n in names:
    assert 0.0 <= sem['edit_success'][n] <= sem['edit_changed_attribute'][n] <= 1.0
    assert 0.0 <= sem['keep_rate'][n] <= 1.0 and 0.0 <= sem['keep_rate_chance'][n] <= 1.0
    assert sem['keep_rate_above_chance'][n] == pytest.approx(sem['keep_rate'][n] - sem['keep_rate_chance'][n])
  # the s-only scores, recomputed from the checkpoint and the probe split's labels
  model, variables, _ = loading.load_stage1_variables(config, workdir)
  rep = training_lib.compute_activations(config, model, variables, config.evaluate.probe_split, batch_size=16,
                                         max_examples=metrics['probe']['num_examples'])
  expected = semantics.representation_scores(rep['s'], rep['attributes'], shapes_data.FACTOR_NAMES)
  assert sem['alive_prototypes'] == expected['alive_prototypes'] and sem['num_prototypes'] == 8
  assert sem['duplicate_pairs'] == expected['duplicate_pairs']
  for n in names:
    assert sem['best_prototype_auroc'][n] == pytest.approx(expected['best_prototype_auroc'][n], abs=1e-6)


def test_the_scorecard_is_logged(evaluated):
  """The log line and TensorBoard carry the scorecard's headline numbers."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only to read the event files back)
  _, workdir, metrics = evaluated
  sem = metrics['semantics']
  line = evaluate._summary(metrics)
  assert f"keep_rate: background {sem['keep_rate']['background']:.2f} shape {sem['keep_rate']['shape']:.2f}" in line
  assert f"edit_success: background {sem['edit_success']['background']:.2f}" in line
  assert f"{sem['alive_prototypes']} of 8 prototypes alive, {sem['duplicate_pairs']} duplicate pairs" in line
  logged = {}
  for name in os.listdir(os.path.join(workdir, 'tensorboard')):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, 'tensorboard', name)):
      for value in event.summary.value:
        logged[value.tag] = float(tf.make_ndarray(value.tensor)) if value.HasField('tensor') else value.simple_value
  assert logged['evaluate/semantics/keep_rate/shape'] == pytest.approx(sem['keep_rate']['shape'])
  assert logged['evaluate/semantics/duplicate_pairs'] == sem['duplicate_pairs']
  assert not any(k.startswith('evaluate/semantics/controlling_prototype') for k in logged)


def test_second_call_skips(evaluated, monkeypatch):
  config, workdir, metrics = evaluated
  mtime = os.path.getmtime(os.path.join(workdir, 'metrics.json'))

  def fail(*args, **kwargs):
    raise AssertionError('evaluation recomputed although nothing changed')
  monkeypatch.setattr(training_lib, 'pass_over_split', fail)
  again = evaluate.evaluate_mode(config, workdir, None)
  assert again == metrics
  assert os.path.getmtime(os.path.join(workdir, 'metrics.json')) == mtime
  # Another evaluate config is not skipped.
  changed = _config(config.data.data_dir)
  changed.evaluate.num_samples = 10
  with pytest.raises(AssertionError, match='recomputed'):
    evaluate.evaluate_mode(changed, workdir, None)


def test_real_baseline_counts_as_many_real_images_as_samples(evaluated, tmp_path):
  """The real-vs-real Fréchet distance uses the first num_samples eval images, however many the
  semantics scorecard read (it read 8 < 12 in the fixture; here 40 > 12): the same number."""
  config, workdir, metrics = evaluated
  other = str(tmp_path / 'workdir')
  shutil.copytree(workdir, other, ignore=shutil.ignore_patterns('metrics.json'))
  changed = _config(config.data.data_dir)
  changed.evaluate.metrics = ('fid', 'semantics')
  changed.evaluate.semantics_images = 40
  again = evaluate.evaluate_mode(changed, other, None)
  assert again['fd_classifier']['real_eval_baseline'] == pytest.approx(
      metrics['fd_classifier']['real_eval_baseline'], rel=1e-5)


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


def test_fid_branch_with_weights(trained, tmp_path, monkeypatch):
  """With inception_weights set: FID per sample kind, its network named, real stats cached.

  The Inception network itself is replaced by a cheap stand-in (its own tests are in
  test_evaluate_inception.py); what is tested here is the orchestration.
  """
  from patronus_jax.evaluate import inception  # pylint: disable=g-import-not-at-top
  config, workdir = trained
  copy = tmp_path / 'wd'
  shutil.copytree(os.path.join(workdir, 'checkpoints'), copy / 'checkpoints')
  weights = tmp_path / 'pt_inception.npz'
  np.savez(weights, w=np.arange(3.0))
  calls = []

  def fake_features(variables, images, batch_size=100, quantize=True):
    calls.append(len(images))
    x = np.asarray(images, np.float32)
    x = x / 127.5 - 1.0 if np.asarray(images).dtype == np.uint8 else x
    return np.concatenate([x.mean((1, 2)), x.std((1, 2)), x[:, ::8, ::8, 0].reshape(len(x), -1)], 1)

  monkeypatch.setattr(inception, 'load_inception_variables', lambda path: {'w': np.load(path)['w']})
  monkeypatch.setattr(inception, 'inception_features', fake_features)
  config = _config(config.data.data_dir)
  config.evaluate.inception_weights = str(weights)
  config.evaluate.metrics = ('fid', 'fd_classifier')
  config.evaluate.samples = ('conditional',)
  metrics = evaluate.evaluate_mode(config, str(copy), None)
  assert 'fid_not_computed' not in metrics
  fid = metrics['fid']
  assert np.isfinite(fid['conditional']) and 'unconditional' not in fid
  assert fid['network'].startswith('inception_pool3-')
  assert metrics['feature_networks']['fid']['path'] == str(weights)
  assert np.isfinite(metrics['fd_classifier']['conditional'])
  assert 'probe' not in metrics and 'tad' not in metrics
  assert metrics['checkpoints']['latent_step'] is None  # conditional samples only: no latent model read
  assert len(os.listdir(copy / 'fid_stats')) == 2  # Inception and classifier statistics
  assert sum(calls) == 100 + 12 + 12  # real train reference, real eval baseline, samples
  # The real statistics are read back from the cache by a new evaluation.
  calls.clear()
  config.evaluate.num_samples = 10
  evaluate.evaluate_mode(config, str(copy), None)
  assert sum(calls) == 10 + 10


def test_tables_script(evaluated, capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  _, workdir, metrics = evaluated
  path = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'tables.py')
  spec = importlib.util.spec_from_file_location('tables', path)
  tables = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tables)
  assert tables.main([f'tiny={workdir}', '--format=json']) == 0
  rows = json.loads(capsys.readouterr().out)
  assert rows[0]['run'] == 'tiny' and rows[0]['tad'] == metrics['tad']['tad']
  assert rows[0]['fid_unconditional'] is None
  assert rows[0]['fd_classifier_unconditional'] == metrics['fd_classifier']['unconditional']
  keep = metrics['semantics']['keep_rate']
  assert rows[0]['keep_rate'] == pytest.approx(sum(keep.values()) / len(keep))
  assert rows[0]['duplicate_pairs'] == metrics['semantics']['duplicate_pairs']
  assert tables.main([str(workdir) + '_missing']) == 1


def test_generation_in_quantised_blocks(monkeypatch):
  """Samples are generated block by block (bounded float memory) and kept as 8-bit images."""
  from patronus_jax.tasks.patronus import sample as sample_lib  # pylint: disable=g-import-not-at-top
  from configs import shapes  # pylint: disable=g-import-not-at-top
  config = shapes.get_config('tiny')
  config.evaluate.batch_size = 4
  calls = []

  def fake_generate_batched(model, variables, s, key, spec, shape, batch_size, x_T=None, label=''):
    calls.append((len(s), batch_size, label, None if x_T is None else x_T[:, 0, 0, 0]))
    return np.broadcast_to(np.tanh(s[:, :1, None, None]), (len(s),) + tuple(shape)).astype(np.float32)

  monkeypatch.setattr(sample_lib, 'generate_batched', fake_generate_batched)
  monkeypatch.setattr(run_lib, 'GENERATE_BLOCK', 10)  # -> blocks of 8 (a multiple of the batch)
  s = np.linspace(-2, 2, 21, dtype=np.float32)[:, None].repeat(3, 1)
  images = run_lib._generate(config, None, None, s, jax.random.PRNGKey(0), 'test')  # pylint: disable=protected-access
  assert [c[0] for c in calls] == [8, 8, 5] and 'block 3/3' in calls[-1][2]
  assert images.dtype == np.uint8 and images.shape == (21, 32, 32, 3)
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.clip(np.round((np.tanh(s[:, 0]) + 1) * 127.5), 0, 255))
  # given noise travels with its rows, block by block
  calls.clear()
  x_T = np.broadcast_to(np.arange(21.0, dtype=np.float32)[:, None, None, None], (21, 32, 32, 3))
  run_lib._generate(config, None, None, s, jax.random.PRNGKey(0), 'test', x_T=x_T)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.concatenate([c[3] for c in calls]), np.arange(21.0))


def test_padded_map_pads_and_cuts():
  """One compiled shape: every batch is full, outputs are cut back to the real rows."""
  from patronus_jax.core import batching  # pylint: disable=g-import-not-at-top
  seen, done = [], []

  def fn(i, x, y):
    seen.append((i, x.shape[0], x[-1, 0], y[-1]))
    return {'sum': x.sum(1) + y, 'index': np.full(len(x), i)}

  x, y = np.arange(10.0).reshape(5, 2), np.arange(5.0)
  out = batching.padded_map(fn, (x, y), 2, pad='edge', progress=done.append)
  np.testing.assert_array_equal(out['sum'], x.sum(1) + y)
  np.testing.assert_array_equal(out['index'], [0, 0, 1, 1, 2])
  assert [s[:2] for s in seen] == [(0, 2), (1, 2), (2, 2)] and seen[-1][2:] == (8.0, 4.0)  # last row repeated
  assert done == [2, 4, 5]
  zeros = batching.padded_map(lambda i, a: a * 0 + a[-1], np.arange(1.0, 4.0), 2)
  np.testing.assert_array_equal(zeros, [2, 2, 0])  # the padded batch ends in a zero row
  short = batching.padded_map(lambda i, a: np.full(len(a), len(a)), np.arange(3), 2, pad=None)
  np.testing.assert_array_equal(short, [2, 2, 1])


def test_skip_records(tmp_path):
  from patronus_jax.core import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  wd, out = str(tmp_path), str(tmp_path / 'out.json')
  assert not workdir_lib.is_done(wd, 'evaluate', {'a': 1})
  workdir_lib.record_done(wd, 'evaluate', {'a': 1})
  assert not workdir_lib.is_done(wd, 'evaluate', {'a': 1}, [out])  # its output is missing
  open(out, 'w').close()
  assert workdir_lib.is_done(wd, 'evaluate', {'a': 1}, [out])
  assert not workdir_lib.is_done(wd, 'evaluate', {'a': 2}, [out])
  workdir_lib.record_done(wd, 'interpret', {'k': 1}, part='visualize', seconds=2.0)
  workdir_lib.record_done(wd, 'interpret', {'k': 2}, part='semantics', seconds=3.0)
  assert workdir_lib.read_status(wd, 'interpret') == {
      'parts': {'visualize': {'key': {'k': 1}, 'seconds': 2.0}, 'semantics': {'key': {'k': 2}, 'seconds': 3.0}}}
  assert workdir_lib.is_done(wd, 'interpret', {'k': 2}, part='semantics')
  assert not workdir_lib.is_done(wd, 'interpret', {'k': 1}, part='semantics')


def test_timed_fills_the_dict():
  from patronus_jax.core import timing  # pylint: disable=g-import-not-at-top
  timings = {}
  with timing.timed(timings, 'block'):
    sum(range(1000))
  assert list(timings) == ['block'] and 0 <= timings['block'] < 5


def test_the_skip_key_names_the_samplers_and_clipping_and_keeps_the_ddim_key(tmp_path):
  # DPM-Solver++(2M) for the image and the latent model enters the key with its spacing (it used to
  # raise TypeError: 'sampler' twice); a DDIM evaluation's key is the one written before solvers existed
  config = _config(str(tmp_path))
  plain = evaluate._config_fields(config)
  assert 'spacing' not in plain['image_sampler'] and plain['image_sampler']['sampler'] == 'ddim'
  assert 'sampler' not in plain['latent_sampler'] and 'spacing' not in plain['latent_sampler']
  config.diffusion.sampler = 'dpmpp2m'
  config.latent.sampler, config.latent.eta = 'dpmpp2m', 0.0
  fields = evaluate._config_fields(config)
  assert fields['image_sampler'] == dict(plain['image_sampler'], sampler='dpmpp2m', spacing='logsnr')
  assert fields['latent_sampler'] == dict(plain['latent_sampler'], eta=0.0, sampler='dpmpp2m', spacing='logsnr')
  # clipping x0_hat changes every generation: a clipped evaluation is not the unclipped one's (it was)
  config.diffusion.clip_x0 = 1.0
  assert evaluate._config_fields(config)['image_sampler'] == dict(fields['image_sampler'], clip_x0=1.0)
