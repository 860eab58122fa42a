"""Real TFDS datasets through the same pipeline, driven by `tfds.testing.mock_data`, and the
messages for datasets that are not prepared."""

import numpy as np
import pytest

from patronus_jax import data
from patronus_jax.data import sources
from patronus_jax.data.tfds_compat import tfds

NUM = 24


def _cfg(name, **changes):
  cfg = data.data_config()
  cfg.name = name
  cfg.read_threads = 2
  for key, value in changes.items():
    cfg[key] = value
  return cfg


def _check_batch(batch, size, channels, num_attributes):
  assert batch['image'].dtype == np.float32
  assert batch['image'].shape == (8, size, size, channels)
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['image'].std() > 0.01  # not a blank image
  assert batch['attributes'].dtype == np.int32
  assert batch['attributes'].shape == (8, num_attributes)
  assert batch['index'].dtype == np.int64 and np.all((0 <= batch['index']) & (batch['index'] < NUM))
  assert all(isinstance(c, str) and c for c in batch['caption'])


def test_celeb_a_end_to_end():
  cfg = _cfg('celeb_a', image_size=16, eval_split='validation')
  with tfds.testing.mock_data(num_examples=NUM):
    info = data.get_info(cfg)
    assert len(info.attribute_names) == 40 and info.attribute_names[31] == 'Smiling'
    assert all(v == ('no', 'yes') for v in info.attribute_values)
    assert info.num_examples == {'train': NUM, 'validation': NUM}
    assert info.image_shape == (16, 16, 3) and info.has_captions
    batch = next(data.make_iterator(cfg, 'train', global_batch_size=16, seed=0,
                                    process_index=1, process_count=2))
    _check_batch(batch, 16, 3, 40)
    assert set(np.unique(batch['attributes'])) <= {0, 1}
    arrays = data.load_arrays(cfg, 'validation', max_examples=5)
  assert arrays['image'].shape == (5, 16, 16, 3)
  # Captions are built from the attributes.
  for attributes, caption in zip(arrays['attributes'], arrays['caption']):
    values = dict(zip(sources.CELEBA_ATTRIBUTES, attributes))
    assert caption.startswith('a smiling' if values['Smiling'] else 'a ')
    assert (' man' in caption) == bool(values['Male'])
    assert ('eyeglasses' in caption) == bool(values['Eyeglasses'])


def test_cifar10_end_to_end():
  cfg = _cfg('cifar10')
  with tfds.testing.mock_data(num_examples=NUM):
    info = data.get_info(cfg)
    assert info.attribute_names == ('label',) and len(info.attribute_values[0]) == 10
    batch = next(data.make_iterator(cfg, 'train', global_batch_size=8, seed=1,
                                    process_index=0, process_count=1))
  _check_batch(batch, 32, 3, 1)
  for label, caption in zip(batch['attributes'][:, 0], batch['caption']):
    assert caption == f'a photo of a {info.attribute_values[0][label]}'


def test_mnist_grayscale_and_rgb():
  with tfds.testing.mock_data(num_examples=NUM):
    gray = next(data.make_iterator(_cfg('mnist', channels=1), 'test', global_batch_size=8,
                                   seed=0, process_index=0, process_count=1))
    rgb = next(data.make_iterator(_cfg('fashion_mnist'), 'train', global_batch_size=8,
                                  seed=0, process_index=0, process_count=1))
  _check_batch(gray, 32, 1, 1)  # 28x28 resized to 32x32
  _check_batch(rgb, 32, 3, 1)
  np.testing.assert_array_equal(rgb['image'][..., 0], rgb['image'][..., 2])  # gray source


def test_celeb_a_bias_from_config():
  cfg = _cfg('celeb_a', image_size=8)
  cfg.bias.enabled = True
  cfg.bias.attribute = 'Blond_Hair|Brown_Hair|Black_Hair'
  cfg.bias.target = 'Smiling'
  cfg.bias.mapping = 'Blond_Hair:yes,Brown_Hair:yes,Black_Hair:no'
  cfg.bias.strength = 1.0
  with tfds.testing.mock_data(num_examples=200):
    info = data.get_info(cfg)
    arrays = data.load_arrays(cfg, 'train')
  a = {n: arrays['attributes'][:, sources.CELEBA_ATTRIBUTES.index(n)]
       for n in ('Blond_Hair', 'Brown_Hair', 'Black_Hair', 'Smiling')}
  assert len(arrays['index']) == info.num_examples['train'] == info.bias_report['kept'] > 0
  assert np.all(a['Blond_Hair'] + a['Brown_Hair'] + a['Black_Hair'] == 1)
  np.testing.assert_array_equal(a['Smiling'], 1 - a['Black_Hair'])
  assert info.num_examples['test'] == 200


def test_missing_dataset_message(tmp_path):
  cfg = _cfg('cifar10', data_dir=str(tmp_path / 'empty'))
  with pytest.raises(data.DataError) as error:
    data.get_info(cfg)
  message = str(error.value)
  assert "'cifar10'" in message and str(tmp_path / 'empty') in message
  assert 'tfds build cifar10' in message and 'array_record' in message


def test_missing_celeb_a_explains_the_manual_download(tmp_path):
  cfg = _cfg('celeb_a', data_dir=str(tmp_path))
  with pytest.raises(data.DataError) as error:
    data.make_iterator(cfg, 'train', global_batch_size=8, seed=0, process_index=0,
                       process_count=1)
  message = str(error.value)
  assert "'celeb_a'" in message and str(tmp_path) in message
  for needed in ('img_align_celeba.zip', 'list_attr_celeba.txt', 'list_eval_partition.txt',
                 f'{tmp_path}/downloads/manual', 'tfds build celeb_a'):
    assert needed in message
