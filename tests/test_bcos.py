"""B-cos layers (parity with the official B-cos v2 fixture, explanation mode), tokenizer, config."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax import config as config_lib
from patronus_jax import convert
from patronus_jax.tasks.bcos import tokenizer as text
from patronus_jax.models import bcos


@pytest.fixture(scope='module')
def fixture(fixtures_dir):
  with np.load(os.path.join(fixtures_dir, 'bcos_layers.npz')) as data:
    return {k: data[k] for k in data.files}


def _rel(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


# ----------------------------------------------------------------------------- layers

def test_every_fixture_case_matches_official(fixture):
  ours = bcos.fixture_outputs(fixture)
  cases = json.loads(str(fixture['config']))['cases']
  expected = [f'{kind}_{c}' for c in cases for kind in ('conv', 'linear')] + ['conv_strided']
  assert sorted(ours) == sorted(expected)
  for name in expected:
    ref = fixture[f'{name}/out']
    assert ours[name].shape == ref.shape, name
    assert _rel(ours[name], ref) < 1e-5, name


def test_verify_fixture_prints_one_ok_line_per_case(fixtures_dir):
  import io
  stream = io.StringIO()
  assert convert.verify_fixture(os.path.join(fixtures_dir, 'bcos_layers.npz'), stream=stream)
  lines = stream.getvalue().strip().splitlines()
  assert len(lines) == 17 and all(line.endswith(' ok') for line in lines)


def test_weights_are_normalised_per_unit(fixture):
  # Scaling a unit's raw weight does not change the output (only its direction matters).
  w = fixture['linear_b2_m2/weight'].copy()
  w[3] *= 7.0
  x = fixture['in/x_linear']
  a = bcos._dense(x, fixture['linear_b2_m2/weight'], 2.0, 2)
  b = bcos._dense(x, w, 2.0, 2)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_b2_dense_is_cos_times_projection():
  k = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  layer = bcos.BcosDense(3, b=2.0)
  out = layer.apply({'params': {'kernel': k}}, x)
  w_hat = k / jnp.linalg.norm(k, axis=0)
  lin = x @ w_hat
  cos = lin / jnp.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(out, jnp.abs(cos) * lin, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('b,m', [(2.0, 1), (2.0, 2), (1.5, 2), (2.5, 1)])
def test_dense_gradient_in_explanation_mode_is_the_dynamic_weight(b, m):
  """d out / d x (explain) equals W(x) = diag(|cos|^(B-1)) Ŵ_selectedᵀ, computed explicitly."""
  k = jax.random.normal(jax.random.PRNGKey(2), (6, 4 * m))
  x = jax.random.normal(jax.random.PRNGKey(3), (6,))
  layer = bcos.BcosDense(4, b=b, max_out=m)
  v = {'params': {'kernel': k}}
  jac, jac_train = jax.jit(lambda x: (jax.jacrev(lambda x: layer.apply(v, x, explain=True))(x),
                                      jax.jacrev(lambda x: layer.apply(v, x))(x)))(x)
  w_hat = k / jnp.linalg.norm(k, axis=0)
  lin = (x @ w_hat).reshape(4, m)
  sel = jnp.argmax(lin, axis=-1)
  w_sel = w_hat.reshape(6, 4, m)[:, jnp.arange(4), sel]  # (6, 4)
  out_lin = lin[jnp.arange(4), sel]
  cos = jnp.abs(out_lin / (jnp.linalg.norm(x) + 1e-12))
  scale = cos if b == 2 else (cos + 1e-6) ** (b - 1)
  w_dyn = (w_sel * scale).T  # (4, 6) = W(x)
  np.testing.assert_allclose(jac, w_dyn, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w_dyn @ x, layer.apply(v, x), rtol=1e-5, atol=1e-6)
  # Outside explanation mode the gradient also moves the scale: not W(x).
  assert float(jnp.max(jnp.abs(jac_train - w_dyn))) > 1e-3


def test_conv_norm_and_attention_are_dynamic_linear_in_explanation_mode():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, 8))
  ctx = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 5))
  mask = jnp.array([[True, True, False], [True, True, True]])

  class Net(bcos.nn.Module):
    @bcos.nn.compact
    def __call__(self, x, ctx, explain=False):
      h = bcos.BcosConv(8, 3, 1, 1, max_out=2)(x, explain)
      h = bcos.BiasFreeNorm(4)(h, explain)
      h = bcos.BcosConv(8, 3, 2, 1, b=2.5)(h, explain)
      h = bcos.BiasFreeNorm(2, centered=False)(h, explain)
      b, hh, ww, c = h.shape
      seq = h.reshape(b, hh * ww, c)
      seq = seq + bcos.BcosAttention(8, 2)(seq, explain=explain)
      seq = seq + bcos.BcosAttention(8, 2, null_slot=True)(seq, ctx, mask, explain=explain)
      return bcos.BcosDense(3, b=1.5)(seq, explain)

  net = Net()
  v = net.init(jax.random.PRNGKey(6), x, ctx)
  out_index = (0, 2, 1)
  probes = [(0, 1, 2, 3), (0, 4, 0, 7), (1, 5, 5, 0)]
  h = 0.5

  @jax.jit
  def check(x, ctx):
    fn = lambda x, ctx: net.apply(v, x, ctx, explain=True)
    y, f_jvp = jax.linearize(fn, x, ctx)
    # W(x) rows from the transpose (vjp) against finite differences of the linearised map
    # (exact for a linear map): (f_lin(x + h e) - f_lin(x)) / h.
    g_x, g_ctx = jax.linear_transpose(f_jvp, x, ctx)(jnp.zeros_like(y).at[out_index].set(1.0))
    fds = [(f_jvp(x + h * jnp.zeros_like(x).at[i].set(1.0), ctx) - f_jvp(x, ctx))[out_index] / h
           for i in probes]
    _, f_train = jax.linearize(lambda x, ctx: net.apply(v, x, ctx), x, ctx)
    return (y, f_jvp(x, ctx), net.apply(v, x, ctx), jnp.stack(fds),
            jnp.stack([g_x[i] for i in probes]), g_ctx, f_train(x, ctx))

  y, rec, plain, fds, rows, g_ctx, rec_train = check(x, ctx)
  np.testing.assert_allclose(rec, y, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(y))))
  # Explanation mode changes gradients, never values.
  np.testing.assert_allclose(plain, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fds, rows, rtol=1e-4, atol=1e-6)
  # Masked context tokens get no contribution.
  np.testing.assert_allclose(g_ctx[0, 2], 0.0, atol=0)
  # Outside explanation mode, the linearisation does not reproduce f(x) (the scale moves too).
  assert float(jnp.linalg.norm(rec_train - y) / jnp.linalg.norm(y)) > 1e-2


def test_zero_inputs_have_finite_gradients():
  layer = bcos.BcosDense(3)
  v = layer.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
  g = jax.grad(lambda x: jnp.sum(layer.apply(v, x)))(jnp.zeros((2, 4)))
  assert np.all(np.isfinite(g))


def test_masked_softmax_rows_without_keys_are_zero():
  for null in (False, True):
    w = bcos.masked_softmax(jnp.ones((1, 2, 3)), jnp.zeros((1, 1, 3), bool), null)
    np.testing.assert_array_equal(w, 0.0)


def test_null_slot_softmax_is_off_by_one():
  logits = jnp.array([[0.5, -1.0, 2.0, 40.0]])
  mask = jnp.array([[True, True, True, False]])
  w = bcos.masked_softmax(logits, mask, null_slot=True)
  e = jnp.exp(logits[:, :3])
  np.testing.assert_allclose(w[:, :3], e / (1.0 + e.sum()), rtol=1e-6)
  assert float(w[0, 3]) == 0.0 and float(w.sum()) < 1.0
  np.testing.assert_allclose(bcos.masked_softmax(logits, mask)[:, :3], e / e.sum(), rtol=1e-6)


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_and_unknown_words():
  tok = text.tokenizer_for('patronus_shapes')
  caption = 'a large red striped circle in the top left on a dark background'
  ids = tok.encode(caption)
  assert text.PAD_ID not in ids and text.UNK_ID not in ids
  assert tok.decode(ids) == caption
  assert tok.decode(tok.encode('A  Large-RED circle!')) == 'a large red circle'
  ids = tok.encode('a purple hexagon')
  assert ids[0] == tok.word_id('a') and ids[1:] == [text.UNK_ID, text.UNK_ID]
  assert tok.decode(ids) == 'a <unk> <unk>'
  batch, mask = tok.encode_batch([caption, 'a red'], 16)
  assert batch.shape == (2, 16) and batch.dtype == np.int32
  assert mask.sum(1).tolist() == [13, 2]
  assert tok.decode(batch[0]) == caption
  short, _ = tok.encode_batch([caption], 4)
  assert tok.decode(short[0]) == 'a large red striped'


def test_tokenizer_vocabularies_are_deterministic_and_saved(tmp_path):
  tok = text.tokenizer_for('patronus_shapes')
  assert tok == text.tokenizer_for('patronus_shapes')
  for w in ('red', 'green', 'blue', 'yellow', 'circle', 'square', 'triangle', 'striped', 'dark'):
    assert tok.word_id(w) > text.UNK_ID
  path = str(tmp_path / 'vocab.json')
  tok.save(path)
  assert text.Tokenizer.load(path) == tok
  built = text.Tokenizer.from_texts(['b a', 'a c', 'a'], min_count=1)
  assert built.vocabulary == ('<pad>', '<unk>', 'a', 'b', 'c')
  with pytest.raises(ValueError, match='repeated'):
    text.Tokenizer(['a', 'a'])


def test_start_token_leads_every_text_and_survives_save_and_old_files(tmp_path):
  tok = text.tokenizer_for('patronus_shapes', start_token=True)
  plain = text.tokenizer_for('patronus_shapes')
  assert tok.vocab_size == plain.vocab_size + 1 and tok.start_id == text.START_ID and plain.start_id is None
  ids = tok.encode('a red circle')
  assert ids[0] == text.START_ID and tok.tokens(ids) == ['<s>', 'a', 'red', 'circle']
  batch, mask = tok.encode_batch(['a red circle', ''], 6)
  assert mask.sum(1).tolist() == [4, 1]
  path = str(tmp_path / 'vocab.json')
  tok.save(path)
  assert text.Tokenizer.load(path) == tok and text.Tokenizer.load(path).start_token
  # A vocabulary file written before the start token existed loads without one.
  with open(path, 'w') as f:
    f.write('{"vocabulary": ["a", "red", "circle"]}')
  old = text.Tokenizer.load(path)
  assert not old.start_token and old.encode('a red circle') == [2, 3, 4]


# ----------------------------------------------------------------------------- config

def test_default_bcos_config_validates_and_has_no_none():
  config = config_lib.base_config()
  config.model_type = 'bcos'
  config_lib.validate(config)
  assert all(v is not None for v in config.bcos.values())


@pytest.mark.parametrize('field,value,match', [
    ('b', 0.5, 'bcos.b'),
    ('max_out', 0, 'bcos.max_out'),
    ('norm', 'batch', 'bcos.norm'),
    ('conditioning', 'clip', 'bcos.conditioning'),
    ('self_attention', (True,), 'bcos.self_attention'),
    ('num_heads', 3, 'bcos.num_heads'),
    ('num_groups', 5, 'bcos.num_groups'),
    ('time_dim', 7, 'bcos.time_dim'),
    ('token_dropout', 1.0, 'bcos.token_dropout'),
    ('token_subsample', 1.5, 'bcos.token_subsample'),
    ('explain_steps', 'some', 'bcos.explain_steps'),
    ('explain_target', 'eps', 'bcos.explain_target'),
    ('completeness_tolerance', 0.0, 'bcos.completeness_tolerance'),
])
def test_config_validation_names_the_field(field, value, match):
  config = config_lib.base_config()
  config.bcos[field] = value
  with pytest.raises(config_lib.ConfigError, match=match.replace('.', r'\.')):
    config_lib.validate(config)


def test_external_conditioning_needs_a_width():
  config = config_lib.base_config()
  config.bcos.conditioning = 'external'
  with pytest.raises(config_lib.ConfigError, match=r'bcos\.external_dim'):
    config_lib.validate(config)
  config.bcos.external_dim = 32
  config_lib.validate(config)


def test_unknown_bcos_field_is_rejected():
  config = config_lib.base_config()
  config.bcos.beta = 2.0
  with pytest.raises(config_lib.ConfigError, match=r'bcos\.beta'):
    config_lib.validate(config)


def test_parse_steps():
  from patronus_jax.tasks.bcos.config import parse_steps
  assert parse_steps('all', 4) == [0, 1, 2, 3]
  assert parse_steps('last', 4) == [3]
  assert parse_steps('0, -1, 2', 10) == [0, 2, 9]
  with pytest.raises(ValueError):
    parse_steps('12', 10)
