"""Parity with the official PyTorch code on every reference fixture, and import errors."""

import glob
import io
import os

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
