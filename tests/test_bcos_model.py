"""B-cos U-Net, task and explanations: W(x)x completeness, relevance, training, conditionings.

Tiny networks on 16x16 shapes images (rendered directly, no dataset preparation). Most tests
share one single-level U-Net (XLA compile time dominates on CPU); the external-embedding test
uses a two-level one, so the down/upsampling path is covered too.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from patronus_jax import config as config_lib
from patronus_jax.tasks.bcos.task import BcosTask, prompt_adherence
from patronus_jax.data import shapes
from patronus_jax.tasks.bcos import adherence as adherence_lib
from patronus_jax.tasks.bcos import explain as explain_lib
from patronus_jax.models.bcos_unet import decode_colors, encode_colors

SIZE = 16
BATCH = 4


def tiny_config(levels=1, **bcos):
  config = config_lib.base_config()
  config.model_type = 'bcos'
  config.data.name = 'patronus_shapes'
  config.data.image_size = SIZE
  config.diffusion.timesteps = 100
  config.diffusion.sample_steps = 4
  b = config.bcos
  b.base_channels, b.num_res_blocks = 8, 1
  b.channel_mults = (1, 2)[:levels]
  b.self_attention, b.cross_attention = (False, False)[:levels], (True, True)[:levels]
  b.num_groups, b.num_heads, b.time_dim, b.token_dim = 4, 2, 16, 16
  b.update(bcos)
  config.model.num_prototypes = 5
  config.model.encoder_channels = (8, 8)
  config.model.encoder_kernels = (3, 3)
  config.model.encoder_strides = (2, 1)
  config.model.encoder_paddings = (1, 0)
  return config_lib.validate(config)


def shapes_batch(n, seed=0):
  f = shapes.sample_factors(n, seed)
  images = shapes.render(f, SIZE).astype(np.float32) / 127.5 - 1.0
  return {'image': images, 'caption': np.array([shapes.caption(l) for l in f['labels']]),
          'attributes': f['labels']}


def rel(a, b):
  return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


@pytest.fixture(scope='module')
def text_task():
  return BcosTask(tiny_config())


@pytest.fixture(scope='module')
def trained(text_task):
  """A tiny text-conditioned model trained for 40 steps on 64 fixed shapes images."""
  task = text_task
  data = task.prepare_batch(shapes_batch(64))
  variables = task.init_variables(jax.random.PRNGKey(0), {k: v[:BATCH] for k, v in data.items()})
  params = variables.pop('params')
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch, key):
    (loss, _), g = jax.value_and_grad(task.loss_fn, has_aux=True)(params, variables, batch, key, True)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss

  eval_key = jax.random.PRNGKey(123)
  eval_loss = jax.jit(lambda p: task.loss_fn(p, variables, data, eval_key, False)[0])
  before = float(eval_loss(params))
  rng = np.random.default_rng(0)
  for i in range(40):
    idx = rng.choice(64, 16, replace=False)
    params, state, _ = step(params, state, {k: v[idx] for k, v in data.items()}, jax.random.PRNGKey(i))
  after = float(eval_loss(params))
  return dict(params=params, variables=variables, before=before, after=after, data=data)


def test_colour_encoding_is_invertible_linearly():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 3, 3), minval=-1, maxval=1)
  e = encode_colors(x)
  assert e.shape[-1] == 6
  np.testing.assert_allclose(e[..., :3] + e[..., 3:], 1.0, atol=1e-6)
  np.testing.assert_allclose(decode_colors(e), x, atol=1e-6)


def test_no_bias_parameters(text_task):
  batch = text_task.prepare_batch(shapes_batch(2))
  variables = jax.eval_shape(lambda: text_task.init_variables(jax.random.PRNGKey(0), batch))
  names = {str(getattr(p[-1], 'key', p[-1])) for p, _ in
           jax.tree_util.tree_leaves_with_path(variables['params'])}
  assert 'bias' not in names
  assert names <= {'kernel', 'scale', 'output_gain', 'embedding'}


def test_task_loss_goes_down(trained):
  assert np.isfinite(trained['before']) and np.isfinite(trained['after'])
  assert trained['after'] < 0.7 * trained['before'], (trained['before'], trained['after'])


@pytest.mark.parametrize('weights', ['random', 'trained'])
def test_output_equals_sum_of_contributions(text_task, trained, weights):
  task = text_task
  data = trained['data']
  if weights == 'trained':
    params, variables = trained['params'], trained['variables']
  else:
    variables = task.init_variables(jax.random.PRNGKey(7), {k: v[:BATCH] for k, v in data.items()})
    params = variables.pop('params')
  key = jax.random.PRNGKey(3)
  x_t = jax.random.normal(key, (BATCH, SIZE, SIZE, 3))
  t = jnp.array([3, 20, 60, 99])
  cond = {'token_ids': jnp.asarray(data['token_ids'][:BATCH])}
  for target in ('x0', 'output'):
    e = explain_lib.explain_step_fn(task, target)(params, variables, x_t, t, cond)
    assert float(jnp.max(e.completeness_error)) < 1e-4
    assert float(jnp.max(e.sum_error)) < 1e-4
    total = (jnp.sum(e.image_contributions, axis=(1, 2, 3)) + e.time_contribution
             + jnp.sum(e.token_contributions, axis=-1))
    np.testing.assert_allclose(total, e.total, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e.total))))
  # Explanation mode leaves the forward values unchanged (up to float rounding).
  out = np.asarray(jax.jit(lambda p: task.apply(p, variables, x_t, t, cond))(params))
  np.testing.assert_allclose(e.output, out, rtol=1e-5, atol=1e-5 * np.abs(out).max())


def test_gradient_rows_equal_finite_differences_of_linearised_map(text_task, trained):
  task, params, variables = text_task, trained['params'], trained['variables']
  x_t = jax.random.normal(jax.random.PRNGKey(4), (2, SIZE, SIZE, 3))
  t = jnp.array([10, 80])
  cond = {'token_ids': jnp.asarray(trained['data']['token_ids'][:2])}
  out_index = (1, 5, 9, 2)
  h = 0.25
  checks = [(0, (1, 3, 4, 0)), (0, (1, 7, 8, 5)), (1, (1, 2)), (2, (1, 0, 5)), (2, (1, 2, 11))]

  @jax.jit
  def rows_and_differences(params):
    inputs = task.model.apply({'params': params, **variables}, x_t, t, cond, method='inputs')
    f = explain_lib.explained_function(task, params, variables, inputs.token_mask, inputs.abar, 'x0')
    primals = (inputs.image, inputs.time, inputs.tokens)
    y, f_jvp = jax.linearize(f, *primals)
    row = jax.linear_transpose(f_jvp, *primals)(jnp.zeros_like(y).at[out_index].set(1.0))
    # W(x)_{out, i} by finite differences of the linearised map along input unit vectors.
    fds, grads = [], []
    for which, idx in checks:
      e = [jnp.zeros_like(p) for p in primals]
      e[which] = e[which].at[idx].set(1.0)
      shifted = [p + h * d for p, d in zip(primals, e)]
      fds.append((f_jvp(*shifted) - f_jvp(*primals))[out_index] / h)
      grads.append(row[which][idx])
    # The training-mode gradient of the same output differs: its dynamic factors move too.
    f_train = lambda *a: task.model.apply({'params': params, **variables}, *a, inputs.token_mask,
                                          inputs.abar, method='network')
    f_out = explain_lib.explained_function(task, params, variables, inputs.token_mask, inputs.abar,
                                           'output')
    v = jnp.ones_like(y)
    g_train = jax.vjp(f_train, *primals)[1](v)[0]
    g_explain = jax.vjp(f_out, *primals)[1](v)[0]
    return jnp.stack(fds), jnp.stack(grads), g_train, g_explain

  fds, grads, g_train, g_explain = rows_and_differences(params)
  np.testing.assert_allclose(fds, grads, rtol=1e-3, atol=1e-6)
  assert float(jnp.max(jnp.abs(grads))) > 0
  assert rel(g_train, g_explain) > 1e-2


def test_relevance_and_generation_explanations(text_task, trained):
  task, params, variables = text_task, trained['params'], trained['variables']
  ids = jnp.asarray(trained['data']['token_ids'][:2])
  x_T = jax.random.normal(jax.random.PRNGKey(5), (2, SIZE, SIZE, 3))
  raw = explain_lib.explain_generation(task, params, variables, {'token_ids': ids}, x_T,
                                       num_steps=4, steps='all')
  assert raw['samples'].shape == (2, SIZE, SIZE, 3)
  assert raw['token_relevance'].shape == (4, 2, task.config.bcos.max_tokens)
  assert np.all(raw['completeness_error'] < 1e-4)
  rel_ = raw['token_relevance']
  mask = np.asarray(ids) != 0
  assert np.all(rel_ >= 0)
  np.testing.assert_allclose(rel_.sum(-1), 1.0, rtol=1e-5)
  assert np.all(rel_[:, ~mask] == 0)
  np.testing.assert_allclose(sum(raw['shares'].values()), 1.0, rtol=1e-5)
  # Explaining 'last' gives the same numbers as the last of 'all'.
  last = explain_lib.explain_generation(task, params, variables, {'token_ids': ids}, x_T,
                                        num_steps=4, steps='last')
  np.testing.assert_allclose(last['token_relevance'][0], rel_[-1], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(last['samples'], raw['samples'], rtol=1e-5, atol=1e-5)
  m = explain_lib.contribution_map(raw['image_weights'][-1, 0], raw['image_inputs'][-1, 0])
  assert m.shape == (SIZE, SIZE, 4) and m.min() >= 0 and m.max() <= 1
  assert explain_lib.render_contribution_map(raw['image_weights'][-1, 0],
                                             raw['image_inputs'][-1, 0]).dtype == np.uint8


def test_whole_generation_explanation_is_exact_and_matches_one_step(text_task, trained):
  """The DDIM chain x_T -> x_0 explained as one W x: exact, the sampler's image, and for a
  one-step chain (x_0 = x̂0 of that step) the per-step explanation's numbers."""
  task, params, variables = text_task, trained['params'], trained['variables']
  ids = jnp.asarray(trained['data']['token_ids'][:2])
  cond = {'token_ids': ids}
  x_T = jax.random.normal(jax.random.PRNGKey(6), (2, SIZE, SIZE, 3))
  w = explain_lib.explain_whole_generation(task, params, variables, cond, x_T, num_steps=4,
                                           token_maps=True)
  assert w['token_maps'].shape == (2, task.config.bcos.max_tokens, SIZE, SIZE, 3)
  np.testing.assert_allclose(w['token_maps'].sum((2, 3, 4)), w['token_contributions'],
                             rtol=1e-4, atol=1e-5)
  assert np.all(w['token_maps'][~(np.asarray(ids) != 0)] == 0)
  np.testing.assert_allclose(w['samples'], task.sample(params, variables, cond, x_T, 4),
                             rtol=1e-5, atol=1e-5)
  assert np.all(w['completeness_error'] < 1e-4) and np.all(w['sum_error'] < 1e-4)
  summed = (w['noise_contributions'].sum((1, 2, 3)) + w['constant_contribution']
            + w['time_contribution'] + w['token_contributions'].sum(-1))
  np.testing.assert_allclose(summed, w['samples'].sum((1, 2, 3)), rtol=1e-4, atol=1e-4)
  mask = np.asarray(ids) != 0
  assert np.all(w['token_relevance'] >= 0) and np.all(w['token_relevance'][~mask] == 0)
  np.testing.assert_allclose(w['token_relevance'].sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(sum(w['shares'].values()), 1.0, rtol=1e-5)
  assert np.all(np.abs(w['token_contributions'][mask]) > 0)

  one = explain_lib.explain_whole_generation(task, params, variables, cond, x_T, num_steps=1)
  step = explain_lib.explain_generation(task, params, variables, cond, x_T, num_steps=1, steps='all')
  np.testing.assert_allclose(one['samples'], step['x0_hat'][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one['token_contributions'], step['token_contributions'][0],
                             rtol=1e-4, atol=1e-6)
  image_c = step['image_contributions'][0].sum((1, 2, 3))
  np.testing.assert_allclose(one['noise_contributions'].sum((1, 2, 3)) + one['constant_contribution'],
                             image_c, rtol=1e-4, atol=1e-5)


def test_explain_workdir_writes_reports(tmp_path, text_task, trained):
  config = tiny_config(explain_prompts='a large red circle in the top left on a dark background; '
                       'a small blue square in the bottom right on a light background',
                       num_explain=2, explain_steps='last')
  report = explain_lib.explain_workdir(config, str(tmp_path), trained['params'], trained['variables'],
                                       task=text_task)
  files = sorted(os.listdir(tmp_path / 'explain'))
  assert files == ['prompt_0.json', 'prompt_0.png', 'prompt_1.json', 'prompt_1.png', 'report.json',
                   'samples.png']
  s = report['summary']
  assert s['completeness_error'] < 1e-4 and s['completeness_ok']
  assert s['explained_steps'] == [3]
  p = report['prompts'][0]
  assert p['tokens'][:4] == ['a', 'large', 'red', 'circle']
  np.testing.assert_allclose(sum(p['relevance']), 1.0, rtol=1e-5)
  assert s['content_word_relevance'] is not None and s['function_word_relevance'] is not None
  # The whole-generation explanation (bcos.explain_whole, on by default) is in every report.
  g = s['generation']
  assert g['completeness_error'] < 1e-4
  assert set(g['input_shares']) == {'noise', 'constant', 'time', 'tokens'}
  np.testing.assert_allclose(sum(p['generation']['relevance']), 1.0, rtol=1e-5)
  assert len(p['generation']['relevance']) == len(p['tokens'])


def test_followed_words_and_adherence():
  names = ('background', 'shape', 'color')
  values = (('dark', 'gray', 'light'), ('circle', 'square', 'triangle'), ('red', 'green', 'blue'))
  fw = explain_lib.followed_words('a red circle on a dark background',
                                  {'background': 0, 'shape': 1, 'color': 0}, names, values)
  assert fw == {'dark': True, 'circle': False, 'red': True}
  pred = {'shape': np.array([0, 1]), 'color': np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])}
  out = prompt_adherence(pred, np.array([[0, 0, 0], [1, 1, 1]]), names)
  assert out['accuracy'] == {'shape': 1.0, 'color': 0.5}
  assert out['color_and_shape'] == 0.5


def test_prototype_tokens_give_exact_per_prototype_contributions():
  """The Patronus model built from B-cos layers: token j = s_j e_j."""
  task = BcosTask(tiny_config(conditioning='prototypes'))
  batch = task.prepare_batch(shapes_batch(BATCH))
  assert set(batch) == {'image'}
  variables = task.init_variables(jax.random.PRNGKey(0), batch)
  params = variables.pop('params')
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: task.loss_fn(p, variables, batch, jax.random.PRNGKey(1), True)[0]))(params)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert float(jnp.sum(jnp.abs(grads['prototype_network']['prototype_vectors']))) > 0
  x_t = jax.random.normal(jax.random.PRNGKey(2), batch['image'].shape)
  t = jnp.array([5, 30, 60, 90])
  s = task.model.apply({'params': params, **variables}, jnp.asarray(batch['image']),
                       method='prototype_activations')
  e = explain_lib.explain_step_fn(task)(params, variables, x_t, t, {'s': s})
  assert float(jnp.max(e.completeness_error)) < 1e-4
  assert e.token_contributions.shape == (BATCH, 5)
  # C_j = s_j (g_j . e_j): the contribution per unit of activation times the activation.
  per_unit = jnp.sum(e.token_weights * params['prototype_embedding'][None], axis=-1)
  np.testing.assert_allclose(e.token_contributions, s * per_unit, rtol=1e-4, atol=1e-6)


def test_external_embeddings_slot():
  task = BcosTask(tiny_config(levels=2, conditioning='external', external_dim=12))
  raw = shapes_batch(BATCH)
  with pytest.raises(ValueError, match='text_embedding'):
    task.prepare_batch(raw)
  emb = np.random.default_rng(0).normal(size=(BATCH, 5, 12)).astype(np.float32)
  mask = np.ones((BATCH, 5), bool)
  mask[:, 3:] = False
  batch = task.prepare_batch(dict(raw, text_embedding=emb, text_mask=mask))
  variables = task.init_variables(jax.random.PRNGKey(0), batch)
  params = variables.pop('params')
  cond = task.condition(jax.tree_util.tree_map(jnp.asarray, batch))
  e = explain_lib.explain_step_fn(task)(params, variables, jnp.asarray(batch['image']),
                                       jnp.array([1, 2, 3, 4]), cond)
  assert float(jnp.max(e.completeness_error)) < 1e-4
  np.testing.assert_array_equal(e.token_contributions[:, 3:], 0.0)


def test_prepare_batch_checks_image_shape(text_task):
  raw = shapes_batch(2)
  raw['image'] = raw['image'][:, :8]
  with pytest.raises(ValueError, match='images must be'):
    text_task.prepare_batch(raw)


def test_word_dropout_only_when_training(text_task):
  task = BcosTask(tiny_config(token_dropout=0.5))
  ids = jnp.asarray(task.prepare_batch(shapes_batch(8))['token_ids'])
  kept = task.condition({'token_ids': ids}, jax.random.PRNGKey(0), train=True)['token_ids']
  assert 0 < int(jnp.sum(kept != 0)) < int(jnp.sum(ids != 0))
  same = task.condition({'token_ids': ids}, jax.random.PRNGKey(0), train=False)['token_ids']
  np.testing.assert_array_equal(same, ids)


def test_frequent_words_are_subsampled():
  # word2vec's rule on the batch's own frequencies: a word in every caption is dropped with
  # probability 1 - sqrt(t), one in a fraction f with max(token_dropout, 1 - sqrt(t / f)).
  task = BcosTask(tiny_config(token_dropout=0.1, token_subsample=0.25, max_tokens=16))
  ids = np.asarray(task.prepare_batch(shapes_batch(64))['token_ids'])
  p = np.asarray(task.drop_probability(jnp.asarray(ids)))
  for word in ('a', 'on', 'background', 'circle', 'red'):
    i = task.tokenizer.word_id(word)
    f = np.mean(np.any(ids == i, axis=1))
    np.testing.assert_allclose(p[ids == i], max(0.1, 1 - np.sqrt(0.25 / f)), rtol=1e-6)
  np.testing.assert_allclose(p[ids == task.tokenizer.word_id('on')], 0.5, rtol=1e-6)
  # Over many draws the kept fraction of "on" is 1 - 0.5 and of a colour word about 0.9.
  on, red = task.tokenizer.word_id('on'), task.tokenizer.word_id('red')
  kept = {on: [], red: []}
  for k in range(20):
    out = np.asarray(task.condition({'token_ids': jnp.asarray(ids)}, jax.random.PRNGKey(k),
                                    train=True)['token_ids'])
    for w in kept:
      kept[w].append(np.sum(out == w) / np.sum(ids == w))
  assert abs(np.mean(kept[on]) - 0.5) < 0.05 and abs(np.mean(kept[red]) - 0.9) < 0.05
  off = BcosTask(tiny_config(token_dropout=0.1))
  np.testing.assert_allclose(np.asarray(off.drop_probability(jnp.asarray(ids))), 0.1)


def test_start_token_is_never_dropped():
  task = BcosTask(tiny_config(token_dropout=0.5, start_token=True))
  ids = jnp.asarray(task.prepare_batch(shapes_batch(8))['token_ids'])
  assert bool(jnp.all(ids[:, 0] == task.tokenizer.start_id))
  kept = task.condition({'token_ids': ids}, jax.random.PRNGKey(0), train=True)['token_ids']
  assert bool(jnp.all(kept[:, 0] == task.tokenizer.start_id))
  assert 0 < int(jnp.sum(kept[:, 1:] != 0)) < int(jnp.sum(ids[:, 1:] != 0))


# ----------------------------------------------------------------------------- relevance as adherence detector

SHAPE_NAMES = ('background', 'shape', 'color', 'position')
SHAPE_VALUES = (('dark', 'gray', 'light'), ('circle', 'square', 'triangle'), ('red', 'green', 'blue'),
                ('top-left', 'top-right'))


def test_named_attributes_finds_multi_word_values_and_skips_ambiguous_ones():
  tokens = 'a red circle in the top left on a dark background'.split()
  got = adherence_lib.named_attributes(tokens, SHAPE_NAMES, SHAPE_VALUES)
  assert got == {'color': (0, [1]), 'shape': (0, [2]), 'position': (0, [5, 6]), 'background': (0, [9])}
  both = adherence_lib.named_attributes('a red green circle'.split(), SHAPE_NAMES, SHAPE_VALUES)
  assert 'color' not in both and both['shape'] == (0, [3])


def test_word_records_sum_the_relevance_of_a_values_words_and_mark_misses():
  tokens = ['a red circle in the top left on a dark background'.split()]
  relevance = np.arange(11, dtype=np.float64)[None] / 55.0
  labels = np.array([[0, 0, 0, 0]])
  predicted = {'background': np.array([0]), 'shape': np.array([2]), 'color': np.array([0]),
               'position': np.array([0])}
  records = {r['attribute']: r for r in adherence_lib.word_records(tokens, relevance, labels, predicted,
                                                                    SHAPE_NAMES, SHAPE_VALUES)}
  assert records['position']['relevance'] == pytest.approx((5 + 6) / 55.0)
  assert records['position']['word'] == 'top left'
  assert records['shape']['followed'] is False and records['shape']['seen'] == 'triangle'
  assert records['color']['followed'] is True
  with pytest.raises(ValueError, match='names color'):
    adherence_lib.word_records(tokens, relevance, np.array([[0, 0, 1, 0]]), predicted, SHAPE_NAMES, SHAPE_VALUES)


def test_relevance_auroc_is_the_mann_whitney_probability_that_a_miss_ranks_lower():
  # Missed 0.1, 0.3; followed 0.2, 0.4, 0.5: 5 of the 6 (missed, followed) pairs have the miss lower.
  records = ([dict(attribute='color', word='red', relevance=r, followed=False) for r in (0.1, 0.3)]
             + [dict(attribute='color', word='red', relevance=r, followed=True) for r in (0.2, 0.4, 0.5)]
             + [dict(attribute='shape', word='circle', relevance=0.2, followed=True)])
  out = adherence_lib.relevance_auroc(records, num_bootstrap=200)
  c = out['color']
  assert c['auroc'] == pytest.approx(5 / 6) and c['auroc_within_word'] == pytest.approx(5 / 6)  # one word
  assert c['num_missed'] == 2 and c['num_followed'] == 3
  assert c['mean_relevance_missed'] == pytest.approx(0.2)
  assert 0.0 <= c['ci_low'] <= c['auroc'] <= c['ci_high'] <= 1.0
  assert out['shape']['auroc'] is None and out['shape']['num_missed'] == 0  # never missed: no AUROC


def test_within_word_auroc_compares_a_miss_only_with_the_same_word():
  # 'yellow' always low, 'blue' always high: pooled, the blue miss (0.5) outranks yellow's followed
  # ones; within each word every miss is below its word's followed instances.
  rel = np.array([0.01, 0.02, 0.03, 0.5, 0.6, 0.7])
  missed = np.array([True, False, False, True, False, False])
  words = ['yellow'] * 3 + ['blue'] * 3
  assert adherence_lib.within_word_auroc(rel, missed, words) == pytest.approx(1.0)
  assert adherence_lib.auroc_missed(rel, missed) == pytest.approx(6 / 8)
  assert adherence_lib.within_word_auroc(rel, missed, ['a', 'b', 'b', 'c', 'c', 'c']) == pytest.approx(1.0)
  assert adherence_lib.within_word_auroc(rel, missed, ['a', 'b', 'c', 'd', 'e', 'f']) is None


def test_vanilla_unet_has_biases_same_size_and_no_explanation_mode():
  config = tiny_config(levels=2)
  config.bcos.vanilla = True
  vanilla = BcosTask(config)
  batch = vanilla.prepare_batch(shapes_batch(2))
  params = vanilla.init_variables(jax.random.PRNGKey(0), batch)['params']
  names = {str(getattr(p[-1], 'key', p[-1])) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert 'bias' in names
  bcos_params = BcosTask(tiny_config(levels=2)).init_variables(jax.random.PRNGKey(0), batch)['params']
  count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
  assert abs(count(params) / count(bcos_params) - 1) < 0.1  # same width and depth
  x, t = jnp.asarray(batch['image']), jnp.array([5, 50])
  cond = vanilla.condition({k: jnp.asarray(v) for k, v in batch.items()})
  out = vanilla.apply(params, {}, x, t, cond)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # Its output depends on the tokens: the cross-attention is wired.
  other = vanilla.apply(params, {}, x, t, {'token_ids': jnp.roll(cond['token_ids'], 1, axis=0)})
  assert float(jnp.max(jnp.abs(other - out))) > 1e-6
  with pytest.raises(ValueError, match='no explanation mode'):
    vanilla.apply(params, {}, x, t, cond, explain=True)
