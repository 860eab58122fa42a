"""interpret: shortcut diagnosis finds a planted dependence and none where there is none.

The "generator" and "classifier" here are synthetic with a known answer: an image is its
attribute vector, computed from s plus per-sample noise; the classifier reads it back with
a small error rate. Prototype 0 controls attribute A; in the entangled generator it also
drags attribute B towards one value (the learned correlation); prototype 1 controls C only.
"""

import numpy as np
import pytest

from patronus_jax.interpret import diagnosis

NAMES = ('A', 'B', 'C')
VALUES = (('a0', 'a1'), ('b0', 'b1', 'b2'), ('c0', 'c1'))


def _fake_pair(entangled: bool, flip_noise: float = 0.15, seed: int = 0):
  """regenerate_and_classify(s_rows, x_rows) for s of 3 prototypes; x_T rows = noise seeds."""

  def regenerate_and_classify(s_rows, x_rows):
    rng = np.random.default_rng(seed)
    u = x_rows[:, :3]  # per-sample noise (shared by a sample's edits: paired)
    a = (s_rows[:, 0] + 0.3 * u[:, 0] > 0.5).astype(int)
    b = np.floor(3 * (u[:, 1] % 1.0)).astype(int)  # its own value per sample, unaffected by s
    if entangled:
      # Raising p0 pulls B to b2 in most samples: the planted shortcut.
      pulled = (s_rows[:, 0] > 0.8) & ((u[:, 2] % 1.0) < 0.8)
      b = np.where(pulled, 2, b)
    c = (s_rows[:, 1] + 0.3 * u[:, 0] > 0.5).astype(int)
    # Undirected regeneration noise: a random share of rows flips B to a random class.
    flip = rng.random(len(s_rows)) < flip_noise
    b = np.where(flip, rng.integers(0, 3, len(s_rows)), b)
    probs = []
    for labels, k in ((a, 2), (b, 3), (c, 2)):
      p = np.full((len(labels), k), 0.05 / (k - 1))
      p[np.arange(len(labels)), labels] = 0.95
      probs.append(p)
    return tuple(probs), None

  return regenerate_and_classify


def _inputs(n=64, seed=1):
  rng = np.random.default_rng(seed)
  s = rng.uniform(0.0, 0.15, size=(n, 3)).astype(np.float32)
  x_T = rng.uniform(0, 1, size=(n, 4)).astype(np.float32)
  return s, x_T, np.zeros(3), np.ones(3)


def test_finds_planted_dependence():
  s, x_T, low, high = _inputs()
  report, _ = diagnosis.run(_fake_pair(True), s, x_T, [0, 1, 2], low, high, NAMES, VALUES,
                            diagnosis.Thresholds(num_bootstrap=300))
  assert report['suspected_pairs'] == [['A', 'B']]
  p0 = report['prototypes'][0]
  assert p0['controls'] == 'A'
  raise_ = p0['directions']['raise']
  assert raise_['controlled'] == 'A' and raise_['co_moved'] == ['B']
  b = raise_['effects']['B']
  assert b['towards'] == 'b2' and b['effect'] > 0.3
  assert b['effect_ci'][0] > 0.2 and b['top_ci_bootstrap'][0] > 0  # away from zero
  assert b['significant']
  # Prototype 1 controls C and moves nothing else; prototype 2 moves nothing.
  p1 = report['prototypes'][1]
  assert p1['controls'] == 'C'
  assert all(not d['co_moved'] for d in p1['directions'].values())
  assert report['prototypes'][2]['controls'] is None
  finding = [f for f in report['findings'] if f['prototype'] == 0 and f['direction'] == 'raise'][0]
  assert finding['co_moved'] == 'B' and finding['controlled'] == 'A'
  assert 0 < finding['relative_effect'] <= 1.5


def test_finds_nothing_without_dependence():
  s, x_T, low, high = _inputs()
  report, _ = diagnosis.run(_fake_pair(False), s, x_T, [0, 1, 2], low, high, NAMES, VALUES,
                            diagnosis.Thresholds(num_bootstrap=300))
  assert report['suspected_pairs'] == [] and report['findings'] == []
  assert report['prototypes'][0]['controls'] == 'A'
  assert report['prototypes'][1]['controls'] == 'C'
  # The undirected flips of B move single samples (flip rate > 0) but not the mean.
  b = report['prototypes'][0]['directions']['raise']['effects']['B']
  assert b['flip_rate'] > 0.05 and not b['significant'] and b['effect'] < 0.1


def test_thresholds_relative_and_correction():
  # A co-moved effect of 0.3 is named at relative threshold 0.25 (A moves ~0.8) but not at 0.5.
  n = 200
  rng = np.random.default_rng(0)
  base = [np.tile([[1.0, 0.0]], (n, 1)), np.tile([[1.0, 0.0]], (n, 1))]
  moved_a = np.tile([[0.1, 0.9]], (n, 1)) + 0.01 * rng.standard_normal((n, 2))
  moved_b = np.where(rng.random((n, 1)) < 0.3, [[0.0, 1.0]], [[1.0, 0.0]])
  edited = [np.stack([base[0][None], moved_a[None]], 1)[:, :, :],
            np.stack([base[1][None], moved_b[None]], 1)]
  names, values = ('A', 'B'), (('n', 'y'), ('n', 'y'))
  r = diagnosis.analyse(base, edited, [0], names, values, diagnosis.Thresholds(num_bootstrap=200))
  assert r['suspected_pairs'] == [['A', 'B']]
  r = diagnosis.analyse(base, edited, [0], names, values,
                        diagnosis.Thresholds(num_bootstrap=200, relative_threshold=0.5))
  assert r['suspected_pairs'] == []
  # Bonferroni raises the critical z with the number of tests.
  z1 = diagnosis.attribute_effects(base, [e[0, 1] for e in edited], diagnosis.Thresholds(), 1)[0]['z_critical']
  z8 = diagnosis.attribute_effects(base, [e[0, 1] for e in edited], diagnosis.Thresholds(), 8)[0]['z_critical']
  assert z1 == pytest.approx(1.959964, abs=1e-5) and z8 > z1


def test_edited_activations_and_examples():
  s, x_T, low, high = _inputs(n=5)
  e = diagnosis.edited_activations(s, [2, 0], low, high)
  assert e.shape == (2, 2, 5, 3)
  np.testing.assert_array_equal(e[0, 0, :, 2], 0)
  np.testing.assert_array_equal(e[0, 1, :, 2], 1)
  np.testing.assert_array_equal(e[0, :, :, :2], np.broadcast_to(s[:, :2], (2, 5, 2)))
  np.testing.assert_array_equal(e[1, 1, :, 0], 1)

  def fake(rows_s, rows_x):
    probs, _ = _fake_pair(False)(rows_s, rows_x)
    return probs, rows_s[:, :, None, None] * np.ones((1, 1, 2, 2))  # "images" that show s

  _, ex = diagnosis.run(fake, s, x_T, [2, 0], low, high, NAMES, VALUES, diagnosis.Thresholds(num_bootstrap=50),
                        num_examples=2)
  np.testing.assert_allclose(ex['base'][:, :, 0, 0], s[:2])
  np.testing.assert_allclose(ex['edited'][:, :, :, :, 0, 0], e[:, :, :2])
