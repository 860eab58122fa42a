"""The shapes dataset end to end: offline TFDS preparation, labels vs pixels, grain pipelines.

One small shapes dataset (300 train / 60 test, 32x32) is prepared per session in a temporary
TFDS data_dir; every test reads it through the public API.
"""

import json
import os
import socket

import numpy as np
import pytest

from patronus_jax import data
from patronus_jax.data import shapes

NUM_TRAIN, NUM_TEST = 300, 60


def _shapes_cfg(data_dir, num_train=NUM_TRAIN, num_test=NUM_TEST):
  cfg = data.data_config()
  cfg.data_dir = str(data_dir)
  cfg.shapes.num_train = num_train
  cfg.shapes.num_test = num_test
  cfg.read_threads = 2
  return cfg


@pytest.fixture(scope='session')
def shapes_cfg(tmp_path_factory):
  cfg = _shapes_cfg(tmp_path_factory.mktemp('tfds'))
  data.get_info(cfg)  # prepares it
  return cfg


def _collect(iterator, num_batches=None):
  batches = []
  for i, batch in enumerate(iterator):
    batches.append(batch)
    if num_batches is not None and i + 1 == num_batches:
      break
  return batches


# ----------------------------------------------------------------------------- preparation


def _no_network(*args, **kwargs):
  raise OSError('the network is disabled in this test')


def _array_record_files(cfg):
  root = os.path.join(cfg.data_dir, 'patronus_shapes')
  found = {}
  for directory, _, files in os.walk(root):
    for file in files:
      if '.array_record' in file:
        with open(os.path.join(directory, file), 'rb') as f:
          found[file] = f.read()
  return found


def test_shapes_prepare_offline_and_deterministic(tmp_path, monkeypatch):
  monkeypatch.setattr(socket.socket, 'connect', _no_network)
  cfg_a = _shapes_cfg(tmp_path / 'a', 120, 20)
  cfg_b = _shapes_cfg(tmp_path / 'b', 120, 20)
  info = data.get_info(cfg_a)
  data.get_info(cfg_b)
  assert info.num_examples == {'train': 120, 'test': 20}
  files_a, files_b = _array_record_files(cfg_a), _array_record_files(cfg_b)
  assert sorted(files_a) == ['patronus_shapes-test.array_record-00000-of-00001',
                             'patronus_shapes-train.array_record-00000-of-00001']
  assert files_a == files_b  # byte-identical files
  a, b = data.load_arrays(cfg_a, 'train'), data.load_arrays(cfg_b, 'train')
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['attributes'], b['attributes'])
  # Stored record i is factor row i: labels without pixels are the stored labels.
  np.testing.assert_array_equal(a['attributes'], shapes.sample_factors(120, 0, 'train')['labels'])
  # Another seed gives other data.
  cfg_c = _shapes_cfg(tmp_path / 'a', 120, 20)
  cfg_c.shapes.seed = 1
  c = data.load_arrays(cfg_c, 'train', max_examples=20)
  assert not np.array_equal(c['attributes'], a['attributes'][:20])


def test_get_info(shapes_cfg):
  info = data.get_info(shapes_cfg)
  assert info.name == 'patronus_shapes'
  assert info.image_shape == (32, 32, 3)
  assert info.attribute_names == ('background', 'shape', 'color', 'size', 'position', 'stripes')
  assert [len(v) for v in info.attribute_values] == [3, 3, 4, 2, 4, 2]
  assert info.attribute_values[2] == ('red', 'green', 'blue', 'yellow')
  assert info.num_examples == {'train': NUM_TRAIN, 'test': NUM_TEST}
  assert info.has_captions
  assert info.bias_report is None


def _to_uint8(images):
  return np.round((images + 1.0) * 127.5).astype(np.uint8)


def test_labels_match_pixels(shapes_cfg):
  arrays = data.load_arrays(shapes_cfg, 'test')
  images, labels = _to_uint8(arrays['image']), arrays['attributes']
  assert images.shape == (NUM_TEST, 32, 32, 3)
  np.testing.assert_array_equal(arrays['index'], np.arange(NUM_TEST))
  fills, bottom_heavy = {0: [], 1: [], 2: []}, {0: [], 1: [], 2: []}
  for image, (bg, shape, color, size, position, striped), caption in zip(
      images, labels, arrays['caption']):
    pixels = image.reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    # Background: the most frequent colour is the labelled background colour.
    np.testing.assert_array_equal(colours[np.argmax(counts)], shapes.BACKGROUND_RGB[bg])
    obj = np.any(image != shapes.BACKGROUND_RGB[bg], axis=-1)
    obj_colours = {tuple(c) for c in image[obj]}
    # Object colour: plain rows are exactly the labelled colour; nothing else but its stripe shade.
    assert tuple(shapes.COLOR_RGB[color]) in obj_colours
    assert obj_colours <= {tuple(shapes.COLOR_RGB[color]), tuple(shapes.STRIPE_RGB[color])}
    # Stripes present iff labelled.
    assert (tuple(shapes.STRIPE_RGB[color]) in obj_colours) == bool(striped)
    # Position: the object's centroid lies in the labelled quadrant.
    ys, xs = np.nonzero(obj)
    assert (xs.mean() + 0.5 > 16) == (position in (1, 3))
    assert (ys.mean() + 0.5 > 16) == (position in (2, 3))
    # Size: area fraction against a per-shape threshold between small and large.
    area = obj.mean()
    assert (area > (0.08 if shape == 2 else 0.12)) == bool(size)
    fills[int(shape)].append(obj.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    middle = (ys.min() + ys.max()) / 2
    bottom_heavy[int(shape)].append((ys > middle).sum() / (ys < middle).sum())
    assert caption == shapes.caption((bg, shape, color, size, position, striped))
  # Shape: the square fills its bounding box, the circle about pi/4 of it, and only the
  # (apex-up) triangle has many more pixels in its lower half than in its upper half.
  assert all(0.6 < f < 0.9 for f in fills[0]) and all(f == 1.0 for f in fills[1])
  assert all(f < 0.7 for f in fills[2])
  assert all(0.6 < r < 1.6 for r in bottom_heavy[0] + bottom_heavy[1])
  assert all(r > 1.8 for r in bottom_heavy[2])
  assert all(len(v) > 5 for v in fills.values())


def test_render_64_and_stripe_width():
  factors = shapes.sample_factors(8, 3)
  small, large = shapes.render(factors, 32), shapes.render(factors, 64)
  assert large.shape == (8, 64, 64, 3) and shapes.stripe_width(64) == 4
  # The same scene at twice the resolution: the object masks agree up to edge pixels.
  for s, l, bg in zip(small, large, factors['labels'][:, 0]):
    mask_s = np.any(s != shapes.BACKGROUND_RGB[bg], -1)
    mask_l = np.any(l != shapes.BACKGROUND_RGB[bg], -1).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert np.mean(mask_s != (mask_l >= 0.5)) < 0.03
    assert mask_s.sum() > 40


# ----------------------------------------------------------------------------- batches


def test_batches(shapes_cfg):
  batch = next(data.make_iterator(shapes_cfg, 'train', global_batch_size=16, seed=0,
                                  process_index=0, process_count=1))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (16, 32, 32, 3)
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['image'].min() < -0.5 and batch['image'].max() > 0.5
  assert batch['attributes'].dtype == np.int32 and batch['attributes'].shape == (16, 6)
  assert batch['index'].dtype == np.int64 and len(set(batch['index'])) == 16
  assert batch['caption'].shape == (16,) and all(isinstance(c, str) for c in batch['caption'])
  arrays = data.load_arrays(shapes_cfg, 'train')
  np.testing.assert_array_equal(batch['attributes'], arrays['attributes'][batch['index']])
  np.testing.assert_array_equal(batch['image'], arrays['image'][batch['index']])


def test_resize_grayscale_and_crop(shapes_cfg):
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.shapes.resolution = 32  # the same prepared data, resized on the fly
  cfg.image_size, cfg.channels = 16, 1
  arrays = data.load_arrays(cfg, 'test', max_examples=5)
  assert arrays['image'].shape == (5, 16, 16, 1)
  assert data.get_info(cfg).image_shape == (16, 16, 1)
  full = data.load_arrays(shapes_cfg, 'test', max_examples=5)['image']
  # Grayscale of the mean colour is close to the mean of the grayscale (a linear map).
  luma = (_to_uint8(full).astype(np.float64) @ [0.299, 0.587, 0.114]) / 127.5 - 1.0
  np.testing.assert_allclose(arrays['image'].mean(axis=(1, 2, 3)), luma.mean(axis=(1, 2)),
                             atol=0.02)


def test_two_processes_get_disjoint_shards_covering_the_epoch(shapes_cfg):
  kwargs = dict(global_batch_size=10, seed=3, num_epochs=1)
  single = _collect(data.make_iterator(shapes_cfg, 'train', process_index=0, process_count=1,
                                       **kwargs))
  hosts = [_collect(data.make_iterator(shapes_cfg, 'train', process_index=p, process_count=2,
                                       **kwargs)) for p in range(2)]
  assert len(single) == NUM_TRAIN // 10
  assert [len(h) for h in hosts] == [NUM_TRAIN // 10] * 2
  assert all(b['image'].shape[0] == 5 for h in hosts for b in h)
  seen = [np.concatenate([b['index'] for b in h]) for h in hosts]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(NUM_TRAIN))
  # The union of the local batches is the global batch a single process would read.
  for j, batch in enumerate(single):
    union = set(hosts[0][j]['index']) | set(hosts[1][j]['index'])
    assert union == set(batch['index'])


def test_epochs_are_reshuffled_and_complete(shapes_cfg):
  batches = _collect(data.make_iterator(shapes_cfg, 'test', global_batch_size=12, seed=0,
                                        num_epochs=2, process_index=0, process_count=1))
  order = np.concatenate([b['index'] for b in batches])
  assert len(order) == 2 * NUM_TEST
  assert sorted(order[:NUM_TEST]) == sorted(order[NUM_TEST:]) == list(range(NUM_TEST))
  assert not np.array_equal(order[:NUM_TEST], order[NUM_TEST:])
  unshuffled = _collect(data.make_iterator(shapes_cfg, 'test', global_batch_size=12, seed=0,
                                           num_epochs=1, shuffle=False, process_index=0,
                                           process_count=1))
  assert list(np.concatenate([b['index'] for b in unshuffled])) == list(range(NUM_TEST))


def test_remainder(shapes_cfg):
  kwargs = dict(global_batch_size=25, seed=0, num_epochs=1, process_index=0, process_count=1)
  dropped = _collect(data.make_iterator(shapes_cfg, 'test', **kwargs))
  kept = _collect(data.make_iterator(shapes_cfg, 'test', drop_remainder=False, **kwargs))
  assert [len(b['index']) for b in dropped] == [25, 25]
  assert [len(b['index']) for b in kept] == [25, 25, 10]


def test_resume_from_saved_state(shapes_cfg):
  kwargs = dict(global_batch_size=8, seed=7, process_index=1, process_count=2)
  iterator = data.make_iterator(shapes_cfg, 'train', **kwargs)
  _collect(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # saved with a checkpoint
  expected = _collect(iterator, 4)
  resumed = data.make_iterator(shapes_cfg, 'train', **kwargs)
  resumed.set_state(state)
  got = _collect(resumed, 4)
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e['index'], g['index'])
    np.testing.assert_array_equal(e['image'], g['image'])
    assert list(e['caption']) == list(g['caption'])


def test_infinite_stream_crosses_epochs(shapes_cfg):
  batches = _collect(data.make_iterator(shapes_cfg, 'test', global_batch_size=16, seed=0,
                                        process_index=0, process_count=1), 10)
  assert len(batches) == 10  # 160 examples from a 60-example split


def test_batch_size_must_divide_over_processes(shapes_cfg):
  with pytest.raises(ValueError, match='multiple of process_count=4'):
    data.make_iterator(shapes_cfg, 'train', global_batch_size=10, seed=0, process_index=0,
                       process_count=4)


def test_unknown_split(shapes_cfg):
  with pytest.raises(data.DataError, match="no split 'validation'.*num_train"):
    data.make_iterator(shapes_cfg, 'validation', global_batch_size=8, seed=0, process_index=0,
                       process_count=1)


def test_load_arrays_prefix(shapes_cfg):
  few = data.load_arrays(shapes_cfg, 'train', max_examples=7)
  assert sorted(few) == ['attributes', 'caption', 'image', 'index']
  np.testing.assert_array_equal(few['index'], np.arange(7))
  assert few['image'].shape == (7, 32, 32, 3)


def test_bias_through_the_pipeline(shapes_cfg):
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.bias.enabled = True
  cfg.bias.attribute, cfg.bias.target = 'color', 'shape'
  cfg.bias.mapping, cfg.bias.strength = 'red:circle,green:square,blue:triangle,yellow:circle', 1.0
  info = data.get_info(cfg)
  report = info.bias_report
  assert report['achieved_strength'] == 1.0 and report['kept'] == info.num_examples['train']
  assert 0 < info.num_examples['train'] < NUM_TRAIN
  assert info.num_examples['test'] == NUM_TEST  # the eval split is left unbiased
  json.dumps(report)
  arrays = data.load_arrays(cfg, 'train')
  tied = np.array([0, 1, 2, 0])
  np.testing.assert_array_equal(arrays['attributes'][:, 1], tied[arrays['attributes'][:, 2]])
  # Indices still point into the full split, without duplicates.
  assert len(set(arrays['index'])) == len(arrays['index'])
  full = data.load_arrays(shapes_cfg, 'train')
  np.testing.assert_array_equal(full['image'][arrays['index']], arrays['image'])
  batches = _collect(data.make_iterator(cfg, 'train', global_batch_size=10, seed=0, num_epochs=1,
                                        process_index=0, process_count=1))
  assert set(np.concatenate([b['index'] for b in batches])) <= set(arrays['index'])


def test_planted_shapes_report(tmp_path):
  cfg = _shapes_cfg(tmp_path, 400, 0)
  cfg.shapes.planted_strength = 0.9
  info = data.get_info(cfg)
  assert info.num_examples == {'train': 400}
  report = info.bias_report
  assert report['planted'] and report['requested_strength'] == 0.9
  assert abs(report['achieved_strength'] - 0.9) < 0.05
  assert report['cramers_v'] > 0.6
  labels = data.load_arrays(cfg, 'train')['attributes']
  tied = np.array([0, 1, 2, 0])
  assert report['achieved_strength'] == np.mean(labels[:, 1] == tied[labels[:, 2]])


def test_worker_processes_give_the_same_batches(shapes_cfg):
  kwargs = dict(global_batch_size=8, seed=5, process_index=0, process_count=1)
  expected = _collect(data.make_iterator(shapes_cfg, 'train', **kwargs), 4)
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.num_workers = 1
  iterator = data.make_iterator(cfg, 'train', **kwargs)
  try:
    got = _collect(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))
    got += _collect(iterator, 2)
  finally:
    iterator.close()
  assert state
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e['index'], g['index'])
    np.testing.assert_array_equal(e['image'], g['image'])


def test_default_settings_use_the_registered_builder_config():
  from patronus_jax.data import shapes_builder  # pylint: disable=g-import-not-at-top
  config = shapes_builder.builder_config_from(data.data_config())
  assert config is shapes_builder.PatronusShapes.BUILDER_CONFIGS[0]
  assert config.name == 'r32_train20000_test2000_seed0'
  cfg = data.data_config()
  cfg.image_size, cfg.shapes.planted_strength = 64, 0.9
  assert shapes_builder.builder_config_from(cfg).name == (
      'r64_train20000_test2000_seed0_planted0.9_rc-gs-bt-yc')


def test_unwritable_data_dir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('a file where a directory should be')
  with pytest.raises(data.DataError, match='cannot prepare the shapes dataset.*writable'):
    data.get_info(_shapes_cfg(blocker / 'tfds', 10, 0))
