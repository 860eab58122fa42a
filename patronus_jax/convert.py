"""Official PyTorch checkpoints -> this project's variables and workdirs; fixture checks.

  python -m patronus_jax.convert --checkpoint=PATH/ckpt.tar --official_config=PATH/config.pickle \\
      [--latent_checkpoint=PATH/best_model.pt] --workdir=DIR
  python -m patronus_jax.convert --verify_fixture=FILE.npz

The official code is NCHW with torch layouts (conv (out, in, kh, kw), linear (out, in),
ConvTranspose1d (in, out, k)); here everything is NHWC with Flax layouts. Every leaf of our
variable tree names exactly one official `state_dict` key; a missing or extra key, or a shape
that does not fit, stops the import with the full list of offenders.

Reading `.tar` / `.pt` files needs torch (`pip install patronus_jax[torch]`, torch==2.13.0);
it is imported only there. Fixtures and `.npz` state dicts need no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import zipfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from patronus_jax import config as config_lib
from patronus_jax.core.errors import UserError
from patronus_jax.data import bias as bias_lib
from patronus_jax.models import bcos
from patronus_jax.models.latent import LatentUNet1D, latent_from_config
from patronus_jax.models.prototypes import receptive_field
from patronus_jax.models.unet import Patronus, patronus_from_config
from patronus_jax.tasks.patronus import loading

Array = np.ndarray


class ConversionError(UserError, ValueError):
  """The weights do not fit the model: the message lists every offending key and shape."""


# ----------------------------------------------------------------------------- layouts

def _conv2d(w):  # (O, I, kh, kw) -> (kh, kw, I, O)
  return np.transpose(w, (2, 3, 1, 0))


def _conv1d(w):  # (O, I, k) -> (k, I, O)
  return np.transpose(w, (2, 1, 0))


def _conv_transpose1d(w):  # (I, O, k) -> (k, I, O)
  return np.transpose(w, (2, 0, 1))


def _dense(w):  # (O, I) -> (I, O)
  return np.transpose(w, (1, 0))


def _same(w):
  return w


def _prototypes(w):  # (P, D, 1, 1) -> (P, D)
  return w.reshape(w.shape[0], -1)


# ----------------------------------------------------------------------------- name maps

_RES_2D = {'norm_1': 'normlize_1', 'conv_1': 'conv_1', 'time_proj': 'dense_1',
           'proto_proj': 'dense_2', 'norm_2': 'normlize_2', 'conv_2': 'conv_2',
           'skip': 'match_input'}
_RES_1D = {'norm_1': 'norm1', 'conv_1': 'conv1', 'time_proj': 'time_emb_proj', 'norm_2': 'norm2',
           'conv_2': 'conv2', 'skip': 'skip_connection'}


def _leaf(module_key: str, leaf: str, kind: str) -> tuple[str, Callable[[Array], Array]]:
  """Maps a Flax leaf ('kernel'/'bias'/'scale') of a layer of `kind` to torch key + layout."""
  if leaf == 'scale':
    return f'{module_key}.weight', _same
  if leaf == 'bias':
    return f'{module_key}.bias', _same
  layout = {'conv2d': _conv2d, 'conv1d': _conv1d, 'dense': _dense,
            'conv_transpose1d': _conv_transpose1d}[kind]
  return f'{module_key}.weight', layout


def patronus_key(path: tuple[str, ...], kernel_ndim: int) -> tuple[str, Callable[[Array], Array]]:
  """Official key and layout of one leaf of `Patronus` variables (path without collection)."""
  *mods, leaf = path
  top = mods[0]
  if top == 'prototypes':
    if leaf == 'prototype_vectors':
      return 'proactBlock.prototype_vectors', _prototypes
    if leaf == 'ones':
      return 'proactBlock.ones', _prototypes
    i = int(mods[2].split('_')[1])  # encoder/conv_i -> features.(2i) (ReLUs sit between)
    return _leaf(f'proactBlock.encoder.features.{2 * i}', leaf, 'conv2d')
  assert top == 'unet', path
  mods = mods[1:]
  head = mods[0]
  if head == 'time_embedding':
    if leaf == 'table':
      return 'time_embeddings.time_blocks.0.weight', _same
    return _leaf(f'time_embeddings.time_blocks.{1 + 2 * int(mods[1][-1])}', leaf, 'dense')
  if head == 'prototype_embedding':
    return _leaf(f'cond_embeddings.vector_fc.{2 * int(mods[1][-1])}', leaf, 'dense')
  if head in ('first', 'final_conv', 'final_norm'):
    name = {'first': 'first', 'final_conv': 'final.2', 'final_norm': 'final.0'}[head]
    return _leaf(name, leaf, 'conv2d')
  group, index = re.fullmatch(r'(down|mid|up)_(\d+)', head).groups()
  base = {'down': 'encoder_blocks', 'mid': 'bottleneck_blocks', 'up': 'decoder_blocks'}[group]
  base = f'{base}.{index}'
  sub = mods[1]
  if sub == 'conv':  # Downsample / Upsample
    return _leaf(f'{base}.downsample' if group == 'down' else f'{base}.upsample.1', leaf, 'conv2d')
  if sub == 'attention':
    inner = mods[2]
    if inner == 'norm':
      return _leaf(f'{base}.attention.group_norm', leaf, 'conv2d')
    if inner == 'qkv':
      return (f'{base}.attention.mhsa.in_proj_{"weight" if leaf == "kernel" else "bias"}',
              _dense if leaf == 'kernel' else _same)
    return _leaf(f'{base}.attention.mhsa.out_proj', leaf, 'dense')
  kind = 'dense' if sub in ('time_proj', 'proto_proj') else 'conv2d'
  return _leaf(f'{base}.{_RES_2D[sub]}', leaf, kind)


def latent_key(path: tuple[str, ...], kernel_ndim: int) -> tuple[str, Callable[[Array], Array]]:
  """Official key and layout of one leaf of `LatentUNet1D` variables."""
  *mods, leaf = path
  head = mods[0] if mods else leaf
  if leaf == 'time_table':
    return 'time_emb.time_blocks.0.weight', _same
  if head.startswith('time_dense_'):
    return _leaf(f'time_emb.time_blocks.{1 + 2 * int(head[-1])}', leaf, 'dense')
  if head in ('initial_conv', 'final_conv'):
    return _leaf(head, leaf, 'conv1d')
  if head in ('mid_0', 'mid_1'):
    base = f'mid_block{int(head[-1]) + 1}'
  else:
    group, index = re.fullmatch(r'(down|up)_(\d+)', head).groups()
    base = f'{group}_blocks.{index}'
    if len(mods) == 1:  # the down conv / the transposed up conv itself
      if group == 'down':
        return _leaf(f'{base}.down', leaf, 'conv1d')
      return _leaf(f'{base}.up', leaf, 'conv_transpose1d')
  sub = mods[1]
  return _leaf(f'{base}.{_RES_1D[sub]}', leaf, 'dense' if sub == 'time_proj' else 'conv1d')


# ----------------------------------------------------------------------------- import

def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _unflatten(items) -> dict:
  out: dict = {}
  for path, v in items:
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def variables_from_state_dict(state_dict: Mapping[str, Array], template: Mapping[str, Any],
                              key_fn, what: str = 'model') -> dict:
  """Builds a variables dict shaped like `template` (from `jax.eval_shape(model.init, ...)`).

  Raises ConversionError listing missing keys, unexpected keys and shape mismatches.
  """
  state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
  used, missing, mismatched, items = set(), [], [], []
  for path, leaf in _flatten(template):
    rest = path[1:]  # path[0] is the collection
    key, layout = key_fn(rest, len(leaf.shape))
    if key not in state_dict:
      missing.append(f'{key} (for {"/".join(path)}, expected shape {tuple(leaf.shape)})')
      continue
    used.add(key)
    value = layout(state_dict[key])
    if tuple(value.shape) != tuple(leaf.shape):
      mismatched.append(f'{key}: checkpoint {tuple(state_dict[key].shape)} -> {tuple(value.shape)}, '
                        f'model {"/".join(path)} expects {tuple(leaf.shape)}')
      continue
    items.append((path, value.astype(np.float32)))
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected or mismatched:
    lines = [f'the checkpoint does not match the {what} described by the config:']
    for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                        ('shape mismatches', mismatched)):
      if keys:
        lines.append(f'  {title} ({len(keys)}):')
        lines += [f'    {k}' for k in keys]
    raise ConversionError('\n'.join(lines))
  return _unflatten(items)


def _template(model, *args):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))
  return jax.tree_util.tree_map(lambda x: x, dict(shapes))


def _as_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def import_patronus(state_dict: Mapping[str, Array], model) -> dict:
  """Official `Patronus_Unet` state_dict -> variables {'params', 'buffers'} of `model`."""
  size = _image_size_hint(state_dict, model)
  x = jnp.zeros((1, size, size, model.image_channels))
  template = _as_dict(_template(model, x, jnp.zeros((1,), jnp.int32)))
  return variables_from_state_dict(state_dict, template, patronus_key, 'Patronus U-Net')


def _image_size_hint(state_dict, model) -> int:
  """Smallest image the encoder and the U-Net's downsamplings accept (shapes do not depend on it)."""
  del state_dict
  size = 2 ** (len(model.channel_mults) - 1)
  while True:
    try:
      receptive_field(size, model.encoder_kernels, model.encoder_strides, model.encoder_paddings)
      return size
    except ValueError:
      size *= 2


def import_latent(state_dict: Mapping[str, Array], model, num_prototypes: int) -> dict:
  """Official `UNet1D` state_dict -> variables {'params', 'buffers'} of `model`."""
  template = _as_dict(_template(model, jnp.zeros((1, num_prototypes)), jnp.zeros((1,), jnp.int32)))
  return variables_from_state_dict(state_dict, template, latent_key, 'latent UNet1D')


# ----------------------------------------------------------------------------- fixtures

def fixture_kind(data: Mapping[str, Any]) -> str:
  keys = set(data.keys())
  if 'out/proact' in keys:
    return 'patronus'
  if 'in/z' in keys and 'out/eps' in keys:
    return 'latent'
  if any(k.startswith('conv_b') or k.startswith('linear_b') for k in keys):
    return 'bcos'
  raise ConversionError(f'unrecognised fixture: keys {sorted(keys)[:8]}...')


def _state_dict(data) -> dict:
  return {k[3:]: np.asarray(data[k]) for k in data.keys() if k.startswith('sd/')}


def patronus_model_from_fixture_config(cfg: Mapping[str, Any], num_res_blocks: int = 2):
  c, _, _ = cfg['img_shape']
  if cfg['enc_channels'][0] != c:
    raise ConversionError(f"fixture enc_channels[0]={cfg['enc_channels'][0]} != image channels {c}")
  return Patronus(
      image_channels=c, num_prototypes=cfg['num_prototypes'],
      encoder_channels=tuple(cfg['enc_channels'][1:]), encoder_kernels=tuple(cfg['enc_kernels']),
      encoder_strides=tuple(cfg['enc_strides']), encoder_paddings=tuple(cfg['enc_paddings']),
      base_channels=cfg['base_channels'], channel_mults=tuple(cfg['channel_mults']),
      num_res_blocks=num_res_blocks, attention=tuple(cfg['apply_attention']),
      time_mult=cfg.get('time_mult', 4), time_table_size=cfg.get('time_table_size', 1000))


def latent_model_from_fixture_config(cfg: Mapping[str, Any], pad_to_fit: bool = False):
  return LatentUNet1D(base_channels=cfg['base_channels'], channel_mults=tuple(cfg['channel_mults']),
                      num_res_blocks=cfg['num_res_blocks'], num_timesteps=cfg['timesteps'],
                      pad_to_fit=pad_to_fit)


def _errors(ours, theirs) -> tuple[float, float]:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    raise ConversionError(f'output shape {ours.shape} != official {theirs.shape}')
  max_abs = float(np.max(np.abs(ours - theirs)))
  scale = float(np.max(np.abs(theirs)))
  return max_abs, max_abs / scale if scale > 0 else max_abs


def _patronus_outputs(data) -> dict:
  cfg = json.loads(str(data['config']))
  model = patronus_model_from_fixture_config(cfg)
  variables = import_patronus(_state_dict(data), model)
  nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
  nchw = lambda a: np.transpose(np.asarray(a), (0, 3, 1, 2))
  x0, xt, t = nhwc(data['in/x0']), nhwc(data['in/xt']), jnp.asarray(data['in/t'], jnp.int32)

  @jax.jit
  def run(variables, x0, xt, t):
    enc = model.apply(variables, x0, method=model.encode)
    return enc, model.apply(variables, xt, t, s=enc.activations), model.apply(variables, x0, t)

  enc, eps_given_s, eps_self_cond = run(variables, x0, xt, t)
  out = {
      'proact': np.asarray(enc.activations),
      'distances': np.transpose(np.asarray(enc.distances), (0, 3, 1, 2)),
      'eps_given_s': nchw(eps_given_s),
      'eps_self_cond': nchw(eps_self_cond),
  }
  if 'out/rf_info' in data:
    rf = receptive_field(cfg['img_shape'][2], cfg['enc_kernels'], cfg['enc_strides'],
                         cfg['enc_paddings'])
    out['rf_info'] = np.array(rf, np.float64)
  return out


def _latent_outputs(data) -> dict:
  cfg = json.loads(str(data['config']))
  z = np.asarray(data['in/z'])  # (B, 1, P)
  model = latent_model_from_fixture_config(cfg, pad_to_fit=False)
  variables = import_latent(_state_dict(data), model, z.shape[-1])
  eps = jax.jit(model.apply)(variables, jnp.asarray(z[:, 0, :]), jnp.asarray(data['in/t'], jnp.int32))
  return {'eps': np.asarray(eps)[:, None, :]}


def fixture_outputs(data) -> dict:
  """Our outputs for every `out/*` of a fixture, in the fixture's (official) layout."""
  kind = fixture_kind(data)
  if kind == 'patronus':
    return _patronus_outputs(data)
  if kind == 'latent':
    return _latent_outputs(data)
  return bcos.fixture_outputs(data)


def verify_fixture(path: str, tolerance: float = 1e-5, stream=sys.stdout) -> bool:
  """Prints one line per output (max abs error, relative error); True when all are within."""
  data = read_npz(path, 'reference fixture')
  try:
    ours = fixture_outputs(data)
  except KeyError as e:
    raise ConversionError(f'{path}: the reference fixture has no array {e} (expected the arrays written by '
                          'the reference exporter: sd/*, inputs and out/*)') from e
  ok = True
  expected = [k for k in data if k.startswith('out/')] + [
      k for k in data if k.endswith('/out') and not k.startswith('out/')]
  for key in expected:
    name = key[4:] if key.startswith('out/') else key[:-4]
    if name not in ours:
      print(f'{os.path.basename(path)} {name}: NOT COMPUTED', file=stream)
      ok = False
      continue
    max_abs, rel = _errors(ours[name], data[key])
    passed = rel <= tolerance
    ok &= passed
    print(f'{os.path.basename(path)} {name}: max_abs={max_abs:.3e} rel={rel:.3e} '
          f'{"ok" if passed else "FAIL"}', file=stream)
  return ok


# ----------------------------------------------------------------------------- checkpoints

def read_npz(path: str, what: str) -> dict:
  """Arrays of a .npz file (never unpickled objects); ConversionError naming the file otherwise."""
  if not os.path.isfile(path):
    raise ConversionError(f'{what} not found: {path}')
  try:
    with np.load(path, allow_pickle=False) as data:
      if not hasattr(data, 'files'):
        raise ConversionError(f'{path} holds one array, not a .npz {what} of named arrays')
      return {k: data[k] for k in data.files}
  except ValueError as e:  # numpy: not an array file, or a pickle (which we never load from a .npz)
    raise ConversionError(f'{path} is not a .npz {what} of plain arrays ({e.__class__.__name__}); '
                          'write it with numpy.savez') from e
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise ConversionError(f'{path} is not a readable .npz {what}: {e}') from e


def load_torch_file(path: str) -> Any:
  """torch.load of an official file on CPU; a clear error when torch is not installed."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'official checkpoint not found: {path}')
  if path.endswith('.npz'):
    return read_npz(path, 'state_dict')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path} needs PyTorch: pip install "patronus_jax[torch]" (torch==2.13.0), '
        'or convert the state_dict to .npz elsewhere') from e
  obj = torch.load(path, map_location='cpu', weights_only=False)
  return obj


def _to_numpy_state_dict(obj: Any, path: str) -> dict:
  if isinstance(obj, Mapping) and 'model' in obj and isinstance(obj['model'], Mapping):
    obj = obj['model']
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a state_dict or {{"model": state_dict, ...}}, got {type(obj)}')
  out = {}
  for k, v in obj.items():
    out[k] = v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)
  return out


def state_dict_from_file(path: str) -> dict:
  return _to_numpy_state_dict(load_torch_file(path), path)


_DATASETS = {
    'celeba': ('celeb_a', ''), 'celeba_hair_smile': ('celeb_a', 'hair_smile'),
    'cifar10': ('cifar10', ''), 'fmnist_clean': ('fashion_mnist', ''),
    'mnist_clean': ('mnist', ''), 'ffhq256': ('ffhq', ''), 'chexpert_cardiopm': ('chexpert', ''),
    'out_chexpert': ('chexpert', ''),
}


def config_from_official(official: Mapping[str, Any], latent_state_dict: Mapping[str, Array] | None = None):
  """Our ConfigDict from an official `config.pickle` ({'BaseConfig', 'ModelConfig', 'TrainingConfig'})."""
  try:
    base, model, train = official['BaseConfig'], official['ModelConfig'], official['TrainingConfig']
  except (KeyError, TypeError) as e:
    raise ConversionError('the official config must be a dict with BaseConfig, ModelConfig and '
                          f'TrainingConfig (train/train_config.py save_config_train_diffusion): {e}') from e
  cfg = config_lib.base_config()
  ds = str(base.get('ds_name', '')).lower()
  cfg.name = f'official_{ds or "import"}'
  c, h, w = tuple(train['IMG_SHAPE'])
  if h != w:
    raise ConversionError(f'non-square official images {train["IMG_SHAPE"]} are not supported')
  name, variant = _DATASETS.get(ds, (ds, ''))
  cfg.data.name = name or cfg.data.name
  if variant == 'hair_smile':
    bias_lib.set_celeba_hair_smile(cfg)
  cfg.data.image_size = int(h)
  cfg.data.channels = int(c)
  cfg.model.num_prototypes = int(train['NUM_PROTOS'])
  cfg.model.encoder_channels = tuple(int(v) for v in train['plb_channel_inputs'][1:])
  cfg.model.encoder_kernels = tuple(int(v) for v in train['plb_layer_filter_sizes'])
  cfg.model.encoder_strides = tuple(int(v) for v in train['plb_layer_strides'])
  cfg.model.encoder_paddings = tuple(int(v) for v in train['plb_layer_paddings'])
  cfg.model.base_channels = int(model['BASE_CH'])
  cfg.model.channel_mults = tuple(int(v) for v in model['BASE_CH_MULT'])
  cfg.model.attention = tuple(bool(v) for v in model['APPLY_ATTENTION'])
  cfg.model.dropout = float(model.get('DROPOUT_RATE', 0.1))
  cfg.model.time_mult = int(model.get('TIME_EMB_MULT', 4))
  cfg.diffusion.timesteps = int(train.get('TIMESTEPS', 1000))
  cfg.train.batch_size = int(train.get('BATCH_SIZE', 64))
  cfg.train.learning_rate = float(train.get('LR', 1e-5))
  losses = tuple(train.get('loss_fn', ('denoiser',)))
  lambdas = tuple(train.get('loss_lambda', (1.0,)))
  if 'distinct' in losses:
    cfg.train.distinct_loss_weight = float(lambdas[losses.index('distinct')])
    cfg.train.distinct_margin = float(train.get('distinct_margin', 0.2))
  if latent_state_dict is not None:
    lt = latent_config_from_state_dict(latent_state_dict)
    for k, v in lt.items():
      cfg.latent[k] = v
    cfg.latent.normalize = False  # the official latent model is trained on raw s
  return cfg


def latent_config_from_state_dict(sd: Mapping[str, Array]) -> dict:
  """Infers the UNet1D architecture (base, mults, blocks per level, T) from its state_dict."""
  table = sd['time_emb.time_blocks.0.weight']
  base = int(sd['initial_conv.weight'].shape[0])
  downs = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(r'down_blocks\.(\d+)\.down\.weight', k)] if m)
  blocks = sorted({int(m.group(1)) for k in sd for m in [re.fullmatch(r'down_blocks\.(\d+)\.conv1\.weight', k)] if m})
  num_levels = len(downs) + 1
  per_level = (len(blocks)) // num_levels
  mults, idx = [], 0
  for level in range(num_levels):
    last = idx + per_level - 1
    mults.append(int(sd[f'down_blocks.{last}.conv2.weight'].shape[0]) // base)
    idx = last + 2
  return dict(base_channels=base, channel_mults=tuple(mults), num_res_blocks=per_level,
              timesteps=int(table.shape[0]))


def read_official_config(path: str) -> Any:
  """The official `config.pickle`. Unpickling runs code from the file: only for files you trust."""
  if not os.path.isfile(path):
    raise ConversionError(f'official config not found: {path}')
  print(f'reading {path} with pickle (it can run code: use only config.pickle files you trust)',
        file=sys.stderr)
  try:
    with open(path, 'rb') as f:
      return pickle.load(f)
  except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
    raise ConversionError(f'{path} is not a readable official config.pickle: {e.__class__.__name__}: {e}') from e


def import_official(checkpoint: str, official_config: str, workdir: str,
                    latent_checkpoint: str = '', overrides: Mapping[str, str] | None = None) -> str:
  """Writes an official Patronus (and optionally latent) checkpoint into a workdir of ours.

  `overrides`: dotted config fields the official config does not carry, e.g.
  {'data.folder.path': '/data/ffhq256'} (FFHQ and CheXpert are read from image folders);
  values are parsed as Python literals when possible, else kept as strings.
  """
  official = read_official_config(official_config)
  latent_sd = state_dict_from_file(latent_checkpoint) if latent_checkpoint else None
  cfg = config_from_official(official, latent_sd)
  for dotted, value in (overrides or {}).items():
    _set_field(cfg, dotted, value)
  config_lib.validate(cfg)
  if latent_sd is not None and cfg.latent.architecture != 'unet1d':  # before anything is written
    raise ConversionError(f"an official latent checkpoint holds a UNet1D; --set latent.architecture="
                          f"{cfg.latent.architecture!r} cannot import it (use 'unet1d')")
  model = patronus_from_config(cfg, dtype='float32')
  variables = import_patronus(state_dict_from_file(checkpoint), model)
  loading.write_imported_stage1(workdir, cfg, variables, source=os.path.abspath(checkpoint))
  if latent_sd is not None:
    latent_model = latent_from_config(cfg, dtype='float32')
    latent_vars = import_latent(latent_sd, latent_model, cfg.model.num_prototypes)
    loading.write_imported_latent(workdir, cfg, latent_vars, source=os.path.abspath(latent_checkpoint))
  return workdir


def _set_field(cfg, dotted: str, value: str) -> None:
  """`config.set_field_from_text`, its errors as ConversionError naming the --set flag."""
  try:
    config_lib.set_field_from_text(cfg, dotted, value)
  except (config_lib.ConfigError, TypeError) as e:
    raise ConversionError(f'--set {dotted}={value}: {e}') from e


def main(argv=None) -> int:
  """The command line; a user error prints one line (the traceback with --verbose)."""
  parser = argparse.ArgumentParser(prog='python -m patronus_jax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--verify_fixture', action='append', default=[],
                      help='a reference .npz; may be given several times')
  parser.add_argument('--tolerance', type=float, default=1e-5)
  parser.add_argument('--checkpoint', default='', help='official ckpt.tar (or .npz state_dict)')
  parser.add_argument('--official_config', default='', help='official config.pickle')
  parser.add_argument('--latent_checkpoint', default='', help='official latent best_model.pt')
  parser.add_argument('--workdir', default='')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config field the official config lacks, e.g. data.folder.path=/data/ffhq256 '
                           '(FFHQ, CheXpert); may be given several times')
  parser.add_argument('--verbose', action='store_true', help='show the traceback of a user error too')
  args = parser.parse_args(argv)
  try:
    return _run(parser, args)
  except UserError as e:
    if args.verbose:
      raise
    print(f'error: {e}', file=sys.stderr)
    return e.exit_status


def _run(parser, args) -> int:
  if args.verify_fixture:
    ok = True
    for path in args.verify_fixture:
      ok &= verify_fixture(path, args.tolerance)
    return 0 if ok else 1
  if not (args.checkpoint and args.official_config and args.workdir):
    parser.error('give --verify_fixture, or --checkpoint, --official_config and --workdir')
  try:
    overrides = config_lib.parse_set_flags(args.set)
  except config_lib.ConfigError as e:
    parser.error(str(e))
  import_official(args.checkpoint, args.official_config, args.workdir, args.latent_checkpoint,
                  overrides)
  print(f'wrote {args.workdir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
