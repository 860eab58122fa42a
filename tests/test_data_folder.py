"""Image folders (FFHQ, CheXpert, any folder): labels CSV, splits, corrupt and malformed files."""

import csv
import io
import logging
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from patronus_jax import data


def _write_image(path, size=(24, 20), mode='RGB', value=None, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(abs(hash(path)) % 2**32)
  channels = {'RGB': 3, 'L': 1, 'RGBA': 4}[mode]
  shape = (size[1], size[0]) + ((channels,) if channels > 1 else ())
  array = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
  Image.fromarray(array, mode=mode).save(path, format=fmt)


def _cfg(root, name='folder', **folder):
  cfg = data.data_config()
  cfg.name = name
  cfg.image_size = 16
  cfg.read_threads = 2
  cfg.folder.path = str(root)
  for key, value in folder.items():
    cfg.folder[key] = value
  return cfg


@pytest.fixture
def good_folder(tmp_path):
  root = tmp_path / 'images'
  for i in range(12):
    _write_image(str(root / f'sub{i % 2}' / f'{i:03d}.png'))
  _write_image(str(root / 'gray.jpg'), mode='L', fmt='JPEG')
  _write_image(str(root / 'alpha.png'), mode='RGBA')
  (root / 'notes.txt').write_text('not an image, not listed')
  return root


def test_plain_folder(good_folder):
  cfg = _cfg(good_folder, eval_fraction=0.25)
  info = data.get_info(cfg)
  assert info.num_examples == {'train': 10, 'test': 4}
  assert info.attribute_names == () and not info.has_captions
  arrays = data.load_arrays(cfg, 'train')
  assert arrays['image'].shape == (10, 16, 16, 3) and arrays['attributes'].shape == (10, 0)
  assert 'caption' not in arrays
  assert -1 <= arrays['image'].min() and arrays['image'].max() <= 1
  batch = next(data.make_iterator(cfg, 'train', global_batch_size=4, seed=0, process_index=0,
                                  process_count=1))
  assert batch['image'].shape == (4, 16, 16, 3) and batch['attributes'].shape == (4, 0)


def test_resize_is_antialiased_bicubic_and_center_crop(tmp_path):
  root = tmp_path / 'pattern'
  os.makedirs(root)
  checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
  Image.fromarray(checker).save(root / 'checker.png')
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, :10] = (255, 0, 0)  # left quarter red, the rest black
  Image.fromarray(wide).save(root / 'wide.png')
  cfg = _cfg(root, eval_fraction=0.0)
  cfg.channels = 1
  images = data.load_arrays(cfg, 'train')['image']  # sorted: checker, wide
  # A 1-pixel checkerboard shrunk 4x averages to mid-gray when the filter is antialiased.
  assert abs(images[0].mean()) < 0.05 and images[0].std() < 0.05
  cfg.channels = 3
  squashed = data.load_arrays(cfg, 'train')['image'][1]
  cfg.crop = 'center'
  cropped = data.load_arrays(cfg, 'train')['image'][1]
  assert squashed[:, :3, 0].mean() > 0.9  # 'none' keeps the whole width
  assert cropped[..., 0].max() < -0.9  # the centred square has no red


def test_labels_csv_and_eval_csv(tmp_path):
  root = tmp_path / 'CheXpert-v1.0-small'
  rows = []
  for split, count in (('train', 8), ('valid', 3)):
    with open(root.parent / f'{split}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['Path', 'Sex', 'Cardiomegaly', 'Caption'])
      for i in range(count):
        rel = f'CheXpert-v1.0-small/{split}/patient{i}/view1_frontal.jpg'
        _write_image(str(tmp_path / rel), size=(30, 30), mode='L', fmt='JPEG')
        value = ['1.0', '0.0', '-1.0', ''][i % 4]
        writer.writerow([rel, 'Male' if i % 2 else 'Female', value, f'x-ray {i}'])
        rows.append(value)
  cfg = _cfg(root, name='chexpert', labels_csv=str(root.parent / 'train.csv'),
             eval_labels_csv=str(root.parent / 'valid.csv'), label_columns='Sex,Cardiomegaly',
             caption_column='Caption', check_channels=1)
  cfg.channels = 1
  info = data.get_info(cfg)
  assert info.num_examples == {'train': 8, 'test': 3}
  assert info.attribute_names == ('Sex', 'Cardiomegaly')
  assert info.attribute_values == (('Female', 'Male'), ('-1', '0', '1', 'missing'))
  assert info.has_captions
  arrays = data.load_arrays(cfg, 'train')
  assert arrays['image'].shape == (8, 16, 16, 1)
  np.testing.assert_array_equal(arrays['attributes'][:, 0], np.arange(8) % 2)
  np.testing.assert_array_equal(arrays['attributes'][:4, 1], [2, 1, 0, 3])
  assert list(arrays['caption'][:2]) == ['x-ray 0', 'x-ray 1']
  assert len(data.load_arrays(cfg, 'test')['index']) == 3


def test_corrupt_files_skipped_with_count_or_error_when_strict(good_folder, caplog):
  (good_folder / 'garbage.png').write_bytes(b'this is not a png')
  png = io.BytesIO()
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png, format='PNG')
  (good_folder / 'truncated.png').write_bytes(png.getvalue()[:60])
  cfg = _cfg(good_folder, eval_fraction=0.0)
  with caplog.at_level(logging.WARNING):
    info = data.get_info(cfg)
  assert info.num_examples['train'] == 14  # the 2 bad files are skipped
  assert 'Skipping 2 unreadable image(s)' in caplog.text and 'garbage.png' in caplog.text
  arrays = data.load_arrays(cfg, 'train')
  assert len(arrays['image']) == 14 and np.all(arrays['image'].std(axis=(1, 2, 3)) > 0)
  cfg.strict = True
  with pytest.raises(data.DataError) as error:
    data.get_info(cfg)
  message = str(error.value)
  assert '2 unreadable image(s)' in message and 'garbage.png' in message
  assert 'truncated.png' in message and 'strict' in message


def test_file_failing_only_at_decode_time(tmp_path, caplog):
  root = tmp_path / 'jpgs'
  for i in range(5):
    _write_image(str(root / f'{i}.jpg'), size=(64, 64), fmt='JPEG')
  jpeg = (root / '2.jpg').read_bytes()
  (root / '2.jpg').write_bytes(jpeg[:len(jpeg) // 2])  # header fine, data truncated
  cfg = _cfg(root, eval_fraction=0.0)
  with caplog.at_level(logging.WARNING):
    arrays = data.load_arrays(cfg, 'train')
  assert list(arrays['index']) == [0, 1, 3, 4]  # dropped, never a blank image
  assert '2.jpg' in caplog.text and 'skipped so far' in caplog.text
  cfg.strict = True
  with pytest.raises(data.DataError, match=r'cannot decode image .*2\.jpg'):
    data.load_arrays(cfg, 'train')


def test_wrong_shape_names_file_and_expected_shape(good_folder):
  _write_image(str(good_folder / 'big.png'), size=(40, 40))
  cfg = _cfg(good_folder, check_size=40, eval_fraction=0.0)
  with pytest.raises(data.DataError) as error:
    data.get_info(cfg)
  message = str(error.value)
  assert 'alpha.png is 20x24 with 4 channel(s)' in message and 'expected 40x40xC' in message
  # RGBA has 4 channels where 3 are required.
  os.remove(good_folder / 'gray.jpg')
  for i in range(12):
    _write_image(str(good_folder / f'sub{i % 2}' / f'{i:03d}.png'), size=(40, 40))
  cfg = _cfg(good_folder, check_channels=3, eval_fraction=0.0)
  with pytest.raises(data.DataError, match=r'alpha\.png is 20x24 with 4 channel.*expected HxWx3'):
    data.get_info(cfg)


def test_missing_folder_message(tmp_path):
  cfg = _cfg(tmp_path / 'ffhq', name='ffhq')
  with pytest.raises(data.DataError) as error:
    data.get_info(cfg)
  message = str(error.value)
  assert str(tmp_path / 'ffhq') in message and 'config.data.folder.path' in message
  assert 'ffhq-dataset' in message
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(data.DataError, match='no images found'):
    data.get_info(_cfg(tmp_path / 'empty'))


@pytest.mark.parametrize('row, found', [('sub0/000.png', 1), ('sub0/000.png,a,extra', 3)])
def test_ragged_labels_csv_names_the_line(good_folder, tmp_path, row, found):
  labels = tmp_path / 'labels.csv'
  labels.write_text('path,label\nsub0/001.png,a\nsub1/002.png,b\n' + row + '\n')
  with pytest.raises(data.DataError, match=rf'line 4 has {found} field\(s\), the header has 2'):
    data.get_info(_cfg(good_folder, labels_csv=str(labels)))


def test_images_not_in_the_labels_csv_are_counted(good_folder, tmp_path, caplog):
  labels = tmp_path / 'labels.csv'
  labels.write_text('path,label\nsub0/000.png,a\nsub1/001.png,b\nsub0/002.png,a\nsub1/003.png,b\n')
  with caplog.at_level(logging.WARNING):
    info = data.get_info(_cfg(good_folder, labels_csv=str(labels), eval_fraction=0.25))
  assert sum(info.num_examples.values()) == 4
  # 14 image files on disk (12 PNGs, a JPEG, an RGBA PNG), 4 listed
  assert any('10 image(s) under' in r.getMessage() and 'not listed in the labels CSV' in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_relative_labels_csv_is_the_data_folders_not_the_working_directorys(good_folder, tmp_path, monkeypatch):
  (good_folder / 'labels.csv').write_text('path,label\nsub0/000.png,a\nsub1/001.png,b\nsub0/002.png,a\n'
                                          'sub1/003.png,b\n')
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  (elsewhere / 'labels.csv').write_text('path,label\nsub0/000.png,x\nsub1/001.png,y\nsub0/002.png,z\n')
  monkeypatch.chdir(elsewhere)  # another dataset's labels.csv in the current directory
  info = data.get_info(_cfg(good_folder, labels_csv='labels.csv', eval_fraction=0.25))
  assert sum(info.num_examples.values()) == 4
  assert info.attribute_values == (('a', 'b'),)


def _png_with_undecodable_pixels(path, size=16):
  """A PNG whose header and chunk checksums are valid but whose pixel data is not zlib data."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)

  header = struct.pack('>IIBBBBB', size, size, 8, 2, 0, 0, 0)
  garbage = bytes((i * 37 + 11) % 256 for i in range(200))
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', garbage) + chunk(b'IEND', b''))


def test_folder_of_undecodable_images_stops_instead_of_skipping_forever(tmp_path):
  root = tmp_path / 'broken'
  root.mkdir()
  for i in range(6):
    _png_with_undecodable_pixels(str(root / f'{i}.png'))
  cfg = _cfg(root, eval_fraction=0.0)
  assert data.get_info(cfg).num_examples['train'] == 6  # headers and checksums pass the index check
  it = data.make_iterator(cfg, 'train', global_batch_size=2, seed=0, num_epochs=None, process_index=0,
                          process_count=1)
  outcome = []

  def first_batch():
    try:
      next(it)
    except Exception as e:  # pylint: disable=broad-except
      outcome.append(e)

  reader = threading.Thread(target=first_batch, daemon=True)
  reader.start()
  reader.join(timeout=120)
  assert not reader.is_alive(), 'the iterator kept skipping undecodable images instead of stopping'
  assert len(outcome) == 1 and isinstance(outcome[0], data.DataError), outcome
  assert re.search(r'none of the last \d+ images of folder could be decoded \(the split has 6\)', str(outcome[0]))
  assert str(root) in str(outcome[0])


def test_a_labels_csv_naming_no_readable_file_stops_with_the_reason(good_folder, tmp_path):
  # paths relative to another directory: every row is missing, which used to end in 'no examples' later
  labels = tmp_path / 'labels.csv'
  labels.write_text('path,label\nimgs/sub0/000.png,a\nimgs/sub1/001.png,b\nimgs/sub0/002.png,a\n')
  with pytest.raises(data.DataError) as error:
    data.get_info(_cfg(good_folder, labels_csv=str(labels)))
  message = str(error.value)
  assert message.startswith('none of the 3 image(s) listed in config.data.folder.labels_csv'), message
  assert f'{good_folder / "imgs" / "sub0" / "000.png"} (file not found)' in message


def test_a_labels_csv_that_is_not_utf8_is_named(good_folder, tmp_path):
  labels = tmp_path / 'labels.csv'
  labels.write_bytes('path,label\nsub0/000.png,café\nsub1/001.png,thé\n'.encode('latin-1'))
  with pytest.raises(data.DataError, match=rf'^{re.escape(str(labels))} \(config.data.folder.labels_csv\) is not UTF-8 '
                                           r'text \(byte 0xe9: invalid continuation byte\); save it as UTF-8$'):
    data.get_info(_cfg(good_folder, labels_csv=str(labels)))


def test_an_image_listed_twice_in_the_labels_csv_is_named(good_folder, tmp_path):
  # the second row (here with another label) was used as a second example, silently
  labels = tmp_path / 'labels.csv'
  labels.write_text('path,label\nsub0/000.png,a\nsub1/001.png,b\n./sub0/000.png,b\n')
  with pytest.raises(data.DataError, match=r"lists './sub0/000.png' twice \(lines 2 and 4\); list each image once"):
    data.get_info(_cfg(good_folder, labels_csv=str(labels)))


def test_a_labels_csv_with_a_byte_order_mark_reads_its_first_column(good_folder, tmp_path):
  # a spreadsheet's "CSV UTF-8" export: the mark used to become part of the column name 'path'
  labels = tmp_path / 'labels.csv'
  labels.write_bytes('path,label\nsub0/000.png,a\nsub1/001.png,b\n'.encode('utf-8-sig'))
  info = data.get_info(_cfg(good_folder, labels_csv=str(labels), path_column='path'))
  assert info.attribute_names == ('label',) and info.attribute_values == (('a', 'b'),)


def test_a_missing_labels_csv_names_where_it_was_looked_for(good_folder, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(data.DataError, match=rf"^config.data.folder.labels_csv='train.csv' is neither in "
                                           rf"config.data.folder.path \({re.escape(str(good_folder))}\) nor in the "
                                           r'current directory'):
    data.get_info(_cfg(good_folder, labels_csv='train.csv'))


def test_an_image_in_both_the_training_and_the_eval_csv_is_named(good_folder, tmp_path):
  # the held-out metrics would be measured on training images, silently
  (tmp_path / 'train.csv').write_text('path,label\nsub0/000.png,a\nsub1/001.png,b\nsub0/002.png,a\n')
  (tmp_path / 'test.csv').write_text('path,label\nsub1/003.png,b\n./sub1/001.png,b\n')
  with pytest.raises(data.DataError, match=r"^1 image\(s\) are listed in both config.data.folder.labels_csv .* "
                                           r"e.g. './sub1/001.png'; the held-out split must not share images"):
    data.get_info(_cfg(good_folder, labels_csv=str(tmp_path / 'train.csv'),
                       eval_labels_csv=str(tmp_path / 'test.csv')))


def test_images_smaller_than_the_image_size_are_counted(good_folder, caplog):
  # they were upsampled silently (a 4x4 image at image_size 16 is a blur of 16 pixels)
  _write_image(str(good_folder / 'tiny' / 'a.png'), size=(4, 6))
  _write_image(str(good_folder / 'tiny' / 'b.png'), size=(12, 30))
  with caplog.at_level(logging.WARNING):
    data.get_info(_cfg(good_folder))
  messages = [r.getMessage() for r in caplog.records if 'upsampled' in r.getMessage()]
  assert len(messages) == 1, [r.getMessage() for r in caplog.records]
  assert messages[0].startswith(f'2 image(s) in {good_folder} have a side below config.data.image_size=16')
  assert f"the smallest {good_folder / 'tiny' / 'a.png'} (4 pixels)" in messages[0]
