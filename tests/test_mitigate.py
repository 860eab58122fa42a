"""--mode=mitigate: rebalancing weights, the s-space dependence penalties, fine-tuning into a new
checkpoint series that leaves the original untouched, and the no-pair no-op."""

import functools
import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax import config as config_lib
from patronus_jax import data as data_lib
from patronus_jax import main as main_lib
from patronus_jax.core import checkpoint as ckpt_lib
from patronus_jax.core import diffusion
from patronus_jax.core import sharding
from patronus_jax.core.errors import ConfigError, WorkdirError
from patronus_jax.core.training import load_state
from patronus_jax.data import bias as bias_lib
from patronus_jax.interpret import core as interpret_core
from patronus_jax.tasks.patronus import loading
from patronus_jax.tasks.patronus import mitigate_config
from patronus_jax.tasks.patronus import mitigate_mode
from patronus_jax.tasks.patronus import training


def _biased_labels(n=3000, seed=0):
  """colour (4 values) -> shape (3 values) at 0.9, plus an unrelated 2-valued column."""
  rng = np.random.default_rng(seed)
  colour = rng.integers(0, 4, n)
  tied = np.array([0, 1, 2, 0])[colour]
  shape = np.where(rng.random(n) < 0.9, tied, rng.integers(0, 3, n))
  return np.stack([shape, colour, rng.integers(0, 2, n)], 1)


def test_rebalancing_weights_make_the_pair_exactly_independent_and_keep_the_marginals():
  labels = _biased_labels()
  w = bias_lib.independence_weights(labels, [(1, 0)], [3, 4, 2])
  before = bias_lib.weighted_table(labels[:, 1], labels[:, 0], np.ones(len(labels)), 4, 3)
  after = bias_lib.weighted_table(labels[:, 1], labels[:, 0], w, 4, 3)
  assert bias_lib.cramers_v(before * len(labels)) > 0.7
  np.testing.assert_allclose(after, np.outer(after.sum(1), after.sum(0)), atol=1e-15)
  np.testing.assert_allclose(after.sum(1), before.sum(1), atol=1e-15)  # P(colour) and P(shape) unchanged
  np.testing.assert_allclose(after.sum(0), before.sum(0), atol=1e-15)
  assert w.mean() == pytest.approx(1.0)
  # the closed form for one pair: P(a) P(b) / P(a, b) of the example's cell
  u, v = labels[0, 1], labels[0, 0]
  assert w[0] == pytest.approx(before.sum(1)[u] * before.sum(0)[v] / before[u, v] / np.mean(
      before.sum(1)[labels[:, 1]] * before.sum(0)[labels[:, 0]] / before[labels[:, 1], labels[:, 0]]))
  # two pairs sharing no attribute with the third column: both independent
  labels[:, 2] = np.where(np.random.default_rng(1).random(len(labels)) < 0.8, labels[:, 1] % 2, 1 - labels[:, 1] % 2)
  w2 = bias_lib.independence_weights(labels, [(1, 0), (1, 2)], [3, 4, 2])
  for a, b, na, nb in ((1, 0, 4, 3), (1, 2, 4, 2)):
    t = bias_lib.weighted_table(labels[:, a], labels[:, b], w2, na, nb)
    np.testing.assert_allclose(t, np.outer(t.sum(1), t.sum(0)), atol=1e-9)


def test_independence_test_matches_the_chi_squared_closed_form():
  table = np.array([[30, 10, 0], [5, 25, 0]])  # an empty column is ignored
  t = table[:, :2].astype(float)
  expected = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
  chi2 = ((t - expected) ** 2 / expected).sum()
  assert bias_lib.independence_p_value(table) == pytest.approx(math.erfc(np.sqrt(chi2 / 2)), rel=1e-9)  # 1 dof
  assert bias_lib.cramers_v(table) == pytest.approx(np.sqrt(chi2 / t.sum()), rel=1e-12)
  assert bias_lib.independence_p_value(np.array([[10, 20], [20, 40]])) == pytest.approx(1.0)
  assert bias_lib.independence_p_value(np.array([[5, 0], [0, 0]])) == 1.0


def test_resampling_follows_the_weights_up_to_one_example_per_example():
  labels = _biased_labels()
  w = bias_lib.independence_weights(labels, [(1, 0)], [3, 4, 2])
  num = 4 * len(labels)
  idx = bias_lib.resample(w, num, np.random.default_rng(0))
  counts = np.bincount(idx, minlength=len(labels))
  expected = num * w / w.sum()
  assert np.all(np.abs(counts - expected) < 1.0)
  assert len(idx) == num and not np.all(np.diff(idx) >= 0)  # shuffled
  table = bias_lib.contingency_table(labels[idx, 1], labels[idx, 0], 4, 3)
  assert bias_lib.cramers_v(table) < 0.01


def _finite_difference_check(fn, x, y):
  g = jax.grad(fn)(x, y)
  rng = np.random.default_rng(3)
  for _ in range(4):
    d = jnp.asarray(rng.standard_normal(x.shape))
    h = 1e-6
    fd = (fn(x + h * d, y) - fn(x - h * d, y)) / (2 * h)
    assert float(jnp.vdot(g, d)) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_dependence_penalties_values_and_gradients():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 2)))
    y = jnp.asarray(rng.standard_normal((16, 3)) + 0.8 * np.asarray(x[:, :1]))
    # closed form: the sum of squared Pearson correlations between the columns
    corr = np.corrcoef(np.concatenate([x, y], 1).T)[:2, 2:]
    assert float(mitigate_mode.cross_covariance(x, y, eps=0.0)) == pytest.approx(float((corr ** 2).sum()), rel=1e-10)
    _finite_difference_check(mitigate_mode.cross_covariance, x, y)
    # HSIC, with the median bandwidth held constant: the finite difference sees the same constant
    bandwidth = lambda z: float(jnp.median(jnp.sum((z[:, None] - z[None]) ** 2, -1)) + 1e-6)

    def hsic_fixed(a, b, sa=bandwidth(x), sb=bandwidth(y)):
      ka = jnp.exp(-jnp.sum((a[:, None] - a[None]) ** 2, -1) / sa)
      kb = jnp.exp(-jnp.sum((b[:, None] - b[None]) ** 2, -1) / sb)
      h = jnp.eye(a.shape[0]) - 1.0 / a.shape[0]
      return jnp.trace(ka @ h @ kb @ h) / (a.shape[0] - 1) ** 2

    assert float(mitigate_mode.hsic(x, y)) == pytest.approx(float(hsic_fixed(x, y)), rel=1e-12)
    np.testing.assert_allclose(jax.grad(mitigate_mode.hsic)(x, y), jax.grad(hsic_fixed)(x, y), rtol=1e-9)
    _finite_difference_check(hsic_fixed, x, y)
    # independent by construction (a column and a function of its sign-flipped twin): ~0 cross-covariance
    z = jnp.asarray(np.r_[np.arange(8.0), -np.arange(8.0)])[:, None]
    assert float(mitigate_mode.cross_covariance(z, jnp.abs(z))) < 1e-12
    dependent = jnp.concatenate([x[:, :1], x[:, 1:] ** 2, -x[:, :1]], 1)  # functions of x: strongly dependent
    assert float(mitigate_mode.hsic(x, dependent)) > 2 * float(mitigate_mode.hsic(x, jnp.asarray(
        rng.standard_normal((16, 3)))))


def test_the_within_label_share_is_zero_for_a_code_of_the_label_and_one_for_noise():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 4, 64))
    code = jnp.asarray([0.3, -1.0, 2.0, 0.5])[labels][:, None]  # a function of the label
    mixed = code + 0.5 * jnp.asarray(rng.standard_normal((64, 1)))
    noise = jnp.asarray(rng.standard_normal((64, 1)))
    share = lambda x: float(mitigate_mode.within_label_share(x, labels, eps=0.0)[0])
    assert share(code) == pytest.approx(0.0, abs=1e-12)
    assert 0.05 < share(mixed) < 0.5
    assert share(noise) == pytest.approx(1.0, abs=0.2)
    # closed form on a batch: mean squared difference over same-label pairs / over all pairs
    x = np.asarray(mixed[:8, 0])
    lab = np.asarray(labels[:8])
    pairs = [(i, j) for i in range(8) for j in range(8) if i != j]
    same = [(x[i] - x[j]) ** 2 for i, j in pairs if lab[i] == lab[j]]
    every = [(x[i] - x[j]) ** 2 for i, j in pairs]
    assert float(mitigate_mode.within_label_share(mixed[:8], labels[:8], eps=0.0)[0]) == pytest.approx(
        np.mean(same) / np.mean(every), rel=1e-12)
    # no two rows share a label: nothing to measure, 0 (and no NaN)
    assert float(mitigate_mode.within_label_share(mixed[:4], jnp.arange(4))[0]) == 0.0
    _finite_difference_check(lambda a, b: jnp.sum(mitigate_mode.within_label_share(a, b)), mixed[:16], labels[:16])


def test_the_between_label_share_is_one_minus_the_within_share_and_zero_where_nothing_is_measured():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(0, 3, 16))
    x = jnp.asarray(rng.standard_normal((16, 3))) + jnp.asarray([1.0, 0.0, -2.0])[labels][:, None]
    np.testing.assert_allclose(mitigate_mode.between_label_share(x, labels),
                               1.0 - mitigate_mode.within_label_share(x, labels), rtol=1e-12)
    code = jnp.asarray([0.3, -1.0, 2.0])[labels][:, None]
    assert float(mitigate_mode.between_label_share(code, labels)[0]) == pytest.approx(1.0, abs=1e-6)
    # a constant column, or no two rows of one label: 0, not 1
    assert float(mitigate_mode.between_label_share(jnp.ones((16, 1)), labels)[0]) == 0.0
    assert float(mitigate_mode.between_label_share(x[:3], jnp.arange(3))[0]) == 0.0
    _finite_difference_check(lambda a, b: jnp.sum(mitigate_mode.between_label_share(a, b)), x, labels)


def test_mitigation_config_is_validated():
  config = config_lib.base_config()
  config.mitigation.steps_fraction = 0.3
  with pytest.raises(ConfigError, match='mitigation.steps_fraction'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.methods = ('rebalance', 'retrain')
  with pytest.raises(ConfigError, match='mitigation.methods'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.prototype_lr_scale = -1.0
  with pytest.raises(ConfigError, match='mitigation.prototype_lr_scale'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.counterfactual_stream = 'balanced'
  with pytest.raises(ConfigError, match='mitigation.counterfactual_stream'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.lr_schedule = 'linear'
  with pytest.raises(ConfigError, match=r"mitigation.lr_schedule.*\('constant', 'cosine'\)"):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.regeneration_images = -1
  with pytest.raises(ConfigError, match='mitigation.regeneration_images'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.settle_fraction = 1.0
  with pytest.raises(ConfigError, match=r'mitigation.settle_fraction.*\[0, 1\)'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.counterfactual_rechecks = -1
  with pytest.raises(ConfigError, match='mitigation.counterfactual_rechecks'):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.counterfactual_rechecks = 2
  config.train.s_decoder_weight = 0.0
  with pytest.raises(ConfigError, match=r"mitigation.counterfactual_rechecks.*decoder's picture"):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.mitigation.methods = ('rebalance', 'refit_decoder')
  config.train.s_decoder_weight = 0.0
  with pytest.raises(ConfigError, match=r"mitigation.methods.*'refit_decoder'.*no decoder"):
    config_lib.validate(config)
  config.train.s_decoder_weight = 1.0
  config_lib.validate(config)


def _tree_hash(directory: str) -> dict:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def trained(shapes_config, tmp_path_factory):
  config = shapes_config.copy_and_resolve_references()
  config.data.shapes.planted_strength = 0.9
  config.train.num_steps = 8
  config.train.checkpoint_every = 8
  workdir = str(tmp_path_factory.mktemp('mitigate'))
  main_lib.run(config, workdir, 'train')
  return config, workdir


def test_no_suspected_pair_changes_nothing(trained, monkeypatch):
  config, workdir = trained
  before = _tree_hash(workdir)
  diagnosis = {'suspected_pairs': [], 'suspected_correlations': [], 'findings': [], 'prototypes': []}
  monkeypatch.setattr(mitigate_mode, 'diagnose', lambda *a: diagnosis)
  report = mitigate_mode.mitigate_mode(config, workdir)
  after = _tree_hash(workdir)
  assert set(after) - set(before) == {'mitigation/report.json'}
  assert all(after[k] == v for k, v in before.items())
  written = json.load(open(os.path.join(workdir, 'mitigation', 'report.json')))
  assert written == json.loads(json.dumps(report))
  assert not written['mitigated'] and written['before']['suspected_pairs'] == written['after']['suspected_pairs'] == []
  assert 'nothing to mitigate' in written['reason']
  os.remove(os.path.join(workdir, 'mitigation', 'report.json'))


def test_a_pair_the_training_data_do_not_tie_is_not_mitigated(trained, monkeypatch):
  # the diagnosis names size <-> stripes (generated independently): entangled prototypes, no shortcut
  config, workdir = trained
  attributes = mitigate_mode.training_attributes(config)
  independent = attributes.dependence('size', 'stripes')
  assert independent['p_value'] > config.mitigation.data_p_value
  planted = attributes.dependence('color', 'shape')  # planted at 0.9
  assert planted['p_value'] < 1e-12 and planted['cramers_v'] > 0.5
  before = _tree_hash(workdir)
  edit = {'prototype': 0, 'direction': 'raise', 'controlled': 'size', 'co_moved': 'stripes', 'effect': 0.3}
  diagnosis = {'suspected_pairs': [['size', 'stripes']], 'findings': [], 'prototypes': [],
               'suspected_correlations': [{'attributes': ['size', 'stripes'], 'edits': [edit]}]}
  monkeypatch.setattr(mitigate_mode, 'diagnose', lambda *a: diagnosis)
  report = mitigate_mode.mitigate_mode(config, workdir)
  after = _tree_hash(workdir)
  assert set(after) - set(before) == {'mitigation/report.json'}
  assert all(after[k] == v for k, v in before.items())
  assert not report['mitigated'] and report['pairs'] == []
  assert [p['attributes'] for p in report['entangled']] == [['size', 'stripes']]
  assert report['entangled'][0]['in_data']['p_value'] == pytest.approx(independent['p_value'])
  assert 'entangled prototypes' in report['reason']
  # with the gate open (every suspected pair), the same diagnosis would be mitigated
  assert mitigate_mode.in_data([['size', 'stripes'], ['color', 'shape']], attributes, 1.0) == [
      ['size', 'stripes'], ['color', 'shape']]
  assert mitigate_mode.in_data([['size', 'stripes'], ['color', 'shape']], attributes, 1e-3) == [['color', 'shape']]
  os.remove(os.path.join(workdir, 'mitigation', 'report.json'))


def test_fine_tuning_writes_a_new_series_and_leaves_the_original_untouched(trained):
  config, workdir = trained
  original_dir = ckpt_lib.stage_dir(workdir, 'stage1')
  before = _tree_hash(original_dir)
  _, original_vars, original_step = loading.load_stage1_variables(config, workdir)
  steps = int(round(config.mitigation.steps_fraction * config.train.num_steps))
  labels = training.pass_over_split(config, 'train', None, 64)['attributes']
  weights = bias_lib.independence_weights(labels, [(2, 1)], [3, 3, 4, 2, 4, 2])
  runs = {
      'rebalance': (training.PatronusTask(config),
                    lambda: mitigate_mode.resampled_iterator(config, weights, (steps + 2) * 8, 0)),
      'decorrelate': (mitigate_mode.DecorrelateTask(config, [([0, 1], [2])], 10.0, 'hsic'),
                      data_lib.training_iterator_factory(config.data, config.train.batch_size, 1)),
      'isolate': (mitigate_mode.IsolateTask(config, [(2, [0, 1])], 1.0),
                  lambda: mitigate_mode.resampled_iterator(config, weights, (steps + 2) * 8, 0)),
  }
  for method, (task, make_iterator) in runs.items():
    vc, view = mitigate_mode.make_view(config, workdir, method, f'stage1_mitigated/{method}',
                                       f'latent_mitigated/{method}')
    ft = mitigate_mode.finetune(vc, workdir, view, lambda _, t=task: t, make_iterator,
                                sharding.make_mesh(config.mesh), method)
    assert ft['from_step'] == original_step and ft['to_step'] == original_step + steps
    assert ft['cost_fraction'] <= 0.25
    _, mitigated_vars, step = loading.load_stage1_variables(vc, view)
    assert step == original_step + steps
    assert os.path.realpath(ckpt_lib.stage_dir(view, 'stage1')) == os.path.realpath(
        ckpt_lib.stage_dir(workdir, f'stage1_mitigated/{method}'))
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), mitigated_vars, original_vars)
    assert max(jax.tree_util.tree_leaves(diff)) > 0
  assert _tree_hash(original_dir) == before
  # a second run with another recipe stops instead of resuming a series made differently
  task, make_iterator = runs['decorrelate']
  vc, view = mitigate_mode.make_view(config, workdir, 'decorrelate', 'stage1_mitigated/decorrelate',
                                     'latent_mitigated/decorrelate')
  with pytest.raises(WorkdirError, match='fine-tuned with other settings'):
    mitigate_mode.finetune(vc, workdir, view, lambda _: task, make_iterator, sharding.make_mesh(config.mesh),
                           'decorrelate', {'weight': 2.0})
  faster = vc.copy_and_resolve_references()
  faster.mitigation.prototype_lr_scale = 4.0  # the prototype network's rate is part of how a series was made
  with pytest.raises(WorkdirError, match='fine-tuned with other settings'):
    mitigate_mode.finetune(faster, workdir, view, lambda _: task, make_iterator, sharding.make_mesh(config.mesh),
                           'decorrelate')
  state, step, _ = load_state(workdir, 'stage1')
  assert step == original_step
  np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(state['ema_params'])[0]),
                                np.asarray(jax.tree_util.tree_leaves(original_vars['params'])[0]))
  # --config.mitigation.use=True: the later modes read the selected series through the view
  os.makedirs(os.path.join(workdir, 'mitigation'), exist_ok=True)
  with open(os.path.join(workdir, 'mitigation', 'report.json'), 'w') as f:
    json.dump({'selected_method': 'decorrelate'}, f)
  use = config.copy_and_resolve_references()
  use.mitigation.use = True
  vc, view = mitigate_mode.use_view(use, workdir)
  assert view == mitigate_mode.view_dir(workdir, 'decorrelate') and not vc.mitigation.use
  assert loading.load_stage1_variables(vc, view)[2] == original_step + steps


def test_a_cosine_fine_tuning_starts_at_the_full_rate_from_stage_1s_optimizer_step(trained):
  # 2 fine-tuning steps from step 8: the cosine gives rates 1 and 1/2 of learning_rate (Adam moves each
  # parameter by about the rate), so the parameters move ~3/4 as far as at the constant rate; a schedule
  # counted from 0 instead of stage 1's step would give 0.10 and 0.02 (~1/16)
  config, workdir = trained
  _, original, _ = loading.load_stage1_variables(config, workdir, use_ema=False)
  moved = {}
  for schedule in ('constant', 'cosine'):
    c = config.copy_and_resolve_references()
    c.mitigation.lr_schedule = schedule
    vc, view = mitigate_mode.make_view(c, workdir, f'lr_{schedule}', f'stage1_mitigated/lr_{schedule}', None)
    mitigate_mode.finetune(vc, workdir, view, lambda _: training.PatronusTask(c),
                           data_lib.training_iterator_factory(c.data, c.train.batch_size, 1),
                           sharding.make_mesh(c.mesh), 'rebalance')
    if schedule == 'cosine':
      assert json.load(open(os.path.join(view, 'fine_tuning.json')))['lr_schedule'] == 'cosine'
    _, tuned, _ = loading.load_stage1_variables(vc, view, use_ema=False)
    moved[schedule] = sum(float(jnp.sum(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(tuned['params']), jax.tree_util.tree_leaves(original['params'])))
  assert 0.55 < moved['cosine'] / moved['constant'] < 0.95, moved


def test_settling_trains_the_unet_alone_on_the_encoder_and_decoder_it_will_be_sampled_with(trained):
  # 3 fine-tuning steps from step 8, the last 2 settling: the method's step (9), the switch (10: the prototype
  # network and the decoder set to their moving average, no update) and one update of the U-Net alone (11)
  config, workdir = trained
  c = config.copy_and_resolve_references()
  c.train.num_steps = 12
  c.mitigation.settle_fraction = 0.6
  assert [mitigate_mode.settle_steps(n, f) for n, f in ((2, 0.5), (3, 0.0), (3, 0.1), (3, 0.6), (10, 0.95))] == [
      0, 0, 2, 2, 9]
  make_task = lambda _: training.PatronusTask(c)
  vc, view = mitigate_mode.make_view(c, workdir, 'settled', 'stage1_mitigated/settled', None)
  run = lambda: mitigate_mode.finetune(vc, workdir, view, make_task,
                                       data_lib.training_iterator_factory(c.data, c.train.batch_size, 1),
                                       sharding.make_mesh(c.mesh), 'rebalance')
  ft = run()
  assert ft['settle_steps'] == 2 and ft['to_step'] == 11
  assert json.load(open(os.path.join(view, 'fine_tuning.json')))['settle_steps'] == 2
  switch, switch_step, meta = load_state(view, 'stage1', step=10)
  last, last_step, _ = load_state(view, 'stage1')
  assert (switch_step, last_step, meta['settle_from']) == (10, 11, 9)
  leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
  for name in ('prototypes', 's_decoder'):
    # frozen at their moving average: no update after the switch, and their average stays them
    for a, b, e in zip(leaves(switch['params'][name]), leaves(last['params'][name]), leaves(last['ema_params'][name])):
      np.testing.assert_array_equal(b, a)
      np.testing.assert_allclose(e, a, rtol=1e-6, atol=1e-7)
    for a, e in zip(leaves(switch['params'][name]), leaves(switch['ema_params'][name])):
      np.testing.assert_array_equal(a, e)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(switch['params']['unet']),
                                                              leaves(last['params']['unet'])))
  assert moved > 0
  _, original, _ = loading.load_stage1_variables(c, workdir, use_ema=False)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(switch['params']['unet']),
                                                          leaves(original['params']['unet']))) > 0
  # a second run resumes into nothing to do
  assert run()['to_step'] == 11 and load_state(view, 'stage1')[1] == 11


def _counterfactual_parts(config, workdir):
  """A random two-attribute classifier (3 values each) and the trained model: (classifier, model,
  variables, params, the other collections)."""
  from patronus_jax.evaluate import classifier as clf_lib  # pylint: disable=g-import-not-at-top
  net = clf_lib.AttributeClassifierNet((3, 3), (8,), 8)
  classifier = clf_lib.AttributeClassifier(clf_lib._init_params(jax.random.PRNGKey(1), net, (32, 32, 3)), (3, 3),
                                           (32, 32, 3), ('a', 'b'), (8,), 8)
  model, variables, _ = loading.load_stage1_variables(config, workdir, use_ema=False)
  return classifier, model, variables, variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def test_the_counterfactual_penalty_holds_the_other_attributes_and_a_to_the_original(trained):
  config, workdir = trained
  classifier, _, variables, params, others = _counterfactual_parts(config, workdir)
  image = data_lib.load_arrays(config.data, 'train', max_examples=1)['image']
  batch = {'image': jnp.asarray(np.repeat(image, 4, 0))}  # one image 4 times: every row has the same s
  s0 = np.asarray(training.PatronusTask(config).loss_terms(params, others, batch, jax.random.PRNGKey(0), True)[2])[0]
  key = jax.random.PRNGKey(2)

  def terms(value, weight=1.0, teacher=None, keep_weight=0.0):
    task = mitigate_mode.CounterfactualTask(config, [([1, 2], value, [0])], classifier, weight, teacher, keep_weight)
    return task.loss_fn(params, others, batch, key, True)

  loss, metrics = terms(s0[[1, 2]].tolist())  # the edit leaves s as it is: nothing can move
  assert float(metrics['counterfactual']) == 0.0
  assert float(loss) == pytest.approx(float(training.PatronusTask(config).loss_fn(params, others, batch, key, True)[0]),
                                      rel=1e-6)
  value = [s0[1] + 3.0, s0[2] + 3.0]
  loss, metrics = terms(value, weight=1000.0)
  assert float(metrics['counterfactual']) > 0.0
  loss0, _ = terms(value, weight=0.0)
  assert float(loss - loss0) == pytest.approx(1000.0 * float(metrics['counterfactual']), rel=1e-4)
  # only the attributes the edit does not control ('b' here) are held to the unedited branch
  probe = mitigate_mode.CounterfactualTask(config, [], classifier, 1.0)
  t_key, n_key = jax.random.split(jax.random.fold_in(key, 7))
  t = diffusion.sample_timesteps(t_key, 4, probe.max_step)
  x0 = batch['image']
  x_t = diffusion.q_sample(probe.schedule, x0, t, jax.random.normal(n_key, x0.shape, x0.dtype))
  s = jnp.asarray(np.repeat(s0[None], 4, 0))
  before = probe._probs(variables, s, x_t, t)
  after = probe._probs(variables, s.at[:, jnp.asarray([1, 2])].set(jnp.asarray(value)), x_t, t)
  expected = float(jnp.mean(jnp.sum(jnp.square(after[1] - before[1]), -1)))
  assert float(metrics['counterfactual_co_moved']) == pytest.approx(expected, rel=1e-4)
  # A under the edit is held to the original model's: with the model itself as the original, that
  # term is exactly 0 (fine-tuning starts there); another original makes it positive, weighted
  _, same_teacher = terms(value, teacher=variables, keep_weight=5.0)
  assert float(same_teacher['counterfactual_kept']) == 0.0
  assert float(same_teacher['counterfactual']) == pytest.approx(float(metrics['counterfactual']), rel=1e-6)
  other = jax.tree_util.tree_map(lambda v: v * 1.5, variables)
  _, moved = terms(value, teacher=other, keep_weight=5.0)
  assert float(moved['counterfactual_kept']) > 0.0
  assert float(moved['counterfactual']) == pytest.approx(
      float(moved['counterfactual_co_moved']) + 5.0 * float(moved['counterfactual_kept']), rel=1e-6)
  assert float(loss - loss0) == pytest.approx(1000.0 * float(metrics['counterfactual']), rel=1e-4)


def test_the_counterfactual_on_the_picture_judges_the_decoders_picture_and_not_the_unet(trained):
  from patronus_jax.evaluate import classifier as clf_lib  # pylint: disable=g-import-not-at-top
  from patronus_jax.models import unet as unet_lib  # pylint: disable=g-import-not-at-top
  config, workdir = trained
  assert config.train.s_decoder_weight > 0
  classifier, model, variables, params, others = _counterfactual_parts(config, workdir)
  batch = {'image': jnp.asarray(data_lib.load_arrays(config.data, 'train', max_examples=4)['image'])}
  key = jax.random.PRNGKey(2)
  s = training.PatronusTask(config).loss_terms(params, others, batch, key, True)[2]
  value = [float(s[0, 1]) + 3.0]
  task = mitigate_mode.CounterfactualTask(config, [([1], value, [0])], classifier, 1.0, on='picture')
  _, metrics = task.loss_fn(params, others, batch, key, True)

  def read(s_rows):  # the classifier on the decoder's picture at the image's size, computed here
    picture = model.apply(variables, s_rows, method=model.decode_activations)
    return clf_lib.predict(classifier, np.asarray(unet_lib.resize_sketch(picture, batch['image'].shape)))['b']
  expected = np.mean(np.sum(np.square(read(s.at[:, 1].set(value[0])) - read(s)), -1))
  assert float(metrics['counterfactual_co_moved']) == pytest.approx(float(expected), rel=1e-4)
  # the U-Net does not enter it: a changed U-Net leaves the penalty as it is, unlike 'x0_hat''s
  scaled = {**params, 'unet': jax.tree_util.tree_map(lambda v: v * 1.5, params['unet'])}
  assert float(task.loss_fn(scaled, others, batch, key, True)[1]['counterfactual']) == pytest.approx(
      float(metrics['counterfactual']), rel=1e-6)
  on_x0 = mitigate_mode.CounterfactualTask(config, [([1], value, [0])], classifier, 1.0)
  assert float(on_x0.loss_fn(scaled, others, batch, key, True)[1]['counterfactual']) != pytest.approx(
      float(on_x0.loss_fn(params, others, batch, key, True)[1]['counterfactual']), rel=1e-3)
  # ... and it trains the decoder alone: no gradient of the penalty reaches the prototype network
  penalty = lambda p: task.loss_fn(p, others, batch, key, True)[1]['counterfactual']
  grads = jax.grad(penalty)(params)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads['prototypes'])) == 0.0
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads['s_decoder'])) > 0.0


def test_every_prototype_edits_hold_b_and_the_prototypes_that_draw_b_hold_a():
  def proto(j, lower, raise_):
    return {'prototype': j, 'directions': {'lower': {'controlled': lower}, 'raise': {'controlled': raise_}}}
  before = {'prototypes': [proto(0, 'color', 'color'), proto(1, 'shape', None), proto(2, None, 'size')],
            'edit_values': {'lower': [-1.0, -2.0, -3.0], 'raise': [1.0, 2.0, 3.0]}}
  plans = [{'controlled': 'color', 'co_moved': 'shape', 'edits': [{'prototype': 0, 'direction': 'raise'}]}]
  got = mitigate_mode._every_prototype_edits(before, plans, ['color', 'shape', 'size'], {(0, 'raise')})
  # p0 raised is a diagnosed edit (judged at every step); p1 draws shape, so it may move shape and holds colour
  assert got == [(0, 'lower', -1.0, [0], [1]), (1, 'lower', -2.0, [1], [0]), (1, 'raise', 2.0, [1], [0]),
                 (2, 'lower', -3.0, [0], [1]), (2, 'raise', 3.0, [0], [1])]
  # 'moved_b': only the edits that moved shape (p1: colour) by at least the threshold in the diagnosis
  moved = ({'lower': 0.2, 'raise': 0.5}, {'lower': 0.3, 'raise': 0.0}, {'lower': 0.05, 'raise': 0.1})
  for x, effects in zip(before['prototypes'], moved):
    for direction, effect in effects.items():
      name = 'color' if x['prototype'] == 1 else 'shape'
      x['directions'][direction]['effects'] = {name: {'effect': effect}, 'other': {'effect': 1.0}}
  got = mitigate_mode._every_prototype_edits(before, plans, ['color', 'shape', 'size'], {(0, 'raise')},
                                             min_b_effect=0.1)
  assert got == [(0, 'lower', -1.0, [0], [1]), (1, 'lower', -2.0, [1], [0]), (2, 'raise', 3.0, [0], [1])]


def test_the_recheck_judges_edits_that_move_both_attributes_of_a_pair_and_holds_the_smaller():
  heads = ['color', 'shape', 'size']
  plans = [{'controlled': 'color', 'co_moved': 'shape'}]
  values = {'lower': -np.arange(10.0), 'raise': np.arange(10.0)}
  effects = np.zeros((10, 2, 3))
  effects[:, :, 2] = 0.5  # every edit moves size most: colour and shape are the bystanders of each
  effects[0, 1, :2] = (0.4, 0.3)  # p0 raised: colour and shape, judged already
  effects[1, 0, :2] = (0.35, 0.4)  # p1 lowered now draws shape and moves colour with it: colour held
  effects[1, 1, :2] = (0.4, 0.0)  # p1 raised: colour alone
  effects[2, 1, :2] = (0.1, 0.05)  # p2 raised: both, below the quantile
  bystanders = lambda: np.quantile(effects[:, :, :2].ravel(), 0.9)
  got = mitigate_mode.recheck_edits(effects, plans, heads, values, {(0, 'raise')})
  assert got['threshold'] == pytest.approx(bystanders()) and 0.3 < got['threshold'] < 0.35
  assert got['edits'] == [[1, 'lower', -1.0, [1], [0]]]
  assert got['effects'] == {'1 lower': {'color': 0.35, 'shape': 0.4}}
  effects[2, 1, :2] = (0.45, 0.42)  # p2 raised above: shape (the smaller) held; the quantile rises past p1 lowered
  got = mitigate_mode.recheck_edits(effects, plans, heads, values, {(0, 'raise')})
  assert got['threshold'] == pytest.approx(bystanders()) and 0.35 < got['threshold'] < 0.42
  assert got['edits'] == [[2, 'raise', 2.0, [0], [1]]]
  assert mitigate_mode.recheck_edits(effects, plans, heads, values, {(0, 'raise'), (2, 'raise')})['edits'] == []
  effects[:, :, :2] = 0.0  # nothing moves colour or shape: nothing to judge (the quantile is 0)
  assert mitigate_mode.recheck_edits(effects, plans, heads, values, set())['edits'] == []


def test_the_picture_recheck_reads_the_classifiers_change_on_the_decoders_picture(trained):
  config, workdir = trained
  classifier, model, variables, _, _ = _counterfactual_parts(config, workdir)
  p = config.model.num_prototypes
  values = {'lower': [0.0] * p, 'raise': [2.0] * p}
  recheck = mitigate_mode.PictureRecheck(config, 1, [], ['a', 'b'], values, classifier, set())
  effects = recheck.effects(variables)
  assert effects.shape == (p, 2, 2)
  s = mitigate_mode.sample_lib.encode_batched(model, variables, recheck.images, 8)

  def probs(rows):
    picture = model.apply(variables, jnp.asarray(rows), method=model.decode_activations)
    picture = jax.image.resize(picture, (len(rows), 32, 32, picture.shape[-1]), 'linear')
    return [np.asarray(jax.nn.softmax(lg, -1)) for lg in classifier.net.apply({'params': classifier.params},
                                                                              picture)[1]]
  for j, d, value in ((1, 1, 2.0), (3, 0, 0.0)):
    edited = s.copy()
    edited[:, j] = value
    want = [0.5 * np.abs((e - b).mean(0)).sum() for b, e in zip(probs(s), probs(edited))]
    np.testing.assert_allclose(effects[j, d], want, atol=1e-5)
  assert effects.max() > 0


def test_fine_tuning_with_rechecks_judges_their_edits_from_the_recheck_on_and_resumes_with_them(trained):
  config, workdir = trained
  data = data_lib.training_iterator_factory(config.data, config.train.batch_size, 1)
  mesh = sharding.make_mesh(config.mesh)
  steps = int(round(config.mitigation.steps_fraction * config.train.num_steps))

  class Recheck:
    count, calls = 1, []

    def __init__(self, edits):
      self.edits = edits

    def __call__(self, variables, added):
      self.calls.append(added)
      return {'threshold': 0.1, 'edits': self.edits, 'effects': {}}

  runs = {}
  for name, recheck in (('plain', None), ('nothing_found', Recheck([])), ('found', Recheck([[1, 'raise', 2.0, [0],
                                                                                              [1]]]))):
    made = []
    vc, view = mitigate_mode.make_view(config, workdir, name, f'stage1_mitigated/{name}', f'latent_mitigated/{name}')
    task = mitigate_mode.DecorrelateTask(vc, [([0, 1], [2])], 10.0, 'hsic')
    make_task = lambda added, made=made, task=task: made.append(list(added)) or task
    ft = mitigate_mode.finetune(vc, workdir, view, make_task, data, mesh, name, recheck=recheck)
    runs[name] = loading.load_stage1_variables(vc, view, use_ema=False)[1]
    if recheck is not None:
      start = ft['from_step']
      assert ft['rechecks'] == json.load(open(os.path.join(view, 'rechecks.json')))
      assert [r['step'] for r in ft['rechecks']] == [start + steps // 2]
      # the first half trains with the edits judged from the start, the second with the recheck's too
      assert made == [[], [], [tuple(e) for e in recheck.edits]]
      calls = len(Recheck.calls)
      made.clear()
      mitigate_mode.finetune(vc, workdir, view, make_task, data, mesh, name, recheck=recheck)  # resumed: done
      assert len(Recheck.calls) == calls and made[-1] == [tuple(e) for e in recheck.edits]
  # stopping to recheck changes nothing when the recheck finds nothing (the loop resumes exactly)
  for a, b in zip(jax.tree_util.tree_leaves(runs['plain']), jax.tree_util.tree_leaves(runs['nothing_found'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampled_counterfactual_edits_all_drawn_equal_the_same_edits_judged_every_step(trained):
  config, workdir = trained
  classifier, _, variables, params, others = _counterfactual_parts(config, workdir)
  batch = {'image': jnp.asarray(data_lib.load_arrays(config.data, 'train', max_examples=4)['image'])}
  key = jax.random.PRNGKey(3)
  teacher = jax.tree_util.tree_map(lambda v: v * 1.2, variables)
  sampled = [(1, 2.0, [0], [1]), (3, -1.0, [0], [1]), (4, 3.0, [1], [0])]
  kw = dict(teacher=teacher, keep_weight=2.0, on='picture')
  drawn = mitigate_mode.CounterfactualTask(config, [], classifier, 1.0, sampled=sampled, per_step=10, **kw)
  fixed = mitigate_mode.CounterfactualTask(config, [([j], [v], c, h) for j, v, c, h in sampled], classifier, 1.0, **kw)
  got = drawn.loss_fn(params, others, batch, key, True)[1]
  want = fixed.loss_fn(params, others, batch, key, True)[1]
  for k in ('counterfactual_co_moved', 'counterfactual_kept'):
    assert float(want[k]) > 0 and float(got[k]) == pytest.approx(float(want[k]), rel=1e-5)
  one = mitigate_mode.CounterfactualTask(config, [], classifier, 1.0, sampled=sampled, per_step=1, **kw)
  assert float(one.loss_fn(params, others, batch, key, True)[1]['counterfactual']) < float(got['counterfactual'])


def test_the_counterfactual_on_the_rebalanced_stream_sees_rebalances_batches(trained, monkeypatch):
  from patronus_jax.evaluate import classifier as clf_lib  # pylint: disable=g-import-not-at-top
  config, workdir = trained
  net = clf_lib.AttributeClassifierNet((3, 4), (8,), 8)
  classifier = clf_lib.AttributeClassifier(clf_lib._init_params(jax.random.PRNGKey(1), net, (32, 32, 3)), (3, 4),
                                           (32, 32, 3), ('shape', 'color'), (8,), 8)
  monkeypatch.setattr(mitigate_mode, 'classifier_for_workdir', lambda *a: (classifier, None))
  attributes = mitigate_mode.training_attributes(config)
  plans = [{'attributes': ['color', 'shape'], 'controlled': 'color', 'co_moved': 'shape', 'prototypes_a': [0],
            'edits': [{'prototype': 0, 'direction': 'raise', 'controlled': 'color', 'co_moved': 'shape'}]}]
  p = config.model.num_prototypes
  before = {'edit_values': {'raise': [1.0] * p, 'lower': [0.0] * p}, 'prototypes': []}
  first = lambda make_iterator: np.asarray(next(iter(make_iterator()))['image'])
  _, rebalanced, _, _, _ = mitigate_mode._method_training(config, workdir, config, 'rebalance', plans, attributes,
                                                          before)
  streams = {}
  for stream in ('data', 'rebalanced'):
    c = config.copy_and_resolve_references()
    c.mitigation.counterfactual_stream = stream
    _, make_iterator, recipe, extra, _ = mitigate_mode._method_training(c, workdir, c, 'counterfactual', plans,
                                                                        attributes, before)
    streams[stream] = first(make_iterator)
    assert recipe.get('stream') == ('rebalanced' if stream == 'rebalanced' else None)
    assert ('rebalancing' in extra) == (stream == 'rebalanced')
  np.testing.assert_array_equal(streams['rebalanced'], first(rebalanced))
  assert not np.array_equal(streams['data'], streams['rebalanced'])


def test_counterfactual_on_the_picture_needs_the_decoder(shapes_config):
  config = shapes_config.copy_and_resolve_references()
  config.mitigation.counterfactual_on = 'picture'
  config.train.s_decoder_weight = 0.0
  config.model.s_sketch = False
  config.diffusion.sketch_consistency = 0.0
  with pytest.raises(ConfigError, match=r"mitigation.counterfactual_on.*no decoder"):
    config_lib.validate(config)


def test_the_isolate_penalty_is_the_within_a_share_of_the_edited_prototypes_added_to_the_loss(trained):
  config, workdir = trained
  _, variables, _ = loading.load_stage1_variables(config, workdir, use_ema=False)
  params = variables['params']
  others = {k: v for k, v in variables.items() if k != 'params'}
  arrays = data_lib.load_arrays(config.data, 'train', max_examples=8)
  batch = {'image': jnp.asarray(arrays['image']), 'attributes': jnp.asarray(arrays['attributes'])}
  key = jax.random.PRNGKey(2)
  plain_loss, _, s = training.PatronusTask(config).loss_terms(params, others, batch, key, True)
  color = 2
  expected = float(jnp.mean(mitigate_mode.within_label_share(s[:, jnp.asarray([0, 3])], batch['attributes'][:, color])))
  assert expected > 0.0
  loss, metrics = mitigate_mode.IsolateTask(config, [(color, [0, 3])], 10.0).loss_fn(params, others, batch, key, True)
  assert float(metrics['within_a_share']) == pytest.approx(expected, rel=1e-5)
  assert float(loss) == pytest.approx(float(plain_loss) + 10.0 * expected, rel=1e-5)
  # exclusive: every prototype outside JA also pays for its share of variation between colours
  outside = jnp.asarray([j for j in range(config.model.num_prototypes) if j not in (0, 3)])
  between = float(jnp.mean(jnp.square(mitigate_mode.between_label_share(s[:, outside], batch['attributes'][:, color]))))
  assert between > 0.0
  task = mitigate_mode.IsolateTask(config, [(color, [0, 3])], 10.0, exclusive_weight=3.0)
  loss, metrics = task.loss_fn(params, others, batch, key, True)
  assert float(metrics['others_between_a_share_squared']) == pytest.approx(between, rel=1e-5)
  assert float(loss) == pytest.approx(float(plain_loss) + 10.0 * expected + 3.0 * between, rel=1e-5)
  # between_b: only s_JA's variation between values of B (shape) is penalised, squared
  shape = 1
  only_b = float(jnp.mean(jnp.square(mitigate_mode.between_label_share(s[:, jnp.asarray([0, 3])],
                                                                       batch['attributes'][:, shape]))))
  assert only_b > 0.0
  task = mitigate_mode.IsolateTask(config, [(color, [0, 3])], 10.0, co_moved=[shape])
  loss, metrics = task.loss_fn(params, others, batch, key, True)
  assert float(metrics['between_b_share_squared']) == pytest.approx(only_b, rel=1e-5)
  assert float(loss) == pytest.approx(float(plain_loss) + 10.0 * only_b, rel=1e-5)


def test_a_view_written_before_a_model_field_existed_is_still_used(trained):
  # a mitigated workdir made by an older version: its view's config.json lacks fields added since
  import shutil  # pylint: disable=g-import-not-at-top
  from patronus_jax.core import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config, workdir = trained
  _, view = mitigate_mode.make_view(config, workdir, 'older', 'stage1', None)
  path = workdir_lib.config_path(view)
  old = json.load(open(path))
  assert config.model.s_decoder_width == 64  # the field's default: what a run before it existed did
  del old['model']['s_decoder_width']
  json.dump(old, open(path, 'w'))
  mitigate_mode.make_view(config, workdir, 'older', 'stage1', None)
  changed = config.copy_and_resolve_references()
  changed.model.s_decoder_width = 128
  json.dump(old, open(path, 'w'))
  with pytest.raises(workdir_lib.ConfigConflict, match='s_decoder_width'):
    mitigate_mode.make_view(changed, workdir, 'older', 'stage1', None)
  shutil.rmtree(view)


def test_select_prefers_a_method_that_reduced_every_co_moved_effect():
  # measured on shapes:bias,quick: 'decorrelate' kept the edit and the sample quality (2 targets)
  # while the co-moved effect grew by 23 %; it was selected over a 42 % reduction (1 target)
  def result(reduction, **targets):
    flags = dict(pairs_gone=False, no_suspected_pair=False, no_pair_in_data=False, co_moved_reduction=False,
                 edit_success_kept=False, sample_quality_kept=False)
    flags.update(targets)
    return {'comparison': {'min_co_moved_reduction': reduction, 'targets': flags}}
  results = {'rebalance': result(0.42, edit_success_kept=True),
             'decorrelate': result(-0.23, edit_success_kept=True, sample_quality_kept=True),
             'isolate': result(0.74)}
  assert mitigate_mode.select(results) == 'rebalance'
  results['isolate'] = result(0.74, edit_success_kept=True)
  assert mitigate_mode.select(results) == 'isolate'  # same targets: the larger reduction
  assert mitigate_mode.select({'decorrelate': results['decorrelate']}) == 'decorrelate'  # the only one ran


def _diagnosis(effects: dict, named: list) -> dict:
  """A diagnosis with the given effects {(prototype, direction): {attribute: (effect, flip rate)}} that
  names the given pairs [(attributes, edits)]."""
  prototypes: dict = {}
  for (j, d), eff in effects.items():
    prototypes.setdefault(j, {'prototype': j, 'directions': {}})['directions'][d] = {'effects': {
        a: dict(effect=e, effect_ci=[e, e], flip_rate=f, towards='x', significant=True) for a, (e, f) in eff.items()}}
  return dict(prototypes=list(prototypes.values()), suspected_pairs=[sorted(a) for a, _ in named],
              suspected_correlations=[dict(attributes=sorted(a), edits=e) for a, e in named])


def test_the_comparison_names_the_edits_that_still_show_the_pair():
  # measured on shapes:bias,quick: after rebalancing, p13 raised no longer moved shape significantly,
  # but p13 lowered now did, so the pair stayed named by another edit than before's
  raise_edit = dict(prototype=13, direction='raise', controlled='color', co_moved='shape', effect=0.23)
  lower_edit = dict(prototype=13, direction='lower', controlled='color', co_moved='shape', effect=0.22)
  plans = [dict(attributes=['color', 'shape'], controlled='color', co_moved='shape', edits=[raise_edit])]
  before = _diagnosis({(13, 'raise'): {'color': (0.38, 0.38), 'shape': (0.23, 0.2)}},
                      [(['color', 'shape'], [raise_edit])])
  after = _diagnosis({(13, 'raise'): {'color': (0.41, 0.41), 'shape': (0.09, 0.1)}},
                     [(['shape', 'color'], [lower_edit])])
  rng = np.random.default_rng(0)
  labels = np.stack([rng.integers(0, 4, 400), rng.integers(0, 3, 400)], 1)  # independent: no pair in data
  attributes = mitigate_mode.TrainingAttributes(['color', 'shape'], [tuple(range(4)), tuple(range(3))], labels, 'train')
  mcfg = mitigate_config.mitigation_config()
  out = mitigate_mode.compare(before, after, plans, {'fd_classifier': 71.5}, {'fd_classifier': 78.9}, mcfg, attributes)
  assert out['named_after'] == {'color <-> shape': [lower_edit]}
  assert out['edits'][0]['co_moved_reduction'] == pytest.approx(1 - 0.09 / 0.23)
  assert out['edits'][0]['edit_success_ratio'] == pytest.approx(0.41 / 0.38)
  assert not out['targets']['pairs_gone'] and out['targets']['no_pair_in_data']
  assert out['targets']['edit_success_kept']  # +8 %
  assert not out['targets']['sample_quality_kept']  # fd_classifier +10.3 % > 10 %


def test_the_sample_quality_of_the_report_draws_quality_num_samples(shapes_config, monkeypatch):
  seen = []

  def evaluate(config, workdir, mesh):
    seen.append((config.evaluate.num_samples, config.evaluate.metrics, config.evaluate.samples))
    return {'fd_classifier': {'unconditional': 1.0, 'real_eval_baseline': 0.5,
                              'num_samples': {'unconditional': config.evaluate.num_samples}}}
  monkeypatch.setattr(mitigate_mode.evaluate_mode, 'evaluate_mode', evaluate)
  config = shapes_config.copy_and_resolve_references()
  config.evaluate.num_samples = 64
  mitigate_mode.sample_quality(config, 'unused', None)
  config.mitigation.quality_num_samples = 2048
  mitigate_mode.sample_quality(config, 'unused', None)
  assert seen == [(64, ('fd_classifier',), ('unconditional',)), (2048, ('fd_classifier',), ('unconditional',))]
  assert config.evaluate.num_samples == 64  # the run's own evaluate settings are left alone


def test_refit_decoder_trains_the_decoder_alone_on_the_rebalanced_stream(trained, monkeypatch):
  config, workdir = trained
  attributes = mitigate_mode.training_attributes(config)
  plans = [{'attributes': ['color', 'shape'], 'controlled': 'color', 'co_moved': 'shape', 'prototypes_a': [0],
            'edits': [{'prototype': 0, 'direction': 'raise', 'controlled': 'color', 'co_moved': 'shape'}]}]
  first = lambda make_iterator: np.asarray(next(iter(make_iterator()))['image'])
  _, rebalanced, _, _, _ = mitigate_mode._method_training(config, workdir, config, 'rebalance', plans, attributes, {})
  vc, view = mitigate_mode.make_view(config, workdir, 'refit_decoder', 'stage1_mitigated/refit_decoder',
                                     'latent_mitigated/refit_decoder')
  make_task, make_iterator, recipe, extra, _ = mitigate_mode._method_training(
      config, workdir, vc, 'refit_decoder', plans, attributes, {})
  np.testing.assert_array_equal(first(make_iterator), first(rebalanced))
  assert recipe['trained'] == 's_decoder' and 'rebalancing' in extra
  # the loss is the decoder's alone, by hand: its picture of s against the 2x2 block means, outline-weighted
  task = make_task([])
  _, _, variables, params, others = _counterfactual_parts(config, workdir)
  batch = {'image': jnp.asarray(data_lib.load_arrays(config.data, 'train', max_examples=4)['image'])}
  model = task.model
  s = model.apply(variables, batch['image'], method=model.encode).activations
  picture = np.asarray(model.apply(variables, s, method=model.decode_activations))
  image = np.asarray(batch['image'])
  k = image.shape[1] // picture.shape[1]
  target = image.reshape(4, picture.shape[1], k, picture.shape[1], k, 3).mean((2, 4))
  weights = np.asarray(diffusion.edge_weights(jnp.asarray(target), config.train.s_decoder_edge_weight))
  loss, grads = jax.value_and_grad(lambda p: task.loss_fn(p, others, batch, jax.random.PRNGKey(0), True)[0])(params)
  assert float(loss) == pytest.approx(float(np.mean(weights * (picture - target) ** 2)), rel=1e-5)
  norm = lambda tree: max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(tree))
  assert norm(grads['s_decoder']) > 0 and norm(grads['prototypes']) == 0 and norm(grads['unet']) == 0
  # fine-tuned: the prototype network and the U-Net stay the original's moving average, which it samples with
  # (weight decay and Adam's moments too: their parameters equal it exactly, their average up to rounding);
  # the decoder moved
  assert config.train.ema_decay > 0
  mitigate_mode.finetune(vc, workdir, view, make_task, make_iterator, sharding.make_mesh(config.mesh),
                         'refit_decoder', recipe)
  _, sampled_with, _ = loading.load_stage1_variables(config, workdir, use_ema=True)
  for use_ema in (False, True):
    _, after, _ = loading.load_stage1_variables(vc, view, use_ema=use_ema)
    check = np.testing.assert_array_equal if not use_ema else functools.partial(np.testing.assert_allclose, rtol=1e-6)
    for name in ('prototypes', 'unet'):
      for a, b in zip(jax.tree_util.tree_leaves(sampled_with['params'][name]),
                      jax.tree_util.tree_leaves(after['params'][name])):
        check(np.asarray(b), np.asarray(a))
    before = sampled_with if use_ema else loading.load_stage1_variables(config, workdir, use_ema=False)[1]
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before['params']['s_decoder'],
                                   after['params']['s_decoder'])
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_rare_combinations_count_what_a_shortcut_regenerates():
  # training labels: b = a for 90 of each a's 100 examples, 5 each of the others (and a = 2 never with b = 0
  # replaced by b = 1): weights P(a) P(b) / P(a, b) 0.37 on the diagonal (common), >= 2 off it (rare)
  train = [(a, b) for a in range(3) for b in range(3) for _ in range(90 if a == b else 5)]
  train = np.asarray([(2, 1) if (a, b) == (2, 0) else (a, b) for a, b in train])
  held = np.asarray([(a, b) for a in range(3) for b in range(3)] * 2)
  groups = mitigate_mode.combination_groups(train[:, 0], train[:, 1], held[:, 0], held[:, 1], 3, 3)
  np.testing.assert_array_equal(groups['usual_b'], [0, 1, 2])
  np.testing.assert_array_equal(groups['common'], [i for i, (a, b) in enumerate(held) if a == b])
  np.testing.assert_array_equal(groups['rare'], [i for i, (a, b) in enumerate(held) if a != b])  # (2, 0): unseen
  attributes = mitigate_mode.TrainingAttributes(['color', 'shape'], [(0, 1, 2), (0, 1, 2)], train, 'train')
  plans = [dict(attributes=['color', 'shape'], controlled='color', co_moved='shape')]
  data = {'attributes': held}
  shortcut = np.stack([held[:, 0], held[:, 0]], 1)  # B drawn from A
  faithful = held.copy()
  half = np.where((np.arange(len(held)) % 2 == 0)[:, None], faithful, shortcut)
  got = {name: mitigate_mode.rare_combinations(plans, attributes, data, held, regenerated)['color <-> shape']
         for name, regenerated in (('shortcut', shortcut), ('faithful', faithful), ('half', half))}
  assert got['shortcut'] == dict(rare_images=12, common_images=6, rare_keep_b=0.0, common_keep_b=1.0,
                                 rare_to_usual_b=1.0, rare_keep_a=1.0)
  assert (got['faithful']['rare_keep_b'], got['faithful']['rare_to_usual_b']) == (1.0, 0.0)
  assert got['half']['rare_keep_b'] == 0.5 and got['half']['common_keep_b'] == 1.0
  # the target: the rare combinations' B kept within target_tolerance of the common ones'
  raise_edit = dict(prototype=0, direction='raise', controlled='color', co_moved='shape', effect=0.3)
  plans[0]['edits'] = [raise_edit]
  diagnosis = _diagnosis({(0, 'raise'): {'color': (0.4, 0.4), 'shape': (0.3, 0.1)}}, [])
  mcfg = mitigate_config.mitigation_config()
  quality = {'fd_classifier': 1.0}
  compared = {name: mitigate_mode.compare(diagnosis, diagnosis, plans, quality, quality, mcfg, attributes,
                                          {'color <-> shape': got['shortcut']}, {'color <-> shape': r})
              for name, r in got.items()}
  assert [compared[n]['targets']['rare_combinations_kept'] for n in ('shortcut', 'faithful', 'half')] == [
      False, True, False]
  assert compared['faithful']['rare_combinations']['color <-> shape'] == dict(before=got['shortcut'],
                                                                              after=got['faithful'])
  # no held-out image of a rare combination: nothing shows that B is kept there
  diagonal = held[held[:, 0] == held[:, 1]]
  none = mitigate_mode.rare_combinations(plans, attributes, {'attributes': diagonal}, diagonal,
                                         diagonal)['color <-> shape']
  assert none['rare_images'] == 0 and none['rare_keep_b'] is None and none['common_keep_b'] == 1.0
  assert not mitigate_mode.compare(diagnosis, diagnosis, plans, quality, quality, mcfg, attributes, None,
                                   {'color <-> shape': none})['targets']['rare_combinations_kept']
  assert 'rare_combinations_kept' not in mitigate_mode.compare(diagnosis, diagnosis, plans, quality, quality, mcfg,
                                                               attributes)['targets']


def test_regenerations_read_each_image_and_its_regeneration_from_the_same_noise_for_every_call(trained):
  config, workdir = trained
  classifier = _counterfactual_parts(config, workdir)[0]
  model, variables, _ = loading.load_stage1_variables(config, workdir)  # the moving average, as the modes read it
  images = np.asarray(data_lib.load_arrays(config.data, config.data.eval_split, max_examples=5)['image'])
  c = config.copy_and_resolve_references()
  c.interpret.batch_size = 4  # 5 images: a padded second batch
  real, regenerated = mitigate_mode.regenerations(c, workdir, images, classifier, 3)
  again = mitigate_mode.regenerations(c, workdir, images, classifier, 3)
  np.testing.assert_array_equal(regenerated, again[1])
  assert real.shape == regenerated.shape == (5, 2)
  probs = interpret_core.classify_batch(classifier, jnp.asarray(images))
  np.testing.assert_array_equal(real, np.stack([np.argmax(np.asarray(q), -1) for q in probs], 1))
  # the regenerations are the interpret sampler's from each image's own s and the seed's noise
  spec = interpret_core.deterministic_spec(c.diffusion, c.interpret.sample_steps, c.interpret.sampler)
  s = interpret_core.encode_batch(model, variables, jnp.asarray(images))['s']
  x_T = jax.random.normal(jax.random.PRNGKey(3), images.shape, jnp.float32)
  direct = interpret_core.generate_batch(model, variables, s, x_T, spec)['images']
  probs = interpret_core.classify_batch(classifier, direct)
  np.testing.assert_array_equal(regenerated, np.stack([np.argmax(np.asarray(q), -1) for q in probs], 1))
