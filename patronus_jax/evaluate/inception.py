"""The InceptionV3 that FID is defined with, in Flax (NHWC), and its weights from pytorch-fid.

This is the network of pytorch-fid (`pytorch_fid.inception.InceptionV3` with
`use_fid_inception=True`): torchvision's Inception3 layout (1008 classes, no auxiliary head)
with the TensorFlow graph's quirks patched in, whose weights
`pt_inception-2015-12-05-6726825d.pth` were ported from TF's `inception-2015-12-05.tgz`:

- `FIDInceptionA` / `FIDInceptionC` / `FIDInceptionE_1`: the pooling branch averages without
  counting padded zeros (TF's avg_pool; `count_include_pad=False`);
- `FIDInceptionE_2` (Mixed_7c): the pooling branch is a 3x3 *max* pool;
- every conv is `BasicConv2d`: conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.

Input handling as pytorch-fid: images in [0, 1] are bilinearly resized to 299x299 (no
antialiasing, half-pixel centres: `F.interpolate(..., align_corners=False)`), then scaled to
[-1, 1]. The FID features are the 2048-d output of the final average pool ("pool3").

Parameter names mirror the PyTorch state_dict: `Mixed_6b.branch7x7_2.conv.weight` is
`params['Mixed_6b']['branch7x7_2']['conv']['kernel']` (transposed to HWIO), `...bn.weight` /
`bias` are `['bn']['scale']` / `['bias']`, `running_mean` / `running_var` are
`batch_stats[...]['bn']['mean']` / `['var']`; `fc.weight` is `params['fc']['kernel']` (transposed).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from patronus_jax.core import batching
from patronus_jax.core import files as pio
import argparse

# The file pytorch-fid downloads (ported from TF's inception-2015-12-05).
FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_CLASSES = 1008  # the TF graph's 1008-way classifier (fc), unused for FID
BN_EPSILON = 1e-3

_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0  # symmetric, per spatial axis (PyTorch's convention)

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  # TF's average pool: the padded border is not counted in the mean.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x):
  # Padding of a max pool is -inf (PyTorch's F.max_pool2d(x, 3, 1, 1) and flax agree).
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride2(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding='VALID')


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35 -> 17), unchanged from torchvision."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, strides=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17 -> 8), unchanged from torchvision."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (`FIDInceptionE_1`, pool='avg') and Mixed_7c (`FIDInceptionE_2`, pool='max')."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.pool == 'max':
      # FIDInceptionE_2: the TF graph max-pools here (the paper and torchvision average).
      pooled = _max_pool_3x3_same(x)
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 on NHWC inputs already at 299x299 in [-1, 1].

  Returns dict(pool=(N, 2048) final average pool features, logits=(N, 1008)).
  """

  @nn.compact
  def __call__(self, x):
    x = BasicConv2d(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE('avg', name='Mixed_7b')(x)
    x = FIDInceptionE('max', name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=_HIGHEST, name='fc')(pool)
    return dict(pool=pool, logits=logits)


# ----------------------------------------------------------------------------------------
# Inputs.


def preprocess(images: jax.Array, quantize: bool = True) -> jax.Array:
  """NHWC images -> what the network sees, as pytorch-fid prepares them.

  `images`: uint8 in [0, 255] or floats in [-1, 1] (the project's convention), 1 or 3 channels
  (grey is repeated, as PIL's convert('RGB') does). With `quantize`, float images are first
  rounded to 8 bits, as if they had been saved as PNG files and read back (pytorch-fid reads
  files). Then: [0, 1] -> bilinear resize to 299x299 -> [-1, 1].
  """
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32) / 255.0
  else:
    x = (images.astype(jnp.float32) + 1.0) / 2.0
    if quantize:
      x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  n, h, w, c = x.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    # F.interpolate(mode='bilinear', align_corners=False): half-pixel centres, no antialiasing.
    x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), method='bilinear', antialias=False)
  return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames=('quantize',))
def _pool_features(variables, images, quantize=True):
  return FIDInceptionV3().apply(variables, preprocess(images, quantize))['pool']


def inception_features(variables: Any, images: np.ndarray, batch_size: int = 100,
                       quantize: bool = True) -> np.ndarray:
  """(N, 2048) pool3 features of NHWC images (uint8, or floats in [-1, 1]), batched and jitted."""
  images = batching.check_images(images, channels=(1, 3))
  fn = functools.partial(_pool_features, quantize=quantize)
  return batching.batched_apply(fn, variables, images, batch_size).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Weights: PyTorch state_dict <-> Flax variables.


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict[str, Any]:
  """The Flax variables' structure and shapes (jax.ShapeDtypeStruct), without any compute."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), dummy)


_LEAF_TO_TORCH = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def torch_key(flax_path: tuple[str, ...]) -> str:
  """('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
  collection, *modules, leaf = flax_path
  return '.'.join(modules + [_LEAF_TO_TORCH[(collection, leaf)]])


def _to_flax_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if flax_path[-1] == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T  # OIHW -> HWIO; (O,I) -> (I,O)
  return value


def _to_torch_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if flax_path[-1] == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """The PyTorch state_dict keys and shapes this network reads (no num_batches_tracked)."""
  flat = traverse_util.flatten_dict(variable_shapes())
  return {torch_key(path): tuple(_to_torch_layout(path, np.empty(s.shape, np.int8)).shape)
          for path, s in flat.items()}


def variables_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
  """Flax variables (float32 numpy) from a pytorch-fid state_dict of numpy arrays or tensors.

  Raises ValueError naming missing, unexpected or mis-shaped keys. `num_batches_tracked`
  entries (BatchNorm counters, not weights) are ignored.
  """
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  flat = traverse_util.flatten_dict(variable_shapes())
  wanted = {torch_key(path): path for path in flat}
  missing = sorted(set(wanted) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(wanted))
  if missing or unexpected:
    raise ValueError(
        'the Inception weights do not match the FID InceptionV3 of pytorch-fid '
        f'({FID_WEIGHTS_FILE}): {len(missing)} missing keys {missing[:5]}, '
        f'{len(unexpected)} unexpected keys {unexpected[:5]}')
  out = {}
  for key, path in wanted.items():
    value = _to_flax_layout(path, _to_numpy(state_dict[key]).astype(np.float32))
    if value.shape != tuple(flat[path].shape):
      raise ValueError(f"Inception weight '{key}' has shape {_to_torch_layout(path, value).shape}, "
                       f'expected {_to_torch_layout(path, np.empty(flat[path].shape, np.int8)).shape}')
    out[path] = value
  return traverse_util.unflatten_dict(out)


def state_dict_from_variables(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `variables_from_state_dict`: PyTorch keys and layouts, numpy arrays."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)))
  return {torch_key(path): _to_torch_layout(path, value) for path, value in flat.items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor
    return value.detach().cpu().numpy()
  return np.asarray(value)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads pytorch-fid's weights: a torch state_dict (.pth/.pt, needs torch) or an .npz of it."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'Inception weights not found at {path!r}; download {FID_WEIGHTS_URL} '
        "and set config.evaluate.inception_weights to the file's path")
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading the PyTorch weights {path!r} needs torch: `pip install patronus_jax[torch]` '
        '(torch==2.13.0), or convert them once to .npz on a machine with torch '
        '(python -m patronus_jax.evaluate.inception --convert IN.pth OUT.npz)') from e
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state_dict, dict):
    raise ValueError(f'{path!r} holds a {type(state_dict).__name__}, expected a state_dict (dict)')
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def load_inception_variables(path: str) -> dict[str, Any]:
  """Flax variables of the FID Inception from pytorch-fid's .pth (or an .npz of the same keys)."""
  return variables_from_state_dict(read_state_dict(path))


def convert_to_npz(pth_path: str, npz_path: str) -> None:
  """Writes the state_dict of `pth_path` as an .npz (same keys), readable without torch."""
  state_dict = read_state_dict(pth_path)
  variables_from_state_dict(state_dict)  # fail now rather than when the .npz is used
  with pio.atomic_path(npz_path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **{k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')})


def _main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Convert pytorch-fid Inception weights to .npz.')
  parser.add_argument('--convert', nargs=2, metavar=('IN_PTH', 'OUT_NPZ'), required=True)
  args = parser.parse_args(argv)
  convert_to_npz(*args.convert)
  print(f'wrote {args.convert[1]}')


if __name__ == '__main__':
  _main()
