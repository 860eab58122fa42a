"""interpret: prototype visualisation, boxes, the engine's chunking, semantics, on a model with a
known answer.

`PaintingModel` stands in for Patronus with fixed weights: its prototype network is a 1x1
convolution with identity weights (z = x + 1) and prototypes at four colours, so s_j says how
close the closest pixel is to colour j; its denoiser (an x0-predictor) paints colour j into
block j of a gray image with the opacity whose distance gives back s_j (encode(paint(s)) = s
for s_j above the gray background's 0.29). So regenerating with s_j raised must raise the
re-encoded s_j, and the most activated patch must lie in block j.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax.interpret import core
from patronus_jax.interpret import semantics
from patronus_jax.interpret import visualize
from patronus_jax.models import prototypes as proto_lib
from patronus_jax.core.diffusion import SamplerSpec

SIZE = 16
COLORS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], np.float32)
BLOCK = 4  # block j: rows and columns [4j, 4j + 4)


class PaintingModel(nn.Module):
  num_prototypes: int = 4

  def setup(self):
    self.prototypes = proto_lib.PrototypeNetwork(self.num_prototypes, (3,), (1,), (1,), (0,))

  def encode(self, images):
    return self.prototypes(images)

  def denoise(self, x_t, t, s):
    del t
    # |o c_j - c_j|^2 = 3 (1 - o)^2 = d(s_j)  =>  o = 1 - sqrt(d / 3).
    distance = proto_lib.activation_to_distance(s)
    opacity = jnp.clip(1.0 - jnp.sqrt(jnp.maximum(distance, 0.0) / 3.0), 0.0, 1.0)  # (B, P)
    rows = jnp.arange(SIZE)
    img = jnp.zeros_like(x_t)
    for j in range(self.num_prototypes):
      inside = ((rows >= BLOCK * j) & (rows < BLOCK * (j + 1)))
      mask = (inside[:, None] & inside[None, :])[None, :, :, None]
      img = jnp.where(mask, opacity[:, j, None, None, None] * jnp.asarray(COLORS[j]), img)
    return img  # x0 prediction: the image depends on s only


def _variables():
  model = PaintingModel()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), method=model.encode)
  v = jax.tree_util.tree_map(np.asarray, v)
  v['params']['prototypes']['encoder']['conv_0']['kernel'] = np.eye(3, dtype=np.float32)[None, None]
  v['params']['prototypes']['encoder']['conv_0']['bias'] = np.ones(3, np.float32)
  v['params']['prototypes']['prototype_vectors'] = COLORS + 1.0
  return model, v


@pytest.fixture(scope='module')
def engine():
  model, variables = _variables()
  spec = SamplerSpec('linear', 100, 'ddim', 3, 0.0, 'x0')
  return core.Engine(model, variables, spec, batch_size=8)


def _held_out(engine, n=10, seed=0):
  rng = np.random.default_rng(seed)
  s = rng.uniform(0.5, 2.5, size=(n, 4)).astype(np.float32)
  images = engine.generate(s, np.zeros((n, SIZE, SIZE, 3), np.float32))['images']
  return images, engine.encode(images)['s']


def test_engine_chunks_equal_one_call(engine):
  rng = np.random.default_rng(0)
  s = rng.uniform(0, 2, (11, 4)).astype(np.float32)
  x = rng.standard_normal((11, SIZE, SIZE, 3)).astype(np.float32)
  chunked = engine.generate(s, x)
  whole = core.Engine(engine.model, engine.variables, engine.spec, batch_size=11).generate(s, x)
  for k in ('images', 's', 'argmin'):
    np.testing.assert_allclose(chunked[k], whole[k], atol=1e-5)
  assert chunked['images'].shape == (11, SIZE, SIZE, 3)
  assert engine.calls['regenerating'] >= 11 * 3


def test_raising_a_prototype_raises_its_reencoded_activation(engine):
  images, s = _held_out(engine)
  targets = visualize.plausible_maximum(s, 'prototype', 1.0) + 1.0
  rf = proto_lib.receptive_field(SIZE, (1,), (1,), (0,))
  res = visualize.run(engine, images, s, [0, 1, 2, 3], targets, rf)
  for a, j in enumerate(range(4)):
    gain = res['s_edited'][a] - res['s_recon'][:, j]
    assert gain.mean() > 0.3 and np.all(gain > 0)
    assert res['report'][a]['fraction_raised'] == 1.0
    # The most activated patch is in block j (a 1x1 receptive field: a one-pixel box).
    y0, y1, x0, x1 = res['boxes'][a, res['best'][a]]
    assert (y1 - y0, x1 - x0) == (1, 1)
    assert BLOCK * j <= y0 < BLOCK * (j + 1) and BLOCK * j <= x0 < BLOCK * (j + 1)
  # Inversion then regeneration with the unedited s reproduces the held-out images.
  np.testing.assert_allclose(res['recon'], images, atol=1e-4)


def test_boxes_follow_receptive_field_arithmetic():
  # The shapes model's encoder: kernels 3, strides (2, 1, 1, 1), paddings (1, 0, 0, 0) at 32 px.
  rf = proto_lib.receptive_field(32, (3, 3, 3, 3), (2, 1, 1, 1), (1, 0, 0, 0))
  assert (rf.n, rf.jump, rf.size, rf.start) == (10, 2.0, 15.0, 6.5)
  for flat in range(rf.n * rf.n):
    y0, y1, x0, x1 = visualize.box_of(rf, flat, 32)
    row, col = divmod(flat, rf.n)
    cy, cx = rf.start + row * rf.jump, rf.start + col * rf.jump
    assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
    assert y0 <= cy <= y1 and x0 <= cx <= x1
    assert y1 - y0 <= rf.size and x1 - x0 <= rf.size
    # Unclipped boxes have the receptive field's size.
    if cy - rf.size / 2 >= 0 and cy + rf.size / 2 <= 32:
      assert y1 - y0 == 15
  assert visualize.box_of(rf, 0, 32) == [0, 14, 0, 14]
  assert visualize.box_of(rf, 99, 32) == [17, 32, 17, 32]
  image = np.arange(32 * 32 * 3).reshape(32, 32, 3)
  assert visualize.crop(image, [2, 5, 3, 9]).shape == (3, 6, 3)


def test_semantics_on_the_painting_model(engine):
  images, s = _held_out(engine, n=4, seed=1)
  x_T = engine.invert(s, images)
  rec = semantics.reconstruction(engine, images, s, x_T, num_variations=2, key_seed=0)
  assert rec['report']['inversion_mse'] < 1e-6
  assert rec['report']['s_correlation_variations'] > 0.99  # the painting ignores x_T
  low, spread = np.full(4, 1.0), np.full(4, 2.0)  # requested s_j from 0 to 4
  ext = semantics.extrapolation(engine, s[0], x_T[0], [0, 2], low, spread, [-0.25, 0.0, 0.5, 1.0, 1.5])
  assert ext['images'].shape == (2, 5, SIZE, SIZE, 3)
  for r in ext['report']:
    assert r['spearman'] > 0.9  # re-encoded s_j grows with the requested value
  man = semantics.manipulation(engine, s[:2], x_T[:2], [1], spread, [-0.5, 0.5])
  lo, hi = man['report'][0]['mean_re_encoded']
  assert hi > lo
  itp = semantics.interpolation(engine, s[:2], s[2:], x_T[:2], x_T[2:], 4)
  assert itp['images'].shape == (2, 4, SIZE, SIZE, 3)
  np.testing.assert_allclose(itp['images'][:, 0], images[:2], atol=1e-4)
  np.testing.assert_allclose(itp['images'][:, -1], images[2:], atol=1e-4)
