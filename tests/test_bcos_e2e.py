"""The B-cos path end to end through `patronus_jax.main.run` on configs/bcos_shapes.py:tiny:
train (and the vanilla baseline into <workdir>/vanilla) -> explain -> evaluate, and resume."""

import os

import jax
import numpy as np
import pytest

from patronus_jax import config as config_lib
from patronus_jax import main as main_lib
from patronus_jax.core import files as pio
from patronus_jax.tasks.bcos import task as bcos_task
from patronus_jax.tasks.bcos import tokenizer as text_lib

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'bcos_shapes.py')
STEPS = 8


def tiny_config(data_dir, **train):
  config = config_lib.load(CONFIG + ':tiny')
  config.data.data_dir = data_dir
  config.data.shapes.num_train = 256
  config.data.shapes.num_test = 32
  config.train.num_steps = STEPS
  config.train.checkpoint_every = 4
  config.train.log_every = 4
  config.train.ema_decay = 0.9  # so that resuming must restore the EMA too
  config.evaluate.num_samples = 16
  config.evaluate.batch_size = 8
  config.bcos.num_explain = 8  # explain and evaluate then share the whole-generation explanation's compilation
  config.diffusion.sample_steps = 4
  # One level (attention in the bottleneck only): half the layers of ':tiny', and XLA's compile time,
  # not the steps, is what these tests spend.
  config.bcos.channel_mults, config.bcos.self_attention, config.bcos.cross_attention = (1,), (False,), (False,)
  for k, v in train.items():
    config.train[k] = v
  return config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny B-cos workdir after train, vanilla train, explain and evaluate."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('bcos'))
  config = tiny_config(data_dir)
  main_lib.run(config, workdir, 'train')
  vanilla = config.copy_and_resolve_references()
  vanilla.bcos.vanilla = True
  main_lib.run(vanilla, os.path.join(workdir, 'vanilla'), 'train')
  main_lib.run(config, workdir, 'explain')
  main_lib.run(config, workdir, 'evaluate')
  return config, workdir


def test_explain_report_is_complete(run_dir):
  config, workdir = run_dir
  report = pio.read_json(os.path.join(workdir, 'explain', 'report.json'))
  s = report['summary']
  assert s['completeness_ok'] is True
  assert s['completeness_error'] < config.bcos.completeness_tolerance
  assert s['generation']['completeness_error'] < config.bcos.completeness_tolerance
  assert len(report['prompts']) == config.bcos.num_explain
  for p in report['prompts']:  # S_i is a share: it sums to one over the prompt's tokens
    assert abs(sum(p['relevance']) - 1.0) < 1e-5
    assert p['tokens'] == text_lib.words(p['prompt'])


def test_vocabulary_round_trips(run_dir):
  config, workdir = run_dir
  saved = text_lib.Tokenizer.load(bcos_task.vocabulary_path(workdir))
  fresh = bcos_task.BcosTask(config).tokenizer
  assert saved.vocab_size == fresh.vocab_size
  prompts = ['a large red striped circle in the top left on a dark background',
             'a small yellow triangle in the bottom right on a light background']
  ids = saved.encode_batch(prompts, config.bcos.max_tokens)[0]
  np.testing.assert_array_equal(ids, fresh.encode_batch(prompts, config.bcos.max_tokens)[0])
  for row, prompt in zip(ids, prompts):
    assert saved.tokens(row[row != 0]) == text_lib.words(prompt)


def test_metrics_hold_adherence_relevance_auroc_and_vanilla_comparison(run_dir):
  config, workdir = run_dir
  m = pio.read_json(os.path.join(workdir, 'metrics.json'))
  assert m['step'] == STEPS and m['model'] == 'bcos'
  acc = m['prompt_adherence']['accuracy']
  assert set(acc) == {'background', 'shape', 'color', 'size', 'position', 'stripes'}
  assert all(0.0 <= v <= 1.0 for v in acc.values()) and m['prompt_adherence']['num_prompts'] == 16
  assert np.isfinite(m['fd_classifier']) and m['fd_classifier'] > 0 and m['fd_classifier_real_baseline'] >= 0
  assert m['time_per_step']['seconds_per_denoiser_call'] > 0
  assert os.path.exists(os.path.join(workdir, m['relevance_misses_figure'])) or not any(
      m['relevance_adherence_auroc'][a]['num_missed'] for a in ('color', 'shape'))
  auroc = m['relevance_adherence_auroc']
  for name in ('background', 'shape', 'color', 'size', 'position'):  # every shapes prompt names them
    e = auroc[name]
    assert e['num_missed'] + e['num_followed'] == 16
    # A word is missed exactly when the classifier disagrees with the prompt: 1 - accuracy.
    assert e['num_missed'] == round(16 * (1 - acc[name]))
    if e['auroc'] is not None:
      assert 0.0 <= e['ci_low'] <= e['auroc'] <= e['ci_high'] <= 1.0
  assert auroc['stripes']['num_missed'] + auroc['stripes']['num_followed'] < 16  # only striped prompts name it
  v = m['vanilla_comparison']
  assert v['equal_steps'] is True and v['vanilla']['step'] == STEPS
  assert v['fd_classifier_ratio'] == pytest.approx(m['fd_classifier'] / v['vanilla']['fd_classifier'])
  assert v['bcos']['fd_classifier'] == m['fd_classifier']
  assert set(v['vanilla']['prompt_adherence']['accuracy']) == set(acc)


def _trained(config, workdir):
  _, params, _, step = bcos_task.load_trained(config, workdir, use_ema=False)
  _, ema, _, _ = bcos_task.load_trained(config, workdir, use_ema=True)
  return step, jax.tree_util.tree_leaves((params, ema))


def test_resumed_bcos_run_is_bit_identical(run_dir, tmp_path):
  config, straight = run_dir
  short = tiny_config(config.data.data_dir, num_steps=STEPS // 2)
  main_lib.run(short, str(tmp_path), 'train')  # stopped after k steps
  main_lib.run(config, str(tmp_path), 'train')  # resumed to N
  step_a, a = _trained(config, straight)
  step_b, b = _trained(config, str(tmp_path))
  assert step_a == step_b == STEPS
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
