"""The FID InceptionV3: structure, state_dict key/shape mapping, weight loading, input handling.

The expected state_dict is written out here from torchvision's `Inception3` constructor with
pytorch-fid's changes (1008 classes, no aux head), independently of the Flax module. The full
network is checked on every run against pool features that pytorch-fid's own InceptionV3 computed
(tests/fixtures/inception_fid_reference.npz, from seeded weights: make_inception_fixture.py beside
it), and against a PyTorch transcription when torch is installed (optional extra, slow).
"""

import functools
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax.evaluate import inception


def _add_conv(shapes, name, cin, cout, kh, kw=None):
  """A BasicConv2d: its conv weight (OIHW) and its BatchNorm's four vectors."""
  shapes[f'{name}.conv.weight'] = (cout, cin, kh, kw or kh)
  for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
    shapes[f'{name}.bn.{leaf}'] = (cout,)


def _block_a(conv, n, cin, pool_features):
  """InceptionA (Mixed_5b-d); returns its output channels."""
  conv(f'{n}.branch1x1', cin, 64, 1)
  conv(f'{n}.branch5x5_1', cin, 48, 1)
  conv(f'{n}.branch5x5_2', 48, 64, 5)
  conv(f'{n}.branch3x3dbl_1', cin, 64, 1)
  conv(f'{n}.branch3x3dbl_2', 64, 96, 3)
  conv(f'{n}.branch3x3dbl_3', 96, 96, 3)
  conv(f'{n}.branch_pool', cin, pool_features, 1)
  return 64 + 64 + 96 + pool_features


def _block_b(conv, c):
  """InceptionB (Mixed_6a)."""
  conv('Mixed_6a.branch3x3', c, 384, 3)
  conv('Mixed_6a.branch3x3dbl_1', c, 64, 1)
  conv('Mixed_6a.branch3x3dbl_2', 64, 96, 3)
  conv('Mixed_6a.branch3x3dbl_3', 96, 96, 3)
  return 384 + 96 + c


def _block_c(conv, n, cin, c7):
  """InceptionC (Mixed_6b-e)."""
  conv(f'{n}.branch1x1', cin, 192, 1)
  conv(f'{n}.branch7x7_1', cin, c7, 1)
  conv(f'{n}.branch7x7_2', c7, c7, 1, 7)
  conv(f'{n}.branch7x7_3', c7, 192, 7, 1)
  conv(f'{n}.branch7x7dbl_1', cin, c7, 1)
  conv(f'{n}.branch7x7dbl_2', c7, c7, 7, 1)
  conv(f'{n}.branch7x7dbl_3', c7, c7, 1, 7)
  conv(f'{n}.branch7x7dbl_4', c7, c7, 7, 1)
  conv(f'{n}.branch7x7dbl_5', c7, 192, 1, 7)
  conv(f'{n}.branch_pool', cin, 192, 1)
  return 768


def _block_d(conv, c):
  """InceptionD (Mixed_7a)."""
  conv('Mixed_7a.branch3x3_1', c, 192, 1)
  conv('Mixed_7a.branch3x3_2', 192, 320, 3)
  conv('Mixed_7a.branch7x7x3_1', c, 192, 1)
  conv('Mixed_7a.branch7x7x3_2', 192, 192, 1, 7)
  conv('Mixed_7a.branch7x7x3_3', 192, 192, 7, 1)
  conv('Mixed_7a.branch7x7x3_4', 192, 192, 3)
  return 320 + 192 + c


def _block_e(conv, n, cin):
  """InceptionE (Mixed_7b-c)."""
  conv(f'{n}.branch1x1', cin, 320, 1)
  conv(f'{n}.branch3x3_1', cin, 384, 1)
  conv(f'{n}.branch3x3_2a', 384, 384, 1, 3)
  conv(f'{n}.branch3x3_2b', 384, 384, 3, 1)
  conv(f'{n}.branch3x3dbl_1', cin, 448, 1)
  conv(f'{n}.branch3x3dbl_2', 448, 384, 3)
  conv(f'{n}.branch3x3dbl_3a', 384, 384, 1, 3)
  conv(f'{n}.branch3x3dbl_3b', 384, 384, 3, 1)
  conv(f'{n}.branch_pool', cin, 192, 1)
  return 320 + 768 + 768 + 192


def expected_state_dict_shapes():
  """Keys and shapes of pytorch-fid's FID Inception state_dict (torchvision layout), in its order."""
  shapes = {}
  conv = functools.partial(_add_conv, shapes)
  conv('Conv2d_1a_3x3', 3, 32, 3)
  conv('Conv2d_2a_3x3', 32, 32, 3)
  conv('Conv2d_2b_3x3', 32, 64, 3)
  conv('Conv2d_3b_1x1', 64, 80, 1)
  conv('Conv2d_4a_3x3', 80, 192, 3)
  c = _block_a(conv, 'Mixed_5b', 192, 32)
  c = _block_a(conv, 'Mixed_5c', c, 64)
  c = _block_a(conv, 'Mixed_5d', c, 64)
  c = _block_b(conv, c)
  for n, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
    c = _block_c(conv, n, c, c7)
  c = _block_d(conv, c)
  c = _block_e(conv, 'Mixed_7b', c)
  c = _block_e(conv, 'Mixed_7c', c)
  assert c == 2048
  shapes['fc.weight'] = (1008, 2048)
  shapes['fc.bias'] = (1008,)
  return shapes


def random_state_dict(seed=0, with_counters=True):
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in expected_state_dict_shapes().items():
    if key.endswith('running_var'):
      sd[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif key.endswith('conv.weight'):
      sd[key] = (rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
    else:
      sd[key] = rng.normal(0.0, 0.5, shape).astype(np.float32)
    if with_counters and key.endswith('running_var'):
      sd[key.replace('running_var', 'num_batches_tracked')] = np.array(0, np.int64)
  return sd


@pytest.fixture(scope='module')
def state_dict():
  return random_state_dict()


def test_network_outputs_2048_pool_features():
  out = jax.eval_shape(lambda v, x: inception.FIDInceptionV3().apply(v, x),
                       inception.variable_shapes(),
                       jax.ShapeDtypeStruct((4, 299, 299, 3), jnp.float32))
  assert out['pool'].shape == (4, 2048)
  assert out['logits'].shape == (4, 1008)


def test_parameter_names_and_shapes_match_pytorch_fid_state_dict():
  assert inception.state_dict_shapes() == expected_state_dict_shapes()
  # torchvision's inception_v3 has 27,161,264 parameters; without the aux head
  # (3,326,696) and with the TF graph's 1008 classes (+8 * 2049): 23,850,960.
  shapes = inception.state_dict_shapes()
  num = sum(int(np.prod(s)) for k, s in shapes.items() if 'running' not in k)
  assert num == 27_161_264 - 3_326_696 + 8 * 2049


def test_state_dict_round_trip(state_dict):
  variables = inception.variables_from_state_dict(state_dict)
  assert set(variables) == {'params', 'batch_stats'}
  back = inception.state_dict_from_variables(variables)
  expected = {k: v for k, v in state_dict.items() if 'num_batches_tracked' not in k}
  assert set(back) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  kernel = variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  assert kernel.shape == (1, 7, 128, 128)  # HWIO of torch (out=128, in=128, kh=1, kw=7)
  np.testing.assert_array_equal(kernel[0, 5, 3, 9], state_dict['Mixed_6b.branch7x7_2.conv.weight'][9, 3, 0, 5])
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['Conv2d_1a_3x3']['bn']['var'],
                                state_dict['Conv2d_1a_3x3.bn.running_var'])


def _numpy_basic_conv(sd, name, x_nchw, padding):
  """Reference: torch Conv2d (no bias, NCHW/OIHW) -> BatchNorm2d eval (eps 1e-3) -> ReLU."""
  w = sd[f'{name}.conv.weight'].astype(np.float64)
  ph, pw = padding
  x = np.pad(x_nchw.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  o, _, kh, kw = w.shape
  h, wd = x.shape[2] - kh + 1, x.shape[3] - kw + 1
  out = np.zeros((x.shape[0], o, h, wd))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum('nchw,oc->nohw', x[:, :, i:i + h, j:j + wd], w[:, :, i, j])
  bn = lambda leaf: sd[f'{name}.bn.{leaf}'].astype(np.float64)[None, :, None, None]
  out = (out - bn('running_mean')) / np.sqrt(bn('running_var') + 1e-3) * bn('weight') + bn('bias')
  return np.maximum(out, 0.0)


def test_loaded_conv_bn_matches_pytorch_semantics(state_dict):
  variables = inception.variables_from_state_dict(state_dict)
  name = 'Mixed_6b.branch7x7_2'  # a (1, 7) kernel with (0, 3) padding: catches an H/W swap
  sub = {'params': variables['params']['Mixed_6b']['branch7x7_2'],
         'batch_stats': variables['batch_stats']['Mixed_6b']['branch7x7_2']}
  x = np.random.default_rng(1).normal(size=(2, 5, 9, 128)).astype(np.float32)
  ours = inception.BasicConv2d(128, (1, 7), padding=(0, 3)).apply(sub, x)
  ref = _numpy_basic_conv(state_dict, name, x.transpose(0, 3, 1, 2), (0, 3)).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)


def test_bad_state_dicts_are_named(state_dict):
  broken = dict(state_dict)
  del broken['Mixed_7c.branch_pool.conv.weight']
  broken['AuxLogits.fc.weight'] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match=r'1 missing keys .*Mixed_7c.branch_pool.conv.weight.*AuxLogits'):
    inception.variables_from_state_dict(broken)
  wrong = dict(state_dict, **{'fc.weight': np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 2048\), expected \(1008, 2048\)"):
    inception.variables_from_state_dict(wrong)


def test_npz_loading_and_missing_torch(state_dict, tmp_path, monkeypatch):
  path = str(tmp_path / 'pt_inception.npz')
  np.savez(path, **state_dict)
  variables = inception.load_inception_variables(path)
  np.testing.assert_array_equal(variables['params']['Mixed_5b']['branch_pool']['bn']['scale'],
                                state_dict['Mixed_5b.branch_pool.bn.weight'])
  with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
    inception.load_inception_variables(str(tmp_path / 'absent.pth'))
  pth = tmp_path / 'weights.pth'
  pth.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # as if torch were not installed
  with pytest.raises(ImportError, match=r'pip install patronus_jax\[torch\]'):
    inception.load_inception_variables(str(pth))


def _fixture_recipe(fixtures_dir):
  """tests/fixtures/make_inception_fixture.py, which makes the fixture's weights (numpy only)."""
  path = os.path.join(fixtures_dir, 'make_inception_fixture.py')
  spec = importlib.util.spec_from_file_location('make_inception_fixture', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_full_network_matches_pytorch_fid_fixture(fixtures_dir):
  """Preprocessing + full forward vs pool3 features of pytorch-fid's InceptionV3 (no torch needed).

  The fixture's weights are regenerated here from its seed; both sides compute in float32, and
  pytorch-fid's float32 features differ from its float64 ones by ~3e-7 of the feature scale.
  """
  recipe = _fixture_recipe(fixtures_dir)
  with np.load(os.path.join(fixtures_dir, 'inception_fid_reference.npz')) as data:
    fixture = {k: data[k] for k in data.files}
  assert str(fixture['recipe']) == recipe.RECIPE, 'fixture made by another recipe: rerun its generator'
  shapes = json.loads(str(fixture['state_dict_shapes']))  # as pytorch-fid's module reports them
  assert {k: tuple(v) for k, v in shapes.items()} == inception.state_dict_shapes()
  state_dict = recipe.state_dict_values(shapes, int(fixture['seed']))
  np.testing.assert_allclose(recipe.weights_checksum(state_dict), fixture['weights_checksum'], rtol=1e-12,
                             err_msg='the seeded weights are not those the fixture was made with')
  images, expected = fixture['images'], fixture['pool_features'].astype(np.float64)
  assert images.dtype == np.uint8 and images.shape[1:3] != (inception.INPUT_SIZE,) * 2  # resizing is tested
  assert expected.shape == (images.shape[0], inception.POOL_FEATURES)
  # The features depend on the image (else a broken input pipeline could pass).
  assert expected.std(axis=0).mean() > 100 * 1e-4 * np.abs(expected).max()

  start = time.perf_counter()
  ours = inception.inception_features(inception.variables_from_state_dict(state_dict), images)
  seconds = time.perf_counter() - start
  assert ours.shape == expected.shape and ours.dtype == np.float32
  scale = np.abs(expected).max()
  err = np.abs(ours - expected).max()
  print(f'pool features vs pytorch-fid: max abs diff {err:.3g}, max |f| {scale:.3g}, '
        f'relative {err / scale:.3g} ({seconds:.1f}s)')
  # float32 through 94 conv layers (fan-in up to 4032): ~4e-7 relative here; 1e-4 leaves room for
  # other BLAS/XLA summation orders, yet a BN epsilon of 1e-5, Mixed_7c average-pooling, padding
  # counted in TF's average pools or inputs off by one grey level each give 1e-2 to 3e-1.
  assert err <= 1e-4 * scale, f'max abs diff {err:.3g} = {err / scale:.3g} of max |f| {scale:.3g}'


def _torch_bilinear_299(x):
  """F.interpolate(size=299, mode='bilinear', align_corners=False), written out in numpy (NHWC)."""

  def axis_weights(n_in):
    dst = np.arange(299)
    src = np.maximum((dst + 0.5) * n_in / 299 - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((299, n_in))
    m[dst, i0] += 1 - lam
    m[dst, i1] += lam
    return m

  mh, mw = axis_weights(x.shape[1]), axis_weights(x.shape[2])
  return np.einsum('ph,nhwc,qw->npqc', mh, x, mw)


def test_preprocess_matches_pytorch_fid_input_pipeline():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2, 13, 21, 3)).astype(np.uint8)
  expected = 2.0 * _torch_bilinear_299(images / 255.0) - 1.0
  preprocess = jax.jit(inception.preprocess)
  got = np.asarray(preprocess(jnp.asarray(images)))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Floats in [-1, 1] quantised to 8 bits give the same input as the uint8 images.
  floats = images.astype(np.float32) / 127.5 - 1.0 + rng.uniform(-1e-3, 1e-3, images.shape)
  np.testing.assert_allclose(np.asarray(preprocess(jnp.asarray(floats, jnp.float32))), got, atol=2e-6)
  grey = np.asarray(preprocess(jnp.asarray(images[..., :1])))
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_tf_pooling_quirks():
  x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative: zero padding would show
  avg = np.asarray(inception._avg_pool_3x3_same(x))  # pylint: disable=protected-access
  assert avg[0, 0, 0, 0] == pytest.approx(np.mean([-1, -2, -5, -6]))  # padded zeros not counted
  mx = np.asarray(inception._max_pool_3x3_same(x))  # pylint: disable=protected-access
  assert mx[0, 0, 0, 0] == -1.0 and mx[0, 3, 3, 0] == -11.0  # padding is -inf, not 0


class _TorchFIDInception:
  """A PyTorch functional transcription of torchvision's Inception3 with pytorch-fid's changes: pool features."""

  def __init__(self, torch, state_dict):
    self.torch, self.F = torch, torch.nn.functional
    self.sd = {k: torch.from_numpy(v) for k, v in state_dict.items() if 'num_batches' not in k}

  def bc(self, name, x, stride=1, padding=0):
    sd, F = self.sd, self.F
    x = F.conv2d(x, sd[f'{name}.conv.weight'], stride=stride, padding=padding)
    x = F.batch_norm(x, sd[f'{name}.bn.running_mean'], sd[f'{name}.bn.running_var'],
                     sd[f'{name}.bn.weight'], sd[f'{name}.bn.bias'], False, 0.0, 1e-3)
    return F.relu(x)

  def avg(self, x):
    return self.F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

  def block_a(self, n, x):
    bc = self.bc
    b5 = bc(f'{n}.branch5x5_2', bc(f'{n}.branch5x5_1', x), padding=2)
    b3 = bc(f'{n}.branch3x3dbl_3', bc(f'{n}.branch3x3dbl_2', bc(f'{n}.branch3x3dbl_1', x), padding=1), padding=1)
    return self.torch.cat([bc(f'{n}.branch1x1', x), b5, b3, bc(f'{n}.branch_pool', self.avg(x))], 1)

  def block_b(self, x):
    bc = self.bc
    b3 = bc('Mixed_6a.branch3x3', x, stride=2)
    bd = bc('Mixed_6a.branch3x3dbl_2', bc('Mixed_6a.branch3x3dbl_1', x), padding=1)
    bd = bc('Mixed_6a.branch3x3dbl_3', bd, stride=2)
    return self.torch.cat([b3, bd, self.F.max_pool2d(x, 3, 2)], 1)

  def block_c(self, n, x):
    bc = self.bc
    b7 = bc(f'{n}.branch7x7_1', x)
    b7 = bc(f'{n}.branch7x7_3', bc(f'{n}.branch7x7_2', b7, padding=(0, 3)), padding=(3, 0))
    bd = bc(f'{n}.branch7x7dbl_1', x)
    for i, p in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
      bd = bc(f'{n}.branch7x7dbl_{i}', bd, padding=p)
    return self.torch.cat([bc(f'{n}.branch1x1', x), b7, bd, bc(f'{n}.branch_pool', self.avg(x))], 1)

  def block_d(self, x):
    bc = self.bc
    b3 = bc('Mixed_7a.branch3x3_2', bc('Mixed_7a.branch3x3_1', x), stride=2)
    b7 = bc('Mixed_7a.branch7x7x3_1', x)
    b7 = bc('Mixed_7a.branch7x7x3_3', bc('Mixed_7a.branch7x7x3_2', b7, padding=(0, 3)), padding=(3, 0))
    b7 = bc('Mixed_7a.branch7x7x3_4', b7, stride=2)
    return self.torch.cat([b3, b7, self.F.max_pool2d(x, 3, 2)], 1)

  def block_e(self, n, x, pool):
    bc, cat = self.bc, self.torch.cat
    b3 = bc(f'{n}.branch3x3_1', x)
    b3 = cat([bc(f'{n}.branch3x3_2a', b3, padding=(0, 1)), bc(f'{n}.branch3x3_2b', b3, padding=(1, 0))], 1)
    bd = bc(f'{n}.branch3x3dbl_2', bc(f'{n}.branch3x3dbl_1', x), padding=1)
    bd = cat([bc(f'{n}.branch3x3dbl_3a', bd, padding=(0, 1)), bc(f'{n}.branch3x3dbl_3b', bd, padding=(1, 0))], 1)
    p = self.avg(x) if pool == 'avg' else self.F.max_pool2d(x, 3, 1, 1)
    return cat([bc(f'{n}.branch1x1', x), b3, bd, bc(f'{n}.branch_pool', p)], 1)

  def pool_features(self, images):
    """uint8 NHWC images -> (N, 2048) numpy, resized by F.interpolate as pytorch-fid does."""
    bc, F = self.bc, self.F
    with self.torch.no_grad():
      x = self.torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
      x = 2 * F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False) - 1
      x = bc('Conv2d_2b_3x3', bc('Conv2d_2a_3x3', bc('Conv2d_1a_3x3', x, stride=2)), padding=1)
      x = bc('Conv2d_4a_3x3', bc('Conv2d_3b_1x1', F.max_pool2d(x, 3, 2)))
      x = F.max_pool2d(x, 3, 2)
      for n in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
        x = self.block_a(n, x)
      x = self.block_b(x)
      for n in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
        x = self.block_c(n, x)
      x = self.block_e('Mixed_7c', self.block_e('Mixed_7b', self.block_d(x), 'avg'), 'max')
      return x.mean(dim=(2, 3)).numpy()


@pytest.mark.skipif(os.environ.get('PATRONUS_SLOW_TESTS') != '1', reason='set PATRONUS_SLOW_TESTS=1 (needs torch)')
def test_full_network_matches_pytorch_forward(state_dict):
  """Full forward vs a PyTorch functional transcription of torchvision + pytorch-fid (slow)."""
  torch = pytest.importorskip('torch')
  images = np.random.default_rng(3).integers(0, 256, (2, 37, 45, 3)).astype(np.uint8)
  expected = _TorchFIDInception(torch, state_dict).pool_features(images)
  ours = inception.inception_features(inception.variables_from_state_dict(state_dict), images, batch_size=2)
  assert ours.shape == (2, 2048)
  assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-5


def test_pth_loading_with_torch(state_dict, tmp_path):
  torch = pytest.importorskip('torch')
  path = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, path)
  variables = inception.load_inception_variables(path)
  np.testing.assert_array_equal(variables['params']['Conv2d_4a_3x3']['conv']['kernel'],
                                state_dict['Conv2d_4a_3x3.conv.weight'].transpose(2, 3, 1, 0))
  npz = str(tmp_path / 'converted.npz')
  inception.convert_to_npz(path, npz)
  again = inception.load_inception_variables(npz)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
