"""The switches beyond the paper that make s carry the image (docs/patronus.md): cosine prototype
distances, LayerNorm on s, CoordConv (encoder and U-Net), the auxiliary decoder from s, condition
dropout and classifier-free guidance on s."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax import config as config_lib
from patronus_jax.core import diffusion, files
from patronus_jax.core import workdir as workdir_lib
from patronus_jax.core.errors import ConfigError
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.models.layers import append_coordinates
from patronus_jax.models import unet as unet_lib
from patronus_jax.models.unet import ResBlock, patronus_from_config
from patronus_jax.tasks.patronus.training import PatronusTask


def _net(distance_norm='none', coords=False):
  return proto_lib.PrototypeNetwork(4, (8, 8), (3, 3), (2, 1), (1, 0), 'log', distance_norm=distance_norm,
                                    coords=coords)


def test_unit_distance_is_the_cosine_distance_in_0_4():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  net = _net('unit')
  variables = net.init(jax.random.PRNGKey(1), x)
  out = net.apply(variables, x)
  d = np.asarray(out.distances)
  z = np.asarray(proto_lib.PrototypeEncoder((8, 8), (3, 3), (2, 1), (1, 0)).apply(
      {'params': variables['params']['encoder']}, x), np.float64)
  p = np.asarray(variables['params']['prototype_vectors'], np.float64)
  zu = z / np.sqrt((z ** 2).sum(-1, keepdims=True) + 1e-6)
  pu = p / np.sqrt((p ** 2).sum(-1, keepdims=True) + 1e-6)
  expected = ((zu[..., None, :] - pu) ** 2).sum(-1)
  np.testing.assert_allclose(d, expected, atol=1e-5)
  assert d.min() >= 0 and d.max() <= 4 + 1e-5
  # scaling the prototypes changes the paper's distances, not the cosine ones
  scaled = jax.tree_util.tree_map(lambda v: v, variables)
  scaled['params']['prototype_vectors'] = 5.0 * variables['params']['prototype_vectors']
  np.testing.assert_allclose(np.asarray(net.apply(scaled, x).distances), d, atol=1e-5)
  raw = _net('none')
  assert np.abs(np.asarray(raw.apply(scaled, x).distances - raw.apply(variables, x).distances)).max() > 1.0


def test_channel_weights_are_a_softmax_weighted_cosine_distance_and_start_as_the_plain_one():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  plain = _net('unit')
  weighted = proto_lib.PrototypeNetwork(4, (8, 8), (3, 3), (2, 1), (1, 0), 'log', distance_norm='unit',
                                        channel_weights=True)
  variables = weighted.init(jax.random.PRNGKey(1), x)
  assert variables['params']['channel_logits'].shape == (4, 8)
  plain_vars = {'params': {k: v for k, v in variables['params'].items() if k != 'channel_logits'},
                'buffers': variables['buffers']}
  np.testing.assert_allclose(np.asarray(weighted.apply(variables, x).distances),
                             np.asarray(plain.apply(plain_vars, x).distances), atol=1e-6)
  logits = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (4, 8))
  variables['params']['channel_logits'] = logits
  d = np.asarray(weighted.apply(variables, x).distances)
  z = np.asarray(proto_lib.PrototypeEncoder((8, 8), (3, 3), (2, 1), (1, 0)).apply(
      {'params': variables['params']['encoder']}, x), np.float64)
  p = np.asarray(variables['params']['prototype_vectors'], np.float64)
  zu = z / np.sqrt((z ** 2).sum(-1, keepdims=True) + 1e-6)
  pu = p / np.sqrt((p ** 2).sum(-1, keepdims=True) + 1e-6)
  w = 8 * np.asarray(jax.nn.softmax(logits, -1), np.float64)
  expected = (w * (zu[..., None, :] - pu) ** 2).sum(-1)
  np.testing.assert_allclose(d, expected, atol=1e-4)
  assert np.abs(d - np.asarray(plain.apply(plain_vars, x).distances)).max() > 0.05
  sharp = proto_lib.PrototypeNetwork(4, (8, 8), (3, 3), (2, 1), (1, 0), 'log', distance_norm='unit',
                                     channel_weights=True, channel_sharpness=2.5)
  scaled = {**variables, 'params': {**variables['params'], 'channel_logits': logits / 2.5}}
  np.testing.assert_allclose(np.asarray(sharp.apply(scaled, x).distances), d, rtol=1e-5, atol=1e-6)


def test_outline_map_is_the_colour_blind_normalised_gradient_magnitude():
  x = np.zeros((1, 6, 6, 3), np.float32)
  x[0, 2:4, 1:4] = (0.5, -0.25, 1.0)  # a 2 x 3 block on a black background; |colour| sums to 1.75
  e = np.asarray(proto_lib.outline_map(jnp.asarray(x)))
  dy = np.zeros((6, 6))
  dy[1, 1:4] = dy[3, 1:4] = 1.75  # forward differences: the rows above and at the block's lower edge
  dx = np.zeros((6, 6))
  dx[2:4, 0] = dx[2:4, 3] = 1.75
  np.testing.assert_allclose(e[0], np.stack([dy, dx], -1) / ((dy + dx).mean() + 1e-6), rtol=1e-6)
  # permuting, scaling and shifting the colours changes nothing; a flat image has no outline
  y = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  np.testing.assert_allclose(np.asarray(proto_lib.outline_map(0.3 * y[..., ::-1] + 0.7)),
                             np.asarray(proto_lib.outline_map(y)), atol=2e-5)
  assert np.asarray(proto_lib.outline_map(jnp.full((1, 8, 8, 3), 0.4))).max() == 0.0


def test_outline_prototypes_read_the_outline_encoder_and_the_others_are_unchanged():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  net = proto_lib.PrototypeNetwork(5, (8, 8), (3, 3), (2, 1), (1, 0), 'log', distance_norm='unit',
                                   channel_weights=True, outline_prototypes=2)
  variables = net.init(jax.random.PRNGKey(1), x)
  variables['params']['channel_logits'] = jax.random.normal(jax.random.PRNGKey(2), (5, 8))
  d = np.asarray(net.apply(variables, x).distances)
  params = variables['params']
  plain = proto_lib.PrototypeNetwork(3, (8, 8), (3, 3), (2, 1), (1, 0), 'log', distance_norm='unit',
                                     channel_weights=True)
  first = {'params': {'encoder': params['encoder'], 'prototype_vectors': params['prototype_vectors'][:3],
                      'channel_logits': params['channel_logits'][:3]}, 'buffers': {'ones': jnp.ones((3, 8))}}
  np.testing.assert_allclose(d[..., :3], np.asarray(plain.apply(first, x).distances), atol=1e-6)
  z = np.asarray(proto_lib.PrototypeEncoder((8, 8), (3, 3), (2, 1), (1, 0)).apply(
      {'params': params['outline_encoder']}, proto_lib.outline_map(x)), np.float64)
  p = np.asarray(params['prototype_vectors'], np.float64)[3:]
  zu = z / np.sqrt((z ** 2).sum(-1, keepdims=True) + 1e-6)
  pu = p / np.sqrt((p ** 2).sum(-1, keepdims=True) + 1e-6)
  w = 8 * np.asarray(jax.nn.softmax(params['channel_logits'][3:], -1), np.float64)
  np.testing.assert_allclose(d[..., 3:], (w * (zu[..., None, :] - pu) ** 2).sum(-1), atol=1e-4)
  # only the outline prototypes ignore the colours
  recoloured = np.asarray(net.apply(variables, 0.5 * x[..., ::-1] + 0.2).activations)
  s = np.asarray(net.apply(variables, x).activations)
  np.testing.assert_allclose(recoloured[:, 3:], s[:, 3:], atol=1e-4)
  assert np.abs(recoloured[:, :3] - s[:, :3]).max() > 1e-2
  _, _, model_vars, _, _ = _model(**{'model.outline_prototypes': 2})
  assert 'outline_encoder' in model_vars['params']['prototypes']
  for bad in (-1, 17):
    with pytest.raises(ConfigError, match='model.outline_prototypes.*between 0 and'):
      config_lib.load('configs/quickstart.py:tiny', {'model.num_prototypes': 16, 'model.outline_prototypes': bad})


def test_centred_outline_prototypes_do_not_see_where_the_form_is_and_boxes_follow_it():
  x = np.zeros((2, 32, 32, 3), np.float32)
  x[0, 4:12, 20:28] = 1.0  # a square with its outline's centroid at (8, 24)
  x[1, 14:21, 9:18] = (0.2, 0.5, 0.9)
  mass = np.asarray(proto_lib.outline_map(jnp.asarray(x))).sum(-1)
  centre = np.arange(32) + 0.5
  centroid = np.stack([(mass.sum(2) * centre).sum(1), (mass.sum(1) * centre).sum(1)], -1) / mass.sum((1, 2))[:, None]
  shifts = np.asarray(proto_lib.centring_shifts(proto_lib.outline_map(jnp.asarray(x))))
  np.testing.assert_array_equal(shifts, np.round(16 - centroid))  # centroids to (16, 16), to the pixel
  assert shifts[0].tolist() == [8, -8]
  assert np.asarray(proto_lib.centring_shifts(jnp.zeros((1, 8, 8, 2)))).tolist() == [[0, 0]]
  moved = np.zeros_like(x)
  moved[0, 14:22, 10:18] = 1.0  # the first square 10 pixels down and 10 left: 5 feature positions each
  moved[1] = np.roll(x[1], (3, -5), (0, 1))  # odd shifts: off the stride-2 grid
  kwargs = dict(distance_norm='unit', channel_weights=True, outline_prototypes=3)
  net = proto_lib.PrototypeNetwork(6, (8, 8), (3, 3), (2, 1), (1, 0), 'log', outline_centred=True, **kwargs)
  variables = net.init(jax.random.PRNGKey(0), jnp.asarray(x))
  before, after = net.apply(variables, jnp.asarray(x)), net.apply(variables, jnp.asarray(moved))
  np.testing.assert_allclose(np.asarray(after.activations)[:, 3:], np.asarray(before.activations)[:, 3:],
                             atol=1e-6)
  # uncentred, the odd shift changes what every prototype sees
  plain = proto_lib.PrototypeNetwork(6, (8, 8), (3, 3), (2, 1), (1, 0), 'log', **kwargs)
  change = np.abs(np.asarray(plain.apply(variables, jnp.asarray(moved)).activations
                             - plain.apply(variables, jnp.asarray(x)).activations))
  assert change[1].min() > 1e-3
  # the outline prototypes' argmin is in the image's own grid: it moves with the square
  n = before.distances.shape[2]
  rows, cols = np.divmod(np.asarray(before.argmin)[0, 3:], n)
  rows2, cols2 = np.divmod(np.asarray(after.argmin)[0, 3:], n)
  inside = (cols > 4) & (cols < n - 1) & (rows < n - 5)  # not clipped at the grid's edge either way
  assert inside.any()
  np.testing.assert_array_equal(rows2[inside], rows[inside] + 5)
  np.testing.assert_array_equal(cols2[inside], cols[inside] - 5)
  with pytest.raises(ConfigError, match='model.outline_centred.*outline_prototypes'):
    config_lib.load('configs/quickstart.py:tiny', {'model.outline_prototypes': 0, 'model.outline_centred': True})


def test_coordinates_make_patches_of_a_constant_image_differ():
  x = jnp.zeros((1, 16, 16, 3))
  for coords, moves in ((False, False), (True, True)):
    net = _net(coords=coords)
    variables = net.init(jax.random.PRNGKey(1), x)
    assert variables['params']['encoder']['conv_0']['kernel'].shape[2] == 3 + 2 * coords
    d = np.asarray(net.apply(variables, x).distances)[0, 2:-2, 2:-2, 0]  # interior: no padding effects
    assert (np.ptp(d) > 1e-4) == moves


def _model(**overrides):
  config = config_lib.load('configs/quickstart.py:paper,tiny', overrides)
  model = patronus_from_config(config, dtype='float32')
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
  t = jnp.array([10, 500])
  variables = model.init(jax.random.PRNGKey(0), x, t)
  return config, model, variables, x, t


def test_layer_norm_on_s_ignores_a_common_offset_and_scale():
  _, model, variables, x, t = _model(**{'model.s_norm': 'layer'})
  p = variables['params']['unet']['prototype_embedding']
  assert p is not None and 's_norm' in variables['params']['unet']
  s = jax.random.uniform(jax.random.PRNGKey(5), (2, model.num_prototypes))
  a = model.apply(variables, x, t, s, method=model.denoise)
  b = model.apply(variables, x, t, 3.0 * s + 7.0, method=model.denoise)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)  # LayerNorm eps, float32
  _, plain, plain_vars, _, _ = _model()
  c = plain.apply(plain_vars, x, t, s, method=plain.denoise)
  d = plain.apply(plain_vars, x, t, 3.0 * s + 7.0, method=plain.denoise)
  assert np.abs(np.asarray(c - d)).max() > 1e-2  # the paper's model does see the offset


def test_a_zero_condition_mask_ignores_s_and_guidance_is_the_cfg_combination():
  _, model, variables, x, t = _model(**{'train.cond_dropout': 0.1})
  s1 = jnp.ones((2, model.num_prototypes))
  s2 = jax.random.uniform(jax.random.PRNGKey(5), (2, model.num_prototypes))
  zero = jnp.zeros((2,))
  u1 = model.apply(variables, x, t, s1, False, zero, method=model.denoise)
  u2 = model.apply(variables, x, t, s2, False, zero, method=model.denoise)
  np.testing.assert_allclose(np.asarray(u1), np.asarray(u2), atol=1e-6)
  c = model.apply(variables, x, t, s2, method=model.denoise)
  assert np.abs(np.asarray(c - u2)).max() > 1e-5
  guided = model.clone(guidance=3.0)
  g = guided.apply(variables, x, t, s2, method=guided.denoise)
  np.testing.assert_allclose(np.asarray(g), np.asarray(u2 + 3.0 * (c - u2)), atol=1e-5)
  _, from_config, _, _, _ = _model(**{'train.cond_dropout': 0.1, 'diffusion.guidance': 3.0})
  assert from_config.guidance == 3.0


def test_condition_dropout_changes_only_the_training_loss():
  config, _, _, x, _ = _model(**{'train.cond_dropout': 0.5})
  task, plain_task = PatronusTask(config), PatronusTask(config_lib.load('configs/quickstart.py:paper,tiny'))
  x = jnp.concatenate([x] * 4)
  variables = plain_task.init_variables(jax.random.PRNGKey(0), {'image': x})
  params = variables['params']
  rest = {k: v for k, v in variables.items() if k != 'params'}
  batch = {'image': x}
  key = jax.random.PRNGKey(4)
  for train, differs in ((True, True), (False, False)):
    a = task.loss_fn(params, rest, batch, key, train)[0]
    b = plain_task.loss_fn(params, rest, batch, key, train)[0]
    assert (abs(float(a) - float(b)) > 1e-6) == differs, (train, float(a), float(b))


def test_unet_coordinates_are_two_grid_channels_before_the_first_conv():
  grid = np.asarray(append_coordinates(jnp.zeros((1, 4, 5, 3))))[0]
  np.testing.assert_allclose(grid[:, 0, 3], np.linspace(-1, 1, 4), atol=1e-6)  # y down the rows
  np.testing.assert_allclose(grid[0, :, 4], np.linspace(-1, 1, 5), atol=1e-6)  # x along the columns
  _, model, variables, x, t = _model(**{'model.unet_coords': True})
  _, plain, plain_vars, _, _ = _model()
  s = jax.random.uniform(jax.random.PRNGKey(5), (2, model.num_prototypes))
  kernel = variables['params']['unet']['first']['kernel']
  assert kernel.shape[2] == 3 + 2 and plain_vars['params']['unet']['first']['kernel'].shape[2] == 3
  params = jax.tree_util.tree_map(lambda v: v, plain_vars['params'])
  params['unet']['first'] = dict(params['unet']['first'], kernel=kernel[:, :, :3])
  shared = {**plain_vars, 'params': params}
  with_grid = {**variables, 'params': dict(params, unet=dict(params['unet'], first=dict(
      params['unet']['first'], kernel=kernel)))}
  without = {**with_grid, 'params': dict(with_grid['params'], unet=dict(with_grid['params']['unet'], first=dict(
      params['unet']['first'], kernel=kernel.at[:, :, 3:].set(0.0))))}
  base = np.asarray(plain.apply(shared, x, t, s, method=plain.denoise))
  np.testing.assert_allclose(np.asarray(model.apply(without, x, t, s, method=model.denoise)), base, atol=1e-5)
  assert np.abs(np.asarray(model.apply(with_grid, x, t, s, method=model.denoise)) - base).max() > 1e-3


def test_film_is_a_scale_and_shift_of_the_normalised_features_by_s():
  """With s's FiLM layer fixed to scale a and shift b, a block is the plain block whose norm_2 has
  scale (1 + a) gamma and bias (1 + a) beta + b and whose s-bias is zero; and s moves the output."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float32)
  t_act, s_act = (jnp.asarray(rng.normal(size=(2, 32)), jnp.float32) for _ in range(2))
  film, plain = ResBlock(16, 0.0, film=True), ResBlock(16, 0.0)
  fv = film.init(jax.random.PRNGKey(0), x, t_act, s_act)
  assert 'proto_proj' not in fv['params'] and 'proto_film' in fv['params']
  a = jnp.asarray(rng.normal(size=16), jnp.float32)
  b = jnp.asarray(rng.normal(size=16), jnp.float32)
  fp = dict(fv['params'], proto_film={'kernel': jnp.zeros((32, 32)), 'bias': jnp.concatenate([a, b])})
  norm = fv['params']['norm_2']
  pp = {k: fv['params'][k] for k in fv['params'] if k != 'proto_film'}
  pp = dict(pp, proto_proj={'kernel': jnp.zeros((32, 16)), 'bias': jnp.zeros(16)},
            norm_2={'scale': (1 + a) * norm['scale'], 'bias': (1 + a) * norm['bias'] + b})
  np.testing.assert_allclose(np.asarray(film.apply({'params': fp}, x, t_act, s_act)),
                             np.asarray(plain.apply({'params': pp}, x, t_act, s_act)), atol=1e-5)
  moved = film.apply(fv, x, t_act, 2.0 * s_act) - film.apply(fv, x, t_act, s_act)
  assert float(jnp.abs(moved).max()) > 1e-2
  _, model, variables, _, _ = _model(**{'model.s_film': True})
  assert model.s_film and 'proto_film' in variables['params']['unet']['mid_0']


@pytest.mark.parametrize('kind', proto_lib.DECODER_KINDS)
def test_the_decoder_loss_is_the_mse_to_the_block_mean_image_and_trains_the_encoder(kind):
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  pooled = np.asarray(diffusion.downsample_mean(x, 8))
  np.testing.assert_allclose(pooled[1, 2, 5], np.asarray(x)[1, 8:12, 20:24].mean(axis=(0, 1)), atol=1e-6)
  odd = np.asarray(diffusion.downsample_mean(jnp.full((1, 40, 40, 3), 0.25), 16))  # 40 is no multiple of 16
  assert odd.shape == (1, 16, 16, 3) and np.allclose(odd, 0.25, atol=1e-6)
  config = config_lib.load('configs/quickstart.py:tiny', {'train.s_decoder_weight': 0.5, 'model.s_decoder_size': 8,
                                                          'model.s_decoder_kind': kind, 'model.s_sketch': False,
                                                          'train.s_decoder_edge_weight': 0.0})
  task = PatronusTask(config)
  plain = PatronusTask(config_lib.load('configs/quickstart.py:tiny', {'train.s_decoder_weight': 0.0,
                                                                      'model.s_sketch': False,
                                                                      'diffusion.sketch_consistency': 0.0}))
  variables = task.init_variables(jax.random.PRNGKey(0), {'image': x})
  params = variables['params']
  assert 's_decoder' in params
  assert 's_decoder' not in plain.init_variables(jax.random.PRNGKey(0), {'image': x})['params']
  rest = {k: v for k, v in variables.items() if k != 'params'}
  key = jax.random.PRNGKey(4)
  loss, metrics = task.loss_fn(params, rest, {'image': x}, key, True)
  bare = {k: v for k, v in params.items() if k != 's_decoder'}
  base, _ = plain.loss_fn(bare, rest, {'image': x}, key, True)
  s = task.model.apply({'params': params, **rest}, x, method=task.model.encode).activations
  decoded = task.model.apply({'params': params, **rest}, s, method=task.model.decode_activations)
  assert decoded.shape == (2, 8, 8, 3)
  expected = float(np.mean((np.asarray(decoded) - pooled) ** 2))
  np.testing.assert_allclose(float(metrics['s_decoder_loss']), expected, rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(base) + 0.5 * expected, rtol=1e-5)
  # the decoder's gradient reaches the prototype encoder
  only_decoder = lambda p: 0.5 * task.loss_fn(p, rest, {'image': x}, key, True)[1]['s_decoder_loss']
  grads = jax.grad(only_decoder)(params)
  assert float(jnp.abs(grads['prototypes']['encoder']['conv_0']['kernel']).max()) > 0
  with pytest.raises(ConfigError, match='model.s_decoder_size'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_decoder_weight': 1.0, 'model.s_decoder_size': 12})
  with pytest.raises(ConfigError, match='model.s_decoder_kind'):
    config_lib.load('configs/quickstart.py:tiny', {'model.s_decoder_kind': 'mlp'})
  wide = PatronusTask(config_lib.load('configs/quickstart.py:tiny', {'model.s_decoder_width': 24}))
  wide_params = wide.init_variables(jax.random.PRNGKey(0), {'image': x})['params']['s_decoder']
  assert wide_params['out']['kernel'].shape[2] == 24 and params['s_decoder']['out']['kernel'].shape[2] == 64
  with pytest.raises(ConfigError, match='model.s_decoder_width'):
    config_lib.load('configs/quickstart.py:tiny', {'model.s_decoder_width': 0})


def test_the_broadcast_decoder_sees_s_at_every_pixel_beside_the_coordinates():
  size, p = 16, 5
  decoder = proto_lib.ActivationDecoder(size, 3, width=8, kind='broadcast')
  s = jax.random.normal(jax.random.PRNGKey(0), (2, p))
  variables = decoder.init(jax.random.PRNGKey(1), s)
  assert variables['params']['conv_0']['kernel'].shape == (3, 3, p + 2, 8)  # s, then (y, x)
  out = np.asarray(decoder.apply(variables, s))
  assert out.shape == (2, size, size, 3)
  # 4 convolutions of 3x3 see 4 pixels around; farther from the zero-padded border, only the
  # coordinates tell two pixels apart
  inner = slice(4, size - 4)
  assert np.ptp(out[:, inner, inner], axis=(1, 2)).min() > 1e-4
  params = jax.tree_util.tree_map(lambda a: a, variables['params'])
  params['conv_0']['kernel'] = params['conv_0']['kernel'].at[:, :, p:, :].set(0.0)
  flat = np.asarray(decoder.apply({'params': params}, s))[:, inner, inner]
  np.testing.assert_allclose(flat, np.broadcast_to(flat[:, :1, :1], flat.shape), atol=1e-6)
  # one image's output depends on its own s, and on nothing else in the batch
  assert np.abs(out[0] - out[1]).max() > 1e-3
  np.testing.assert_allclose(np.asarray(decoder.apply(variables, s[::-1]))[::-1], out, atol=1e-6)


def test_defaults_are_the_paper_and_guidance_needs_dropout():
  config = config_lib.load('configs/celeba.py')
  assert (config.model.distance_norm, config.model.s_norm, config.model.encoder_coords) == ('none', 'none', False)
  assert not config.model.unet_coords and config.train.s_decoder_weight == 0.0
  assert config.train.cond_dropout == 0.0 and config.diffusion.guidance == 1.0
  shapes = config_lib.load('configs/shapes.py')
  assert (shapes.model.distance_norm, shapes.model.s_norm, shapes.train.cond_dropout) == ('unit', 'layer', 0.1)
  assert shapes.model.unet_coords and shapes.train.s_decoder_weight == 1.0
  assert shapes.model.s_film and not shapes.model.encoder_coords and shapes.train.prototype_lr_scale == 4.0
  assert shapes.model.s_sketch and not config.model.s_sketch
  assert shapes.model.prototype_channel_weights and not config.model.prototype_channel_weights
  paper = config_lib.load('configs/shapes.py:paper')
  assert not paper.model.unet_coords and not paper.model.encoder_coords and paper.train.s_decoder_weight == 0.0
  assert not paper.model.s_film and paper.train.prototype_lr_scale == 1.0 and not paper.model.s_sketch
  assert not paper.model.prototype_channel_weights
  with pytest.raises(ConfigError, match='diffusion.guidance.*cond_dropout'):
    config_lib.load('configs/quickstart.py:paper,tiny', {'diffusion.guidance': 3.0})
  with pytest.raises(ConfigError, match='model.distance_norm'):
    config_lib.load('configs/quickstart.py:tiny', {'model.distance_norm': 'cosine'})
  with pytest.raises(ConfigError, match='model.prototype_channel_sharpness.*positive'):
    config_lib.load('configs/quickstart.py:tiny', {'model.prototype_channel_sharpness': 0.0})


def test_the_recipe_has_centred_outline_prototypes_and_the_near_copy_penalty_and_tiny_keeps_their_share():
  full = config_lib.load('configs/quickstart.py')
  assert (full.model.num_prototypes, full.model.outline_prototypes, full.model.outline_centred) == (32, 8, True)
  tiny = config_lib.load('configs/quickstart.py:tiny')
  assert (tiny.model.num_prototypes, tiny.model.outline_prototypes, tiny.model.outline_centred) == (8, 2, True)
  assert config_lib.load('configs/quickstart.py:paper').model.outline_prototypes == 0
  for name in ('configs/quickstart.py', 'configs/quickstart.py:tiny', 'configs/shapes.py', 'configs/glyphs.py'):
    train = config_lib.load(name).train  # the near-copy penalty is part of the recipe ...
    assert (train.s_decorrelation_weight, train.s_decorrelation_threshold) == (2.0, 0.9), name
  for name in ('configs/quickstart.py:paper', 'configs/shapes.py:paper', 'configs/celeba.py'):
    train = config_lib.load(name).train  # ... and not of the paper's method
    assert (train.s_decorrelation_weight, train.s_decorrelation_threshold) == (0.0, 0.0), name
  for num, outline, expected in ((100, 10, 1), (6, 3, 3), (16, 0, 0)):  # at least one where there were any
    config = config_lib.load('configs/quickstart.py:paper')
    config.model.num_prototypes, config.model.outline_prototypes = num, outline
    config_lib.tiny_variant(config)
    assert (config.model.num_prototypes, config.model.outline_prototypes) == (min(num, 8), expected)


def test_a_workdir_written_before_these_fields_existed_still_resumes(tmp_path):
  config = config_lib.load('configs/quickstart.py:paper,tiny')
  workdir_lib.check_and_write_config(str(tmp_path), config)
  old = files.read_json(workdir_lib.config_path(str(tmp_path)))
  for field in ('distance_norm', 's_norm', 'encoder_coords', 'prototype_channel_weights',
                'unet_coords', 's_decoder_size', 's_decoder_kind',
                's_decoder_width', 's_film', 's_sketch', 'outline_prototypes', 'outline_centred'):
    del old['model'][field]
  del old['train']['s_decoder_weight']  # a config.json from before the field was added
  del old['train']['prototype_lr_scale']
  del old['train']['s_decorrelation_weight']
  del old['train']['patch_cluster_weight']
  files.write_json(workdir_lib.config_path(str(tmp_path)), old)
  workdir_lib.check_and_write_config(str(tmp_path), config)  # the schema's defaults: the old behaviour
  changed = config_lib.load('configs/quickstart.py:paper,tiny', {'model.s_norm': 'layer'})
  files.write_json(workdir_lib.config_path(str(tmp_path)), old)
  with pytest.raises(workdir_lib.ConfigConflict, match='model.s_norm'):
    workdir_lib.check_and_write_config(str(tmp_path), changed)


def test_prototype_lr_scale_multiplies_the_prototype_networks_updates_only():
  from patronus_jax.core.training import make_optimizer
  from patronus_jax.tasks.patronus.training import stage1_settings
  config = config_lib.load('configs/quickstart.py:tiny', {'train.prototype_lr_scale': 3.0})
  settings = stage1_settings(config)
  assert settings.lr_scales == (('prototypes', 3.0),)
  params = {'prototypes': {'w': jnp.array([1.0, -2.0])}, 'unet': {'w': jnp.array([0.5, 4.0])}}
  grads = {'prototypes': {'w': jnp.array([0.3, -0.1])}, 'unet': {'w': jnp.array([-0.2, 0.7])}}
  unscaled = config_lib.load('configs/quickstart.py:tiny', {'train.prototype_lr_scale': 1.0})
  plain = make_optimizer(stage1_settings(unscaled))
  scaled = make_optimizer(settings)
  state_plain, state_scaled = plain.init(params), scaled.init(params)
  # the optimizer state is the same, so a checkpoint resumes with or without the scale
  assert jax.tree_util.tree_structure(state_plain) == jax.tree_util.tree_structure(state_scaled)
  for _ in range(3):  # Adam's moments are unscaled: every step's update is exactly 3x on the prototypes
    up_plain, state_plain = plain.update(grads, state_plain, params)
    up_scaled, state_scaled = scaled.update(grads, state_scaled, params)
    np.testing.assert_allclose(up_scaled['prototypes']['w'], 3.0 * up_plain['prototypes']['w'], rtol=1e-6)
    np.testing.assert_array_equal(up_scaled['unet']['w'], up_plain['unet']['w'])
  with pytest.raises(ValueError, match='nonexistent'):
    bad = make_optimizer(dataclasses.replace(settings, lr_scales=(('nonexistent', 2.0),)))
    bad.update(grads, bad.init(params), params)
  with pytest.raises(ConfigError, match='train.prototype_lr_scale'):
    config_lib.load('configs/quickstart.py:tiny', {'train.prototype_lr_scale': 0.0})
  with pytest.raises(ConfigError, match='train.s_decorrelation_threshold'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_decorrelation_threshold': 1.0})


def test_decorrelation_loss_is_the_mean_squared_correlation_of_distinct_prototypes():
  rng = np.random.RandomState(0)
  s = rng.randn(32, 4).astype(np.float32)
  s[:, 3] = 2.0 * s[:, 0] + 1.0  # a copy of prototype 0, rescaled
  corr = np.corrcoef(s.T)
  expected = (np.sum(corr ** 2) - 4.0) / 12.0
  np.testing.assert_allclose(float(proto_lib.decorrelation_loss(jnp.asarray(s))), expected, rtol=1e-4)
  # orthogonal centred columns: no two prototypes co-vary; all copies: 1; a constant prototype adds 0
  basis = rng.randn(32, 3)
  centred, _ = np.linalg.qr(basis - basis.mean(0))  # orthonormal columns in the space of centred vectors
  assert float(proto_lib.decorrelation_loss(jnp.asarray(centred, jnp.float32))) < 1e-3
  copies = np.repeat(s[:, :1], 3, axis=1) * np.array([1.0, 3.0, -0.5], np.float32)
  np.testing.assert_allclose(float(proto_lib.decorrelation_loss(jnp.asarray(copies))), 1.0, rtol=1e-4)
  with_dead = np.concatenate([copies, np.full((32, 1), 0.7, np.float32)], axis=1)
  np.testing.assert_allclose(float(proto_lib.decorrelation_loss(jnp.asarray(with_dead))), 6.0 / 12.0, rtol=1e-4)
  # with a threshold only the excess of |corr| over it counts: copies still 1, weaker pairs 0
  np.testing.assert_allclose(float(proto_lib.decorrelation_loss(jnp.asarray(copies), 0.9)), 1.0, rtol=1e-4)
  partial = np.stack([s[:, 0], s[:, 0] + rng.randn(32).astype(np.float32) * 0.3, s[:, 1]], 1)
  c = np.abs(np.corrcoef(partial.T))
  assert 0.9 < c[0, 1] < 1.0 and c[0, 2] < 0.9 and c[1, 2] < 0.9
  np.testing.assert_allclose(float(proto_lib.decorrelation_loss(jnp.asarray(partial), 0.9)),
                             2 * ((c[0, 1] - 0.9) / 0.1) ** 2 / 6.0, rtol=1e-3)
  assert float(proto_lib.decorrelation_loss(jnp.asarray(s[:, 1:3]), 0.9)) == 0.0
  # in stage 1's loss: exactly weight x the term on s of the batch, and it trains the encoder
  _check_stage1_term('s_decorrelation_weight', 0.3, 's_correlation',
                     lambda encoded: proto_lib.decorrelation_loss(encoded.activations))


def test_the_decorrelation_memory_counts_earlier_batches_without_their_gradient():
  """train.s_decorrelation_memory: the correlation is over the batch and the filled memory rows, as if
  they were one batch; unfilled slots count for nothing; only the batch's rows get a gradient; the
  memory keeps the newest rows first."""
  rng = np.random.RandomState(1)
  batch = rng.randn(4, 3).astype(np.float32)
  earlier = rng.randn(6, 3).astype(np.float32)
  earlier[:, 2] = earlier[:, 0] * 0.5 + 0.1 * rng.randn(6)  # dependence that the batch alone hides
  memory = proto_lib.empty_memory(9, 3)  # room for 9; 6 filled, 3 not yet
  for rows in (earlier[4:], earlier[:4]):  # two earlier batches, the newest first in the end
    memory = proto_lib.remember(memory, jnp.asarray(rows))
  np.testing.assert_array_equal(np.asarray(memory['filled']), [1] * 6 + [0] * 3)
  np.testing.assert_array_equal(np.asarray(memory['activations'][:6]), earlier)
  pooled = np.concatenate([batch, earlier])
  for threshold in (0.0, 0.3):
    expected = float(proto_lib.decorrelation_loss(jnp.asarray(pooled), threshold))
    got = float(proto_lib.decorrelation_loss(jnp.asarray(batch), threshold, memory))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert abs(got - float(proto_lib.decorrelation_loss(jnp.asarray(batch), threshold))) > 1e-3
  # the gradient: the pooled loss's gradient on the batch's rows, none into the memory
  g_mem = jax.grad(lambda m: proto_lib.decorrelation_loss(jnp.asarray(batch), 0.0, dict(memory, activations=m)))(
      memory['activations'])
  assert float(jnp.abs(g_mem).max()) == 0.0
  g = jax.grad(lambda b: proto_lib.decorrelation_loss(b, 0.0, memory))(jnp.asarray(batch))
  g_pooled = jax.grad(lambda r: proto_lib.decorrelation_loss(r, 0.0))(jnp.asarray(pooled))[:4]
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_pooled), rtol=1e-4, atol=1e-7)
  # a full memory drops its oldest rows
  full = proto_lib.remember(memory, jnp.asarray(batch))
  np.testing.assert_array_equal(np.asarray(full['activations']), np.concatenate([batch, earlier[:5]]))
  assert float(full['filled'].sum()) == 9
  with pytest.raises(ConfigError, match='train.s_decorrelation_memory'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_decorrelation_memory': -8})


def test_the_spread_term_charges_prototypes_narrower_than_a_fraction_of_the_widest():
  rng = np.random.RandomState(2)
  z = rng.randn(64, 1).astype(np.float32)
  s = np.concatenate([3.0 * z, 1.0 * rng.randn(64, 1), 0.3 * rng.randn(64, 1), np.full((64, 1), 0.5)], 1)
  s = s.astype(np.float32)
  std = s.std(0)
  floor = 0.25
  expected = np.mean(np.maximum(0.0, 1.0 - std / (floor * std.max())) ** 2)
  assert expected > 0.25  # the constant prototype pays 1, the 0.3-wide one a little, the others 0
  np.testing.assert_allclose(float(proto_lib.spread_loss(jnp.asarray(s), floor)), expected, rtol=1e-5)
  # the widest prototype is the reference, not pushed: its gradient is 0, the narrow ones' is not
  g = np.asarray(jax.grad(lambda x: proto_lib.spread_loss(x, floor))(jnp.asarray(s)))
  assert np.abs(g[:, 0]).max() == 0.0 and np.abs(g[:, 1]).max() == 0.0 and np.abs(g[:, 2]).max() > 0
  with pytest.raises(ConfigError, match='train.s_spread_floor'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_spread_floor': 0.0})
  # in stage 1's loss: weight x the term on the batch's s; it trains the prototype network (whichever of
  # its encoders feeds the narrow prototypes), not the U-Net
  value, grads, task, variables, x = _stage1_term('s_spread_weight', 0.5, 's_spread_loss')
  encoded = task.model.apply(variables, x, method=task.model.encode)
  np.testing.assert_allclose(value, float(proto_lib.spread_loss(encoded.activations, 0.2)), rtol=1e-5)
  assert value > 0
  biggest = {k: max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[k])) for k in grads}
  assert biggest['prototypes'] > 0 and biggest['unet'] == 0
  with pytest.raises(ConfigError, match='train.s_spread_weight'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_spread_weight': -1.0})


def test_a_run_with_the_decorrelation_memory_resumes_bit_identically(shapes_config, tmp_path):
  """The memory lives in the train state: it fills as training goes, is checkpointed, and a run
  interrupted and resumed equals one that was not; inference never sees it."""
  from patronus_jax.core import sharding
  from patronus_jax.core import training as training_lib
  from patronus_jax.tasks.patronus import training as patronus_training
  config = shapes_config.copy_and_resolve_references()
  t = config.train
  t.num_steps, t.checkpoint_every = 6, 3
  t.s_decorrelation_memory = 3 * t.batch_size + 2  # fills after 4 steps, then drops the oldest
  t.s_decorrelation_weight, t.s_decorrelation_threshold, t.s_spread_weight = 5.0, 0.3, 1.0
  mesh = sharding.make_mesh(config_lib.mesh_config(), devices=jax.devices()[:1])
  straight = patronus_training.train_stage1(config, str(tmp_path / 'a'), mesh)
  memory = straight.variables['memory']
  assert float(memory['filled'].sum()) == t.s_decorrelation_memory
  assert float(jnp.abs(memory['activations'][0] - memory['activations'][t.batch_size]).max()) > 0
  config_b = config.copy_and_resolve_references()
  config_b.train.num_steps = 3
  half = patronus_training.train_stage1(config_b, str(tmp_path / 'b'), mesh)
  assert float(half.variables['memory']['filled'].sum()) == 3 * t.batch_size
  resumed = patronus_training.train_stage1(config, str(tmp_path / 'b'), mesh)
  for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.opt_state, straight.variables)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.opt_state, resumed.variables))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 'memory' not in straight.inference_variables()
  state, _, _ = training_lib.load_state(str(tmp_path / 'b'), 'stage1')
  assert 'memory' in state['variables'] and 'memory' not in training_lib.inference_variables(state)
  # another memory size is another train state: a conflict named before anything is read or moved
  other = config.copy_and_resolve_references()
  other.train.s_decorrelation_memory = 0
  workdir_lib.check_and_write_config(str(tmp_path / 'b'), config)  # what main writes before a run
  with pytest.raises(workdir_lib.ConfigConflict, match='train.s_decorrelation_memory'):
    workdir_lib.check_and_write_config(str(tmp_path / 'b'), other)


def test_patch_cluster_loss_is_the_k_means_objective_of_the_patches():
  # closed form: each patch's distance to its nearest prototype, averaged over batch and positions
  d = np.array([[[[0.5, 2.0, 1.0], [3.0, 0.2, 0.9]]],
                [[[1.5, 1.5, 0.1], [0.0, 4.0, 2.0]]]], np.float32)  # (B=2, h=1, w=2, P=3)
  np.testing.assert_allclose(float(proto_lib.patch_cluster_loss(jnp.asarray(d))), (0.5 + 0.2 + 0.1 + 0.0) / 4,
                             rtol=1e-6)
  # only the nearest prototype of a patch gets its gradient
  g = np.asarray(jax.grad(lambda x: proto_lib.patch_cluster_loss(x))(jnp.asarray(d)))
  np.testing.assert_allclose(g, (d == d.min(-1, keepdims=True)) / 4.0)
  # in stage 1's loss: exactly weight x the term on the batch's distance map; it moves the prototypes
  # and the encoder
  grads = _check_stage1_term('patch_cluster_weight', 0.5, 'patch_cluster_loss',
                             lambda encoded: jnp.mean(jnp.min(encoded.distances, axis=-1)))
  assert float(jnp.abs(grads['prototypes']['prototype_vectors']).max()) > 0


def _stage1_term(field: str, weight: float, metric: str):
  """Stage 1's loss on a tiny batch with train.<field> = weight is the plain loss + weight x the logged
  `metric`, which the plain loss does not log. Returns (the metric, its gradient, task, variables, batch)."""
  x = jax.random.uniform(jax.random.PRNGKey(2), (6, 32, 32, 3), minval=-1, maxval=1)
  # the recipe's near-copy penalty off in both, so that the plain loss holds no term under test
  off = {'train.s_decorrelation_weight': 0.0, 'train.s_decorrelation_threshold': 0.0}
  task = PatronusTask(config_lib.load('configs/quickstart.py:tiny', {**off, f'train.{field}': weight}))
  plain = PatronusTask(config_lib.load('configs/quickstart.py:tiny', off))
  variables = task.init_variables(jax.random.PRNGKey(0), {'image': x})
  params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  key = jax.random.PRNGKey(4)
  loss, metrics = task.loss_fn(params, rest, {'image': x}, key, True)
  base, base_metrics = plain.loss_fn(params, rest, {'image': x}, key, True)
  assert metric not in base_metrics
  np.testing.assert_allclose(float(loss), float(base) + weight * float(metrics[metric]), rtol=1e-5)
  grads = jax.grad(lambda p: task.loss_fn(p, rest, {'image': x}, key, True)[1][metric])(params)
  return float(metrics[metric]), grads, task, variables, x


def _check_stage1_term(field: str, weight: float, metric: str, term_of):
  """Stage 1's loss with train.<field> = weight is the plain loss + weight x term_of(the batch's
  PrototypeOutput), logged as `metric`; the term trains the encoder, and a negative weight is a
  ConfigError. Returns the term's gradient for the caller's own checks."""
  value, grads, task, variables, x = _stage1_term(field, weight, metric)
  term = float(term_of(task.model.apply(variables, x, method=task.model.encode)))
  assert term > 0
  np.testing.assert_allclose(value, term, rtol=1e-5)
  assert float(jnp.abs(grads['prototypes']['encoder']['conv_0']['kernel']).max()) > 0
  with pytest.raises(ConfigError, match=f'train.{field}'):
    config_lib.load('configs/quickstart.py:tiny', {f'train.{field}': -1.0})
  return grads


def test_the_sketch_is_the_decoders_picture_of_s_as_input_channels_and_is_masked_with_s():
  """model.s_sketch: the U-Net's first conv sees [x_t, resize(decoder(s))]; with that slice of its
  kernel zeroed it is the U-Net without the sketch; the condition mask hides the sketch too; and the
  diffusion loss trains the decoder through it."""
  on = {'model.s_sketch': True, 'train.s_decoder_weight': 1.0, 'train.cond_dropout': 0.1}
  config, model, variables, x, t = _model(**on)
  _, plain, plain_vars, _, _ = _model(**{'train.s_decoder_weight': 1.0, 'train.cond_dropout': 0.1})
  kernel = variables['params']['unet']['first']['kernel']
  assert kernel.shape[2] == 3 + 3 and plain_vars['params']['unet']['first']['kernel'].shape[2] == 3
  s = jax.random.uniform(jax.random.PRNGKey(5), (2, model.num_prototypes))
  picture = model.apply(variables, s, method=model.decode_activations)
  sketch = model.apply(variables, s, x.shape, method=model.sketch)
  assert sketch.shape == x.shape
  np.testing.assert_allclose(np.asarray(sketch[:, ::2, ::2].mean()), np.asarray(picture.mean()), atol=0.05)
  np.testing.assert_allclose(np.asarray(jax.image.resize(picture, x.shape, 'linear')), np.asarray(sketch), atol=1e-6)
  blind = jax.tree_util.tree_map(lambda v: v, variables)
  blind['params']['unet']['first'] = dict(blind['params']['unet']['first'], kernel=kernel.at[:, :, 3:].set(0.0))
  shared = {**plain_vars, 'params': dict(blind['params'], unet=dict(blind['params']['unet'], first=dict(
      blind['params']['unet']['first'], kernel=kernel[:, :, :3])))}
  np.testing.assert_allclose(np.asarray(model.apply(blind, x, t, s, method=model.denoise)),
                             np.asarray(plain.apply(shared, x, t, s, method=plain.denoise)), atol=1e-5)
  with_sketch = model.apply(variables, x, t, s, method=model.denoise)
  assert float(jnp.abs(with_sketch - model.apply(blind, x, t, s, method=model.denoise)).max()) > 1e-3
  zero = jnp.zeros((2,))
  u1 = model.apply(variables, x, t, s, False, zero, method=model.denoise)
  u2 = model.apply(variables, x, t, 3.0 * s[::-1], False, zero, method=model.denoise)
  np.testing.assert_allclose(np.asarray(u1), np.asarray(u2), atol=1e-6)
  guided = model.clone(guidance=2.0)
  g = guided.apply(variables, x, t, s, method=guided.denoise)
  np.testing.assert_allclose(np.asarray(g), np.asarray(u1 + 2.0 * (with_sketch - u1)), atol=1e-5)
  for m in (model, guided):  # the samplers' denoiser decodes the picture once: the same output
    np.testing.assert_allclose(np.asarray(unet_lib.denoiser(m, variables, s, x.shape)(x, t)),
                               np.asarray(m.apply(variables, x, t, s, method=m.denoise)), atol=1e-5)

  task = PatronusTask(config)
  rest = {k: v for k, v in variables.items() if k != 'params'}

  def diffusion_only(params):
    return task.loss_terms(params, rest, {'image': x}, jax.random.PRNGKey(1), False)[1]['diffusion_loss']

  grads = jax.grad(diffusion_only)(variables['params'])
  assert float(jnp.abs(grads['s_decoder']['out']['kernel']).max()) > 0.0
  plain_task = PatronusTask(config_lib.load('configs/quickstart.py:paper,tiny', {'train.s_decoder_weight': 1.0}))
  plain_rest = {k: v for k, v in plain_vars.items() if k != 'params'}
  plain_grads = jax.grad(lambda p: plain_task.loss_terms(p, plain_rest, {'image': x}, jax.random.PRNGKey(1), False)[1][
      'diffusion_loss'])(plain_vars['params'])
  assert float(jnp.abs(plain_grads['s_decoder']['out']['kernel']).max()) == 0.0
  with pytest.raises(ConfigError, match='model.s_sketch.*s_decoder_weight'):
    config_lib.load('configs/quickstart.py:paper,tiny', {'model.s_sketch': True})


def test_edge_weights_count_both_sides_of_an_outline_and_leave_the_plain_loss_alone():
  step = np.zeros((1, 8, 8, 1), np.float32)
  step[:, :, 4:] = 1.0  # a vertical edge between columns 3 and 4
  w = np.asarray(diffusion.edge_weights(jnp.asarray(step), 2.0))[0, :, :, 0]
  # g = sqrt(1/2) on columns 3 and 4, 0 elsewhere; mean g = 16 sqrt(1/2) / 64: weight 1 + 2 * 4
  np.testing.assert_allclose(w[:, [3, 4]], 9.0, rtol=1e-5)
  np.testing.assert_allclose(np.delete(w, [3, 4], axis=1), 1.0)
  assert np.all(np.asarray(diffusion.edge_weights(jnp.ones((2, 4, 4, 3)), 5.0)) == 1.0)  # flat: no edges
  assert np.all(np.asarray(diffusion.edge_weights(jnp.asarray(step), 0.0)) == 1.0)
  # the weighted decoder loss: the plain one at strength 0, the weighted mean otherwise
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  losses = {}
  for strength in (0.0, 1.5):
    config = config_lib.load('configs/quickstart.py:tiny', {'train.s_decoder_weight': 1.0, 'model.s_decoder_size': 8,
                                                            'train.s_decoder_edge_weight': strength})
    task = PatronusTask(config)
    variables = task.init_variables(jax.random.PRNGKey(0), {'image': x})
    params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
    _, metrics = task.loss_fn(params, rest, {'image': x}, jax.random.PRNGKey(4), True)
    s = task.model.apply(variables, x, method=task.model.encode).activations
    decoded = np.asarray(task.model.apply(variables, s, method=task.model.decode_activations))
    target = diffusion.downsample_mean(x, 8)
    weights = np.asarray(diffusion.edge_weights(target, strength))
    losses[strength] = float(metrics['s_decoder_loss'])
    np.testing.assert_allclose(losses[strength], np.mean(weights * (decoded - np.asarray(target)) ** 2), rtol=1e-5)
  assert losses[1.5] > losses[0.0]
  with pytest.raises(ConfigError, match='train.s_decoder_edge_weight'):
    config_lib.load('configs/quickstart.py:tiny', {'train.s_decoder_edge_weight': -1.0})


def test_the_edge_weight_of_the_diffusion_loss_reaches_stage_1_and_is_validated():
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  losses = []
  for strength in (0.0, 2.0):
    task = PatronusTask(config_lib.load('configs/quickstart.py:tiny', {'diffusion.edge_weight': strength}))
    variables = task.init_variables(jax.random.PRNGKey(0), {'image': x})
    params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
    losses.append(float(task.loss_fn(params, rest, {'image': x}, jax.random.PRNGKey(4), True)[1]['diffusion_loss']))
  assert abs(losses[1] - losses[0]) > 1e-4 * losses[0]
  with pytest.raises(ConfigError, match='diffusion.edge_weight'):
    config_lib.load('configs/quickstart.py:tiny', {'diffusion.edge_weight': -1.0})


def test_sketch_consistency_pulls_the_samplers_x0_hat_towards_the_decoders_picture_and_is_validated():
  config = config_lib.load('configs/quickstart.py:tiny', {'diffusion.sketch_consistency': 1.0})
  model = patronus_from_config(config)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  t = jnp.array([600, 20])  # guided (>= 0.1 T) and not
  variables = model.init(jax.random.PRNGKey(0), x, t)
  s = model.apply(variables, x, method=model.encode).activations
  spec = diffusion.SamplerSpec.images(config.diffusion)
  assert (spec.low_pass_strength, spec.low_pass_min_t) == (1.0, 0.1)
  picture = model.apply(variables, s, method=model.decode_activations)  # (2, s_decoder_size, ..., 3)
  plain = unet_lib.denoiser(model, variables, s, x.shape)
  guided = unet_lib.denoiser(model, variables, s, x.shape, spec)
  abar = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.timesteps).abar(t)
  p = config.diffusion.prediction
  _, x0_plain = diffusion.predict(plain, x, t, abar, p)
  _, x0_guided = diffusion.predict(guided, x, t, abar, p)
  k = 32 // picture.shape[1]
  np.testing.assert_allclose(np.asarray(diffusion.low_pass(x0_guided, picture.shape[1])[0]),
                             np.asarray(jnp.repeat(jnp.repeat(picture, k, 1), k, 2)[0]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(x0_guided[1]), np.asarray(x0_plain[1]), atol=1e-5)
  off = diffusion.SamplerSpec.images(
      config_lib.load('configs/quickstart.py:tiny', {'diffusion.sketch_consistency': 0.0}).diffusion)
  assert off.low_pass_strength == 0.0 and off.low_pass_min_t == 0.0
  np.testing.assert_allclose(np.asarray(unet_lib.denoiser(model, variables, s, x.shape, off)(x, t)),
                             np.asarray(plain(x, t)))
  for overrides, field in (({'diffusion.sketch_consistency': 1.5}, 'diffusion.sketch_consistency'),
                           ({'diffusion.sketch_consistency_min_t': 1.0}, 'diffusion.sketch_consistency_min_t'),
                           ({'diffusion.sketch_consistency': 1.0, 'train.s_decoder_weight': 0.0,
                             'model.s_sketch': False}, 's_decoder_weight'),
                           ({'diffusion.sketch_consistency': 1.0, 'model_type': 'bcos'}, 'model_type')):
    with pytest.raises(ConfigError, match=field):
      config_lib.load('configs/quickstart.py:tiny', overrides)


def test_emergence_traces_the_unets_own_denoising_when_sampling_keeps_the_sketch():
  # With the sketch consistency, x0_hat shows the decoder's picture from the first guided step, so the
  # emergence trajectories run without it: their images are the unguided sampler's, not the guided one's.
  from patronus_jax.interpret import core as interpret_core  # pylint: disable=g-import-not-at-top
  config = config_lib.load('configs/quickstart.py:tiny')
  assert config.diffusion.sketch_consistency == 1.0
  model = patronus_from_config(config)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = model.init(jax.random.PRNGKey(0), x, jnp.zeros((2,), jnp.int32))
  s = np.asarray(model.apply(variables, x, method=model.encode).activations)
  guided = interpret_core.deterministic_spec(config.diffusion, 4, 'dpmpp2m')
  plain = dataclasses.replace(guided, low_pass_strength=0.0, low_pass_min_t=0.0)
  assert guided.low_pass_strength == 1.0
  x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(3), x.shape))
  traced = interpret_core.Engine(model, variables, guided, batch_size=2).trajectory(s, x_T)['images']
  want = interpret_core.generate_batch(model, variables, jnp.asarray(s), jnp.asarray(x_T), plain)['images']
  other = interpret_core.generate_batch(model, variables, jnp.asarray(s), jnp.asarray(x_T), guided)['images']
  np.testing.assert_allclose(np.asarray(traced), np.asarray(want), atol=1e-5)
  assert float(jnp.abs(other - want).max()) > 1e-3


def test_hessian_penalty_is_the_variance_of_second_differences_and_zero_for_separate_effects():
  rng = np.random.RandomState(0)
  s = jnp.asarray(rng.randn(5, 3).astype(np.float32) * np.array([1.0, 2.0, 0.5], np.float32))
  key = jax.random.PRNGKey(3)
  # each input alone (any nonlinearity, no interaction): the mixed derivatives are 0
  separate = lambda x: jnp.stack([jnp.sin(x[:, 0]) + x[:, 1] ** 3, jnp.exp(x[:, 2])], 1)
  assert float(proto_lib.hessian_penalty(separate, s, key, step=0.05, num_directions=4)) < 1e-4
  # f = a s0 s1: a quadratic, so the central second difference is exact: 2 a v0 v1 sd0 sd1 per direction
  a, k = 1.5, 4
  product = lambda x: a * x[:, :1] * x[:, 1:2]
  sd = np.asarray(jnp.std(s, axis=0)) + 1e-6
  v = np.asarray(jax.random.rademacher(key, (k,) + s.shape, dtype=s.dtype))
  second = 2 * a * v[..., 0] * v[..., 1] * sd[0] * sd[1]  # (k, batch)
  expected = np.mean(np.var(second, axis=0, ddof=1))
  got = float(proto_lib.hessian_penalty(product, s, key, step=0.1, num_directions=k))
  assert expected > 0
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # over many directions it estimates 4 a^2 sd0^2 sd1^2 (the off-diagonal Hessian, twice, squared)
  many = float(proto_lib.hessian_penalty(product, s, key, step=0.1, num_directions=4000))
  np.testing.assert_allclose(many, 4 * a ** 2 * sd[0] ** 2 * sd[1] ** 2, rtol=0.1)
  # s enters without its gradient
  assert float(jnp.abs(jax.grad(lambda x: proto_lib.hessian_penalty(product, x, key))(s)).max()) == 0.0
  with pytest.raises(ValueError, match='2 directions'):
    proto_lib.hessian_penalty(product, s, key, num_directions=1)


def _stage1_term_gradients(field: str, weight: float, metric: str) -> dict:
  """Per parameter collection, the largest |gradient| of stage 1's term train.<field> (`_stage1_term`)."""
  value, grads, _, _, _ = _stage1_term(field, weight, metric)
  assert value > 0
  return {k: max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[k])) for k in grads}


def test_decoder_hessian_term_in_stage1_trains_the_decoder_only():
  biggest = _stage1_term_gradients('s_decoder_hessian_weight', 0.7, 's_decoder_hessian')
  assert biggest['s_decoder'] > 0 and biggest['prototypes'] == 0 and biggest['unet'] == 0
  for bad, field in (({'train.s_decoder_hessian_weight': -1.0}, 'train.s_decoder_hessian_weight'),
                     ({'train.s_decoder_hessian_step': 0.0}, 'train.s_decoder_hessian_step'),
                     ({'train.s_decoder_hessian_weight': 1.0, 'train.s_decoder_weight': 0.0,
                       'model.s_sketch': False, 'diffusion.sketch_consistency': 0.0},
                      'train.s_decoder_hessian_weight')):
    with pytest.raises(ConfigError, match=field):
      config_lib.load('configs/quickstart.py:tiny', bad)


def test_edit_cycle_loss_compares_the_read_back_s_with_the_edited_s():
  rng = np.random.RandomState(1)
  s = jnp.asarray(rng.randn(6, 4).astype(np.float32) * np.array([1.0, 3.0, 0.5, 2.0], np.float32))
  key = jax.random.PRNGKey(7)
  identity = lambda x: x
  # a picture that shows every prototype and is read back exactly: no loss
  assert float(proto_lib.edit_cycle_loss(s, key, identity, identity)) < 1e-10
  # closed form: read back as zeros -> half the edited prototype's and half the others' mean
  # squared value, in units of each prototype's batch variance
  chosen = np.asarray(jax.nn.one_hot(jax.random.randint(key, (6,), 0, 4), 4))
  edited = np.asarray(s) * (1 - chosen) + np.roll(np.asarray(s), 1, axis=0) * chosen
  assert np.all(chosen.sum(1) == 1)
  scaled = edited ** 2 / (np.asarray(s).var(0) + 1e-6)
  expected = 0.5 * ((scaled * chosen).sum() / 6 + (scaled * (1 - chosen)).sum() / (6 * 3))
  got = float(proto_lib.edit_cycle_loss(s, key, identity, jnp.zeros_like))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # a picture that hides prototype 0 (always drawn as its mean) pays only where prototype 0 differs
  hide = lambda x: x.at[:, 0].set(jnp.mean(s[:, 0]))
  hidden = float(proto_lib.edit_cycle_loss(s, key, hide, identity))
  assert hidden > 0.1
  np.testing.assert_allclose(hidden, 0.5 * float(np.sum(
      ((edited[:, 0] - np.asarray(s)[:, 0].mean()) ** 2 / (np.asarray(s)[:, 0].var() + 1e-6))
      * np.where(chosen[:, 0] == 1, 1.0, 1.0 / 3)) / 6), rtol=1e-5)
  # s is the target: no gradient into it
  assert float(jnp.abs(jax.grad(lambda x: proto_lib.edit_cycle_loss(x, key, hide, identity))(s)).max()) == 0.0


def test_edit_cycle_term_in_stage1_trains_the_decoder_and_the_prototype_network():
  biggest = _stage1_term_gradients('edit_cycle_weight', 0.4, 'edit_cycle_loss')
  assert biggest['s_decoder'] > 0 and biggest['prototypes'] > 0 and biggest['unet'] == 0
  for bad in ({'train.edit_cycle_weight': -1.0},
              {'train.edit_cycle_weight': 1.0, 'train.s_decoder_weight': 0.0, 'model.s_sketch': False,
               'diffusion.sketch_consistency': 0.0}):
    with pytest.raises(ConfigError, match='train.edit_cycle_weight'):
      config_lib.load('configs/quickstart.py:tiny', bad)
