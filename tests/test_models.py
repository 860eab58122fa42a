"""Shapes, invariants and options of the Patronus networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax.models import latent as latent_lib
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.models.unet import Patronus

KEY = jax.random.PRNGKey(0)


def tiny(**kw):
  args = dict(image_channels=3, num_prototypes=6, encoder_channels=(8, 16, 16, 16),
              base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
              attention=(False, True), dropout=0.1)
  args.update(kw)
  return Patronus(**args)


@pytest.fixture(scope='module')
def model_and_vars():
  model = tiny()
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  variables = jax.jit(model.init)(KEY, x, jnp.array([3, 500]))
  return model, variables, x


def test_shapes_and_collections(model_and_vars):
  model, variables, x = model_and_vars
  assert set(variables) == {'params', 'buffers'}
  t = jnp.array([1, 999])
  out = model.apply(variables, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  enc = model.apply(variables, x, method=model.encode)
  rf = proto_lib.receptive_field(16, (3, 3, 3, 3), (2, 1, 1, 1), (1, 0, 0, 0))
  assert enc.activations.shape == (2, 6) and enc.distances.shape == (2, rf.n, rf.n, 6)
  # s = log((d+1)/(d+1e-4)) of the min over positions, whose position is the argmin.
  flat = np.asarray(enc.distances).reshape(2, -1, 6)
  np.testing.assert_allclose(np.asarray(enc.min_distances), flat.min(1), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(enc.argmin), flat.argmin(1))
  d = np.asarray(enc.min_distances)
  np.testing.assert_allclose(np.asarray(enc.activations), np.log((d + 1) / (d + 1e-4)), rtol=1e-5)
  assert np.all(np.asarray(enc.distances) >= 0)


def test_self_conditioning_paths(model_and_vars):
  model, variables, x = model_and_vars
  t = jnp.array([10, 20])
  s = model.apply(variables, x, method=model.encode).activations
  x_t = x + 0.5
  np.testing.assert_allclose(model.apply(variables, x_t, t, x0=x), model.apply(variables, x_t, t, s=s), atol=1e-6)
  s_t = model.apply(variables, x_t, method=model.encode).activations
  np.testing.assert_allclose(model.apply(variables, x_t, t), model.apply(variables, x_t, t, s=s_t), atol=1e-6)
  # The output depends on s.
  assert float(jnp.max(jnp.abs(model.apply(variables, x_t, t, s=s + 1.0) - model.apply(variables, x_t, t, s=s)))) > 1e-4


def test_dropout_only_in_train_mode(model_and_vars):
  model, variables, x = model_and_vars
  t = jnp.array([10, 20])
  run = jax.jit(lambda k: model.apply(variables, x, t, train=True, rngs={'dropout': k}))
  a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  ev = jax.jit(lambda v: model.apply(v, x, t))
  np.testing.assert_array_equal(np.asarray(ev(variables)), np.asarray(ev(variables)))


def test_bfloat16_close_to_float32(model_and_vars):
  model, variables, x = model_and_vars
  t = jnp.array([10, 700])
  ref = jax.jit(model.apply)(variables, x, t)
  low = jax.jit(tiny(dtype=jnp.bfloat16).apply)(variables, x, t)
  assert low.dtype == jnp.float32
  rel = float(jnp.max(jnp.abs(low - ref)) / jnp.max(jnp.abs(ref)))
  assert rel < 0.05, rel
  # Prototype activations are computed in float32 whatever the compute dtype.
  s32 = jax.jit(lambda v: model.apply(v, x, method=model.encode).activations)(variables)
  s16 = jax.jit(lambda v: tiny(dtype=jnp.bfloat16).apply(v, x, method=model.encode).activations)(variables)
  assert float(jnp.max(jnp.abs(s16 - s32))) < 0.05 * float(jnp.max(jnp.abs(s32)))


def test_remat_same_values_and_gradients(model_and_vars):
  model, variables, x = model_and_vars
  t = jnp.array([10, 700])
  remat = tiny(remat=True)
  loss = lambda m: lambda p: jnp.sum(m.apply({'params': p, 'buffers': variables['buffers']}, x, t) ** 2)
  g1 = jax.jit(jax.grad(loss(model)))(variables['params'])
  g2 = jax.jit(jax.grad(loss(remat)))(variables['params'])
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_receptive_field_arithmetic_and_boxes():
  # Paper encoder on 64x64: 64 -k3s2p1-> 32 -k3-> 30 -> 28 -> 26.
  rf = proto_lib.receptive_field(64, (3, 3, 3, 3), (2, 1, 1, 1), (1, 0, 0, 0))
  assert rf == proto_lib.ReceptiveField(26, 2.0, 15.0, 6.5)
  for r in range(rf.n):
    for c in range(rf.n):
      y0, y1, x0, x1 = proto_lib.patch_box(rf, r, c, 64)
      assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
      assert y1 - y0 <= 15 and x1 - x0 <= 15
  assert proto_lib.patch_box(rf, 10, 3, 64) == (19, 34, 5, 20)
  assert proto_lib.argmin_box(rf, 10 * 26 + 3, 64) == proto_lib.patch_box(rf, 10, 3, 64)
  with pytest.raises(ValueError):
    proto_lib.patch_box(rf, 26, 0, 64)
  with pytest.raises(ValueError):
    proto_lib.receptive_field(4, (3, 3, 3, 3), (2, 1, 1, 1), (1, 0, 0, 0))


def test_activation_inverse():
  d = jnp.array([0.0, 0.5, 3.0, 100.0])
  for kind in ('log', 'linear'):
    s = proto_lib.distance_to_activation(d, kind)
    back = proto_lib.activation_to_distance(s, kind)
    np.testing.assert_allclose(np.asarray(back), np.asarray(d), rtol=1e-4, atol=1e-5)


def test_distinct_loss():
  same = jnp.ones((4, 8))
  assert float(proto_lib.prototype_distinct_loss(same, 0.2)) == pytest.approx(0.2, abs=1e-6)
  orth = jnp.eye(4, 8)
  assert float(proto_lib.prototype_distinct_loss(orth, 0.2)) == 0.0


@pytest.mark.parametrize('skips', [False, True])
@pytest.mark.parametrize('length', [16, 10])
def test_latent_lengths_and_skips(skips, length):
  model = latent_lib.LatentUNet1D(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                                  num_timesteps=100, skip_connections=skips)
  s = jax.random.normal(KEY, (3, length))
  variables = model.init(KEY, s, jnp.array([1, 2, 3]))
  out = model.apply(variables, s, jnp.array([1, 50, 99]))
  assert out.shape == (3, length)
  # Padding never leaks: the real entries do not depend on how many zeros were added.
  if length == 16:
    raw = latent_lib.LatentUNet1D(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                                  num_timesteps=100, skip_connections=skips, pad_to_fit=False)
    np.testing.assert_allclose(np.asarray(raw.apply(variables, s, jnp.array([1, 50, 99]))), np.asarray(out), atol=1e-6)


def test_latent_official_length_without_padding():
  model = latent_lib.LatentUNet1D(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                                  num_timesteps=100, pad_to_fit=False)
  s = jnp.zeros((2, 6))
  variables = model.init(KEY, s, jnp.array([1, 2]))
  assert model.apply(variables, s, jnp.array([1, 2])).shape == (2, 4)  # 6 -> 3 -> 1 -> 2 -> 4


def test_prototype_layer_is_exact_under_jit():
  # XLA:CPU's YNNPACK reduce fusions (jaxlib 0.10) returned s = log(1e4) = 9.21 for every
  # prototype once ||z||^2 was large, in jitted forward graphs that consumed only s;
  # patronus_jax/__init__.py turns those fusions off. Large features as in a
  # trained encoder: the encoder kernels scaled up.
  from patronus_jax import config as config_lib
  from patronus_jax.models import unet as unet_lib
  config = config_lib.load('configs/quickstart.py:paper')  # raw distances (':tiny' is too small to trigger it)
  model = unet_lib.patronus_from_config(config)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32))
  t = jnp.full((16,), 500, jnp.int32)
  v = model.init(jax.random.PRNGKey(0), x[:2], t[:2])
  v = jax.tree_util.tree_map_with_path(
      lambda p, a: a * 6.0 if 'encoder' in jax.tree_util.keystr(p) and 'kernel' in jax.tree_util.keystr(p) else a, v)
  full = model.apply(v, x, method=model.encode)
  assert float(jnp.mean(full.min_distances)) > 1e4
  expected = np.asarray(proto_lib.distance_to_activation(full.min_distances))
  s_only = jax.jit(lambda x: model.apply(v, x, method=model.encode).activations)(x)
  np.testing.assert_allclose(np.asarray(s_only), expected, rtol=1e-5, atol=1e-6)
  assert float(np.max(expected)) < 1.0  # far from the saturated 9.21

  def denoise_from_image(x):
    return model.apply(v, x, t, model.apply(v, x, method=model.encode).activations, method=model.denoise)

  reference = model.apply(v, x, t, jnp.asarray(expected), method=model.denoise)
  np.testing.assert_allclose(np.asarray(jax.jit(denoise_from_image)(x)), np.asarray(reference), atol=1e-4)
