"""Parity with the official PyTorch code on every reference fixture, and import errors."""

import glob
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from patronus_jax import convert

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
MODEL_FIXTURES = sorted(glob.glob(os.path.join(FIXTURES, 'patronus_*.npz')) +
                        glob.glob(os.path.join(FIXTURES, 'latent_unet1d_*.npz')))


def _load(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize('path', MODEL_FIXTURES, ids=os.path.basename)
def test_every_output_matches_official(path):
  data = _load(path)
  ours = convert.fixture_outputs(data)
  outputs = [k for k in data if k.startswith('out/')]
  assert outputs
  for key in outputs:
    theirs = data[key]
    mine = np.asarray(ours[key[4:]])
    assert mine.shape == theirs.shape, key
    rel = np.max(np.abs(mine - theirs)) / np.max(np.abs(theirs))
    assert rel < 1e-5, f'{os.path.basename(path)} {key}: relative error {rel:.2e}'


def test_verify_cli_passes_and_fails(tmp_path):
  path = os.path.join(FIXTURES, 'latent_unet1d_tiny_rgb16.npz')
  assert convert.main(['--verify_fixture', path]) == 0
  data = _load(path)
  data['out/eps'] = data['out/eps'] * 1.001  # an official output the model cannot reproduce
  bad = tmp_path / 'bad.npz'
  np.savez(bad, **data)
  stream = io.StringIO()
  assert not convert.verify_fixture(str(bad), stream=stream)
  assert 'eps: max_abs=' in stream.getvalue() and 'FAIL' in stream.getvalue()
  assert convert.main(['--verify_fixture', str(bad)]) == 1


def test_mismatched_checkpoint_lists_offending_keys():
  data = _load(os.path.join(FIXTURES, 'patronus_tiny_rgb16.npz'))
  sd = {k[3:]: v for k, v in data.items() if k.startswith('sd/')}
  sd.pop('first.bias')
  sd['extra.weight'] = np.zeros(3)
  sd['final.2.weight'] = np.zeros((3, 16, 5, 5), np.float32)
  import json
  model = convert.patronus_model_from_fixture_config(json.loads(str(data['config'])))
  with pytest.raises(convert.ConversionError) as e:
    convert.import_patronus(sd, model)
  msg = str(e.value)
  assert 'missing keys (1)' in msg and 'first.bias' in msg
  assert 'unexpected keys (1)' in msg and 'extra.weight' in msg
  assert 'shape mismatches (1)' in msg and 'final.2.weight' in msg


def test_latent_architecture_inferred_from_state_dict():
  for name in ('latent_unet1d_tiny_rgb16.npz', 'latent_unet1d_tiny_gray64_k5.npz'):
    data = _load(os.path.join(FIXTURES, name))
    import json
    cfg = json.loads(str(data['config']))
    sd = {k[3:]: v for k, v in data.items() if k.startswith('sd/')}
    got = convert.latent_config_from_state_dict(sd)
    assert got['base_channels'] == cfg['base_channels']
    assert list(got['channel_mults']) == cfg['channel_mults']
    assert got['num_res_blocks'] == cfg['num_res_blocks']
    assert got['timesteps'] == cfg['timesteps']


def _official_config(ds_name):
  """A minimal official config.pickle dict (the fields config_from_official reads)."""
  return {'BaseConfig': {'ds_name': ds_name},
          'ModelConfig': {'BASE_CH': 64, 'BASE_CH_MULT': (1, 2, 4, 4), 'APPLY_ATTENTION': (False, True, True, False),
                          'DROPOUT_RATE': 0.1, 'TIME_EMB_MULT': 4},
          'TrainingConfig': {'IMG_SHAPE': (3, 64, 64), 'NUM_PROTOS': 100,
                             'plb_channel_inputs': (3, 64, 128, 256, 256), 'plb_layer_filter_sizes': (3, 3, 3, 3),
                             'plb_layer_strides': (2, 2, 1, 1), 'plb_layer_paddings': (1, 1, 0, 0)}}


def test_official_config_mapping_and_overrides():
  from patronus_jax import config as config_lib
  cfg = convert.config_from_official(_official_config('celeba_hair_smile'))
  assert cfg.data.name == 'celeb_a' and cfg.data.bias.enabled and cfg.data.bias.target == 'Smiling'
  assert cfg.model.num_prototypes == 100 and tuple(cfg.model.channel_mults) == (1, 2, 4, 4)
  ffhq = convert.config_from_official(_official_config('ffhq256'))
  with pytest.raises(config_lib.ConfigError, match='data.folder.path'):
    config_lib.validate(ffhq)  # the official config does not say where the images are
  convert._set_field(ffhq, 'data.folder.path', '/data/ffhq256')  # pylint: disable=protected-access
  convert._set_field(ffhq, 'train.batch_size', '16')  # pylint: disable=protected-access
  assert ffhq.data.folder.path == '/data/ffhq256' and ffhq.train.batch_size == 16
  with pytest.raises(convert.ConversionError, match="unknown config field 'data.folders.path'"):
    convert._set_field(ffhq, 'data.folders.path', 'x')  # pylint: disable=protected-access


@pytest.mark.parametrize('content, words', [
    (b'# not an archive\n', 'is not a .npz reference fixture'),
    (bytes(range(256)) * 4, 'is not a .npz reference fixture'),
])
def test_convert_names_a_bad_file_in_one_line(tmp_path, content, words):
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(content)
  result = subprocess.run([sys.executable, '-m', 'patronus_jax.convert', f'--verify_fixture={bad}'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
  assert result.stderr.startswith(f'error: {bad} {words}')
  assert 'allow_pickle' not in result.stderr and 'Traceback' not in result.stderr


def test_convert_refuses_pickled_objects_in_an_npz(tmp_path):
  bad = tmp_path / 'objects.npz'
  np.savez(bad, a=np.array([{'x': 1}], dtype=object))
  with pytest.raises(convert.ConversionError, match='not a .npz state_dict of plain arrays'):
    convert.read_npz(str(bad), 'state_dict')


def test_official_config_that_is_not_a_pickle(tmp_path):
  bad = tmp_path / 'config.pickle'
  bad.write_bytes(b'random bytes')
  with pytest.raises(convert.ConversionError, match=f'{bad} is not a readable official config.pickle'):
    convert.read_official_config(str(bad))


def _official_files(tmp_path, name):
  """A fixture's sd/* as official checkpoint files plus a config.pickle in tmp_path: (stage-1
  fixture arrays, latent fixture arrays)."""
  import json  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  with np.load(os.path.join(FIXTURES, f'patronus_tiny_{name}.npz')) as f:
    data = {k: f[k] for k in f.files}
  with np.load(os.path.join(FIXTURES, f'latent_unet1d_tiny_{name}.npz')) as f:
    latent = {k: f[k] for k in f.files}
  cfg = json.loads(str(data['config']))
  official = {'BaseConfig': {'ds_name': 'cifar10'},
              'ModelConfig': {'BASE_CH': cfg['base_channels'], 'BASE_CH_MULT': tuple(cfg['channel_mults']),
                              'APPLY_ATTENTION': tuple(cfg['apply_attention'])},
              'TrainingConfig': {'IMG_SHAPE': tuple(cfg['img_shape']), 'NUM_PROTOS': cfg['num_prototypes'],
                                 'plb_channel_inputs': tuple(cfg['enc_channels']),
                                 'plb_layer_filter_sizes': tuple(cfg['enc_kernels']),
                                 'plb_layer_strides': tuple(cfg['enc_strides']),
                                 'plb_layer_paddings': tuple(cfg['enc_paddings'])}}
  with open(tmp_path / 'config.pickle', 'wb') as f:
    pickle.dump(official, f)
  np.savez(tmp_path / 'ckpt.npz', **{k[3:]: v for k, v in data.items() if k.startswith('sd/')})
  np.savez(tmp_path / 'latent.npz', **{k[3:]: v for k, v in latent.items() if k.startswith('sd/')})
  return data, latent


@pytest.mark.parametrize('name, with_latent', [('rgb16', True), ('gray64_k5', False)])
def test_official_checkpoint_imports_end_to_end(tmp_path, name, with_latent):
  """A fixture's sd/* as a checkpoint file plus a config.pickle -> `python -m patronus_jax.convert`
  -> the workdir, read through the normal loaders, reproduces the official outputs."""
  import jax  # pylint: disable=g-import-not-at-top
  from patronus_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from patronus_jax.tasks.patronus import loading  # pylint: disable=g-import-not-at-top
  data, latent = _official_files(tmp_path, name)
  workdir = str(tmp_path / 'imported')
  # (the gray64 latent fixture was made for another prototype count: stage 1 only there)
  latent_flag = [f'--latent_checkpoint={tmp_path / "latent.npz"}'] if with_latent else []
  assert convert.main([f'--checkpoint={tmp_path / "ckpt.npz"}', f'--official_config={tmp_path / "config.pickle"}',
                       f'--workdir={workdir}'] + latent_flag) == 0
  config = config_lib.load_workdir_config(workdir)
  model, variables, _ = loading.load_stage1_variables(config, workdir)
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  s = model.apply(variables, nhwc(data['in/x0']), method=model.encode).activations
  eps = model.apply(variables, nhwc(data['in/xt']), data['in/t'].astype(np.int32), s=s)
  expected = nhwc(data['out/eps_given_s'])
  assert np.max(np.abs(np.asarray(eps) - expected)) / np.max(np.abs(expected)) < 1e-5
  if not with_latent:
    return
  latent_model, latent_vars, stats, _ = loading.load_latent(config, workdir)
  assert not config.latent.normalize and np.all(stats['s_std'] == 1) and np.all(stats['s_mean'] == 0)
  z = latent['in/z'][:, 0, :]
  got = jax.jit(latent_model.apply)(latent_vars, z, latent['in/t'].astype(np.int32))
  want = latent['out/eps'][:, 0, :]
  assert np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)) < 1e-5



def test_an_official_latent_checkpoint_needs_the_unet1d(tmp_path):
  """--set latent.architecture=mlp with --latent_checkpoint: one error before anything is written."""
  _official_files(tmp_path, 'rgb16')
  workdir = tmp_path / 'imported'
  with pytest.raises(convert.ConversionError, match="holds a UNet1D.*'mlp'"):
    convert.import_official(str(tmp_path / 'ckpt.npz'), str(tmp_path / 'config.pickle'), str(workdir),
                            latent_checkpoint=str(tmp_path / 'latent.npz'), overrides={'latent.architecture': 'mlp'})
  assert not workdir.exists()
