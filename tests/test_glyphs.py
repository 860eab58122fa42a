"""The glyphs dataset (experiments/make_glyphs.py) and configs/glyphs.py reading it through the folder loader."""

import csv
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from patronus_jax import config as config_lib
from patronus_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'glyphs.py')


def _load_script():
  spec = importlib.util.spec_from_file_location('make_glyphs', os.path.join(ROOT, 'experiments', 'make_glyphs.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mg = _load_script()


def _fonts_missing() -> str:
  try:
    mg.find_fonts()
  except mg.FontsMissing as e:
    return str(e)
  return ''


pytestmark = pytest.mark.skipif(bool(_fonts_missing()), reason=_fonts_missing() or 'fonts found')


def _read_csv(path):
  with open(path, newline='') as f:
    reader = csv.reader(f)
    return next(reader), list(reader)


@pytest.fixture(scope='module')
def glyphs_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('glyphs')
  assert mg.main([str(out), '--num_train=40', '--num_test=10', '--size=32', '--seed=3']) == 0
  return out


def test_csvs_and_images(glyphs_dir):
  for split, num in (('train', 40), ('test', 10)):
    header, rows = _read_csv(glyphs_dir / f'{split}.csv')
    assert tuple(header) == ('path', 'glyph', 'font_style', 'weight', 'ink', 'paper', 'rotation', 'scale')
    assert len(rows) == num
    assert [r[0] for r in rows] == [f'images/{split}_{i:05d}.png' for i in range(num)]
    for k, name in enumerate(header[1:], start=1):
      values = {r[k] for r in rows}
      assert values <= set(mg.FACTORS[name]), name
      if split == 'train':
        assert len(values) > 1, f'{name} does not vary: {values}'
    for r in rows[:5]:
      with Image.open(glyphs_dir / r[0]) as image:
        assert image.size == (32, 32) and image.mode == 'RGB'
  assert len(os.listdir(glyphs_dir / 'images')) == 50


def test_images_show_their_factors(glyphs_dir):
  """Paper colour fills the corners, ink colour is the pixel farthest from it, large glyphs cover more."""
  _, rows = _read_csv(glyphs_dir / 'train.csv')
  coverage = {'small': [], 'large': []}
  for path, _, _, _, ink, paper, _, scale in rows:
    image = np.asarray(Image.open(glyphs_dir / path), np.float32)
    np.testing.assert_allclose(image[0, 0], mg.PAPERS[paper], atol=1)
    distance = np.abs(image - np.asarray(mg.PAPERS[paper], np.float32)).sum(-1)
    darkest = image.reshape(-1, 3)[np.argmax(distance)]
    np.testing.assert_allclose(darkest, mg.INKS[ink], atol=40)
    coverage[scale].append((distance > 60).mean())
  assert min(map(len, coverage.values())) > 0
  assert np.mean(coverage['large']) > 1.8 * np.mean(coverage['small'])


def test_deterministic_for_a_seed(glyphs_dir, tmp_path):
  mg.make_glyphs(str(tmp_path / 'a'), num_train=40, num_test=10, size=32, seed=3)
  for name in ('train.csv', 'test.csv'):
    assert (tmp_path / 'a' / name).read_bytes() == (glyphs_dir / name).read_bytes()
  for name in ('train_00000.png', 'train_00039.png', 'test_00009.png'):
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'a' / 'images' / name)),
                                  np.asarray(Image.open(glyphs_dir / 'images' / name)))
  mg.make_glyphs(str(tmp_path / 'b'), num_train=40, num_test=10, size=32, seed=4)
  assert (tmp_path / 'b' / 'train.csv').read_bytes() != (glyphs_dir / 'train.csv').read_bytes()
  # The test split does not depend on num_train; a smaller rerun removes the extra images.
  mg.make_glyphs(str(tmp_path / 'a'), num_train=7, num_test=10, size=32, seed=3)
  assert (tmp_path / 'a' / 'test.csv').read_bytes() == (glyphs_dir / 'test.csv').read_bytes()
  assert len(os.listdir(tmp_path / 'a' / 'images')) == 17


def test_bad_arguments():
  assert mg.main([]) == 2
  assert mg.main(['/tmp/x', '--num_train=0']) == 1


def test_config_reads_the_folder(glyphs_dir):
  config = config_lib.load(CONFIG, {'data.folder.path': str(glyphs_dir)})
  assert config.data.name == 'folder' and config.data.image_size == 32 and config.data.channels == 3
  info = data.get_info(config.data)
  assert info.attribute_names == tuple(mg.FACTORS)
  _, rows = _read_csv(glyphs_dir / 'train.csv')
  _, test_rows = _read_csv(glyphs_dir / 'test.csv')
  for k, values in enumerate(info.attribute_values):  # the values present, sorted
    assert values == tuple(sorted({r[k + 1] for r in rows + test_rows}))
  assert info.num_examples == {'train': 40, 'test': 10}
  assert info.image_shape == (32, 32, 3) and not info.has_captions
  arrays = data.load_arrays(config.data, 'test', max_examples=4)
  assert arrays['image'].shape == (4, 32, 32, 3) and arrays['attributes'].shape == (4, 7)
  assert -1.0 <= arrays['image'].min() < 0 < arrays['image'].max() <= 1.0
  glyph = info.attribute_names.index('glyph')
  assert [info.attribute_values[glyph][a] for a in arrays['attributes'][:, glyph]] == [r[1] for r in test_rows[:4]]


def test_config_variants():
  quickstart = config_lib.load(os.path.join(ROOT, 'configs', 'quickstart.py'))
  config = config_lib.load(CONFIG)
  assert config.data.folder.path == '/tmp/glyphs' and not config.data.bias.enabled
  for section in ('model', 'train', 'diffusion', 'latent', 'sample', 'interpret', 'evaluate'):
    assert config[section].to_dict() == quickstart[section].to_dict(), section
  tiny = config_lib.load(CONFIG + ':tiny')
  assert tiny.train.to_dict() == config_lib.load(os.path.join(ROOT, 'configs', 'quickstart.py:tiny')).train.to_dict()
  assert tiny.data.name == 'folder'
  paper = config_lib.load(CONFIG + ':paper')  # the baseline: quickstart's ':paper' model on glyphs
  assert paper.model.to_dict() == config_lib.load(os.path.join(ROOT, 'configs', 'quickstart.py:paper')).model.to_dict()
  assert paper.model.to_dict() != config.model.to_dict() and paper.data.name == 'folder'
  biased = config_lib.load(CONFIG + ':bias,tiny')
  assert biased.name == 'glyphs_bias' and biased.data.bias.enabled and biased.data.bias.target == 'glyph'
  assert biased.data.shapes.planted_strength == -1.0
  with pytest.raises(ValueError, match='unknown variant'):
    config_lib.load(CONFIG + ':huge')
