"""The attribute classifier learns a toy shapes task, round-trips through a file, gives features."""

import jax
import numpy as np
import pytest

from patronus_jax.evaluate import classifier as clf
from patronus_jax.evaluate import fid

CARDINALITIES = (3, 4, 2)  # colour, quadrant, size
NAMES = ('colour', 'position', 'size')


def toy_images(n, size=16, seed=0):
  """Squares of 3 colours in 4 quadrants, small or large, on a noisy grey background, [-1, 1]."""
  rng = np.random.default_rng(seed)
  colour, quadrant, large = rng.integers(0, 3, n), rng.integers(0, 4, n), rng.integers(0, 2, n)
  palette = np.array([[0.9, -0.9, -0.9], [-0.9, 0.9, -0.9], [-0.9, -0.9, 0.9]], np.float32)
  images = rng.normal(0.0, 0.1, (n, size, size, 3)).astype(np.float32)
  half = size // 2
  for i in range(n):
    r = 3 if large[i] else 1
    cy = half // 2 + half * (quadrant[i] // 2) + rng.integers(-1, 2)
    cx = half // 2 + half * (quadrant[i] % 2) + rng.integers(-1, 2)
    images[i, max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = palette[colour[i]]
  return np.clip(images, -1, 1), np.stack([colour, quadrant, large], 1)


@pytest.fixture(scope='module')
def trained():
  images, attributes = toy_images(1200)
  model, metrics = clf.train_attribute_classifier(
      images, attributes, CARDINALITIES, seed=0, num_steps=150, batch_size=64,
      learning_rate=3e-3, widths=(16, 32), feature_dim=64, attribute_names=NAMES)
  return model, metrics, images, attributes


def test_learns_toy_task_to_high_heldout_accuracy(trained):
  _, metrics, _, _ = trained
  assert metrics['num_holdout'] == 120 and metrics['num_train'] == 1080
  for name in NAMES:
    assert metrics['accuracy'][name] > 0.95, metrics
    assert metrics['chance_accuracy'][name] < 0.6
  assert metrics['mean_accuracy'] > 0.97


def test_predict_and_features(trained):
  model, _, images, attributes = trained
  probs = clf.predict(model, images[:50], batch_size=16)
  assert list(probs) == list(NAMES)
  for (name, p), k in zip(probs.items(), CARDINALITIES):
    assert p.shape == (50, k)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  accuracy = np.mean(np.argmax(probs['colour'], -1) == attributes[:50, 0])
  assert accuracy > 0.95
  feats = clf.features(model, images[:50], batch_size=16)
  assert feats.shape == (50, 64) and feats.dtype == np.float32
  # Batching (padding of the last batch, sharding over devices) does not change any row.
  np.testing.assert_allclose(clf.features(model, images[32:50], batch_size=16), feats[32:], rtol=1e-5, atol=1e-6)
  # uint8 input is mapped to [-1, 1] the same way.
  as_uint8 = np.round((images[:16] + 1) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(clf.features(model, as_uint8, batch_size=16),
                             clf.features(model, (as_uint8 / 127.5 - 1).astype(np.float32), batch_size=16),
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'trained on images of shape .*\(16, 16, 3\), got \(8, 8, 3\)'):
    clf.predict(model, images[:2, :8, :8])


def test_save_load_round_trip(trained, tmp_path):
  model, metrics, images, _ = trained
  path = clf.save_classifier(model, str(tmp_path), metrics)
  assert path.endswith('attribute_classifier.npz')
  loaded, loaded_metrics = clf.load_classifier(str(tmp_path))
  assert loaded.cardinalities == CARDINALITIES and loaded.attribute_names == NAMES
  assert loaded.widths == (16, 32) and loaded.feature_dim == 64 and loaded.image_shape == (16, 16, 3)
  assert loaded_metrics['accuracy'] == metrics['accuracy']
  np.testing.assert_array_equal(clf.features(loaded, images[:20]), clf.features(model, images[:20]))
  with pytest.raises(FileNotFoundError, match='no attribute classifier'):
    clf.load_classifier(str(tmp_path / 'elsewhere'))


def test_fd_classifier_separates_distributions(trained):
  model, _, images, _ = trained
  other, other_attributes = toy_images(1200, seed=7)
  reference = clf.features(model, images)
  same = fid.frechet_distance_from_features(reference, clf.features(model, other[:400]))
  # Only red squares: the same kind of images, but one colour instead of three.
  red = other[other_attributes[:, 0] == 0][:400]
  different = fid.frechet_distance_from_features(reference, clf.features(model, red))
  assert different > 3 * same


def test_deterministic_given_seed_and_checks_labels():
  images, attributes = toy_images(100, seed=3)
  kw = dict(num_steps=3, batch_size=64, widths=(16, 32), feature_dim=64)  # the fixture's shapes
  a, _ = clf.train_attribute_classifier(images, attributes, CARDINALITIES, seed=5, **kw)
  b, _ = clf.train_attribute_classifier(images, attributes, CARDINALITIES, seed=5, **kw)
  np.testing.assert_array_equal(clf.features(a, images[:4]), clf.features(b, images[:4]))
  with pytest.raises(ValueError, match=r'attribute 1 has labels in \[0, 3\] but cardinality 2'):
    clf.train_attribute_classifier(images, attributes, (3, 2, 2), **kw)
  with pytest.raises(ValueError, match=r'attributes must be \(N=100, A=3\)'):
    clf.train_attribute_classifier(images, attributes[:, :2], CARDINALITIES, **kw)


def test_sample_weights_draw_each_epoch_in_proportion_and_leave_the_holdout_alone():
  rng = lambda: np.random.default_rng(5)
  n, hold, steps, batch = 200, 20, 45, 40  # 45 x 40 = 10 epochs of the 180 training examples
  plain = clf._holdout_and_batches(rng(), n, hold, steps, batch)
  weights = np.where(np.arange(n) % 4 == 0, 3.0, 0.0)  # every fourth example, none of the others
  hold_idx, batch_idx = clf._holdout_and_batches(rng(), n, hold, steps, batch, weights)
  np.testing.assert_array_equal(hold_idx, plain[0])
  drawn = np.bincount(batch_idx.ravel(), minlength=n)
  train = np.setdiff1d(np.arange(n), hold_idx)
  assert drawn[weights == 0].sum() == 0
  expected = 10 * 180 / np.count_nonzero(weights[train])  # each kept example, per its share of the epochs
  assert np.all(np.abs(drawn[train][weights[train] > 0] - expected) <= 10)
  np.testing.assert_array_equal(clf._holdout_and_batches(rng(), n, hold, steps, batch, None)[1], plain[1])


def test_rare_combination_accuracy_is_measured_where_the_training_data_rarely_put_the_two_together():
  # training labels: a == b in 95 % of examples (rare cells: a != b); a fake classifier predicts b := a
  rng = np.random.default_rng(0)
  a = rng.integers(0, 3, 2000)
  b = np.where(rng.random(2000) < 0.95, a, (a + rng.integers(1, 3, 2000)) % 3)
  reference = np.stack([a, b], 1)
  test = np.stack([np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)], 1)  # every combination once
  net = clf.AttributeClassifierNet((3, 3), (4,), 4)
  fake = clf.AttributeClassifier(clf._init_params(jax.random.PRNGKey(0), net, (8, 8, 3)), (3, 3), (8, 8, 3), ('a', 'b'),
                                 (4,), 4)
  one_hot = np.eye(3)[test[:, 0]]
  with pytest.MonkeyPatch.context() as m:
    m.setattr(clf, 'predict', lambda c, images, batch_size=256: {'a': one_hot, 'b': one_hot})
    out = clf.rare_combination_accuracy(fake, np.zeros((9, 8, 8, 3), np.float32), test, reference, [(0, 1)])
  assert out == {'a x b': {'num_examples': 6, 'accuracy': {'a': 1.0, 'b': 0.0}}}
