"""Emergence-guided edits: partial inversion + regeneration, call counts, the commitment step."""

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from patronus_jax.core import diffusion
from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.interpret import guided_edits


class Brightness(nn.Module):
  """x0-prediction: the image is a flat grey of brightness s_0 (it depends on s only)."""

  def denoise(self, x_t, t, s):
    del t
    return jnp.broadcast_to(s[:, :1, None, None], x_t.shape)

  def __call__(self, x):
    return x


class CommitsAt(nn.Module):
  """x0-prediction that reads s (brightness 10 s_0) while t >= t_commit and below it only x_t (the
  sign of its brightness): s can change the image only at steps with t >= t_commit."""
  t_commit: int = 50

  def denoise(self, x_t, t, s):
    from_s = jnp.broadcast_to(10.0 * s[:, :1, None, None], x_t.shape)
    from_x = jnp.broadcast_to(jnp.sign(jnp.mean(x_t, (1, 2, 3), keepdims=True)), x_t.shape)
    return jnp.where((t >= self.t_commit)[:, None, None, None], from_s, from_x)

  def __call__(self, x):
    return x


def _labels(x):
  """Two attributes: bright or dark, and one that never changes."""
  return np.stack([np.mean(x, (1, 2, 3)) >= 0, np.zeros(len(x), bool)], 1).astype(np.int64)


def _judge(base, edited):
  return {'changed': float(np.mean(base[:, 0] != edited[:, 0])), 'kept': float(np.mean(base[:, 1] == edited[:, 1]))}


def test_commitment_step_reads_the_switch_curve():
  assert guided_edits.commitment_step(np.array([0.8, 0.8, 0.5, 0.3, 0.1]), 0.5) == 3  # first below 0.4 for good
  assert guided_edits.commitment_step(np.array([0.8, 0.3, 0.6, 0.3, 0.1]), 0.5) == 3  # a dip is not a commitment
  assert guided_edits.commitment_step(np.array([0.8, 0.8, 0.5, 0.3, 0.1]), 0.2) == 2
  assert guided_edits.commitment_step(np.array([0.8, 0.8, 0.8]), 0.5) == 3  # never commits: any start works
  assert guided_edits.commitment_step(np.array([0.0, 0.0, 0.0]), 0.5) == 0  # the edit changes nothing
  assert guided_edits.commitment_step(np.array([0.2, 0.2, 0.0]), 0.5) == 0  # too weak to read: from x_T
  assert guided_edits.commitment_step(np.array([0.2, 0.2, 0.0]), 0.5, min_effect=0.1) == 2
  assert guided_edits.start_step(7.6, 1) == 6 and guided_edits.start_step(0.0, 1) == 0
  assert guided_edits.start_step(3, 2) == 1


def test_switch_curve_finds_the_step_where_s_stops_acting():
  model, spec = CommitsAt(t_commit=50), SamplerSpec('linear', 100, 'dpmpp2m', 8, 0.0, 'x0', spacing='time')
  s = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.4, 0.0], [0.3, 0.0]], np.float32)
  x_T = np.zeros((4, 4, 4, 3), np.float32)
  images, states = guided_edits.sample_states(model, {}, jnp.asarray(s), jnp.asarray(x_T), spec)
  curve = guided_edits.switch_curve(model, {}, spec, _labels, states, _labels(np.asarray(images)), -s, attribute=0)
  t = spec.timesteps_used()
  np.testing.assert_array_equal(curve, (t >= 50).astype(np.float64))  # every trajectory flips until t < 50
  assert guided_edits.commitment_step(curve, 0.5) == int(np.argmax(t < 50))


def test_guided_edit_costs_fewer_calls_and_reaches_the_same_edit():
  model, variables = Brightness(), {}
  spec = SamplerSpec('linear', 100, 'dpmpp2m', 10, 0.0, 'x0', spacing='logsnr')
  s = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.4, 0.0], [0.3, 0.0]], np.float32)
  images = np.broadcast_to(s[:, :1, None, None], (4, 4, 4, 3)).astype(np.float32)
  cache = {}
  full = guided_edits.edit_from(model, variables, spec, _labels, _judge, images, s, -s, 0, cache)
  late = guided_edits.edit_from(model, variables, spec, _labels, _judge, images, s, -s, 7, cache)
  assert full['calls'] == 20 and late['calls'] == 6 and late['start_step'] == 7 and set(cache) == {10, 3}
  for r in (full, late):  # every image flips brightness; the other attribute is kept; the round trip is exact
    assert r['changed'] == 1.0 and r['kept'] == 1.0 and r['fidelity_mse'] < 1e-6
  mid = guided_edits.invert_partly(model, variables, jnp.asarray(s), jnp.asarray(images), spec, 3)
  # x0_hat is constant, so the solver is exact: three calls up, x = sqrt(abar) x0 + sqrt(1 - abar) eps at
  # the third timestep, eps fixed by the first step (an x0-model reads the clean image as the first level)
  abar = np.asarray(diffusion.make_schedule(spec.schedule, spec.timesteps).alphas_cumprod, np.float64)
  abar = abar[spec.timesteps_used()[::-1]]
  eps = (1 - np.sqrt(abar[0])) / np.sqrt(1 - abar[0]) * images
  np.testing.assert_allclose(np.asarray(mid), np.sqrt(abar[2]) * images + np.sqrt(1 - abar[2]) * eps, atol=1e-5)


class CommitsAtWithPicture(CommitsAt):
  """CommitsAt with the decoder of s: its picture of s is the brightness it draws from s (10 s_0)."""
  s_decoder_size: int = 2

  def decode_activations(self, s):
    return jnp.broadcast_to(10.0 * s[:, :1, None, None], (s.shape[0], 2, 2, 3))


def test_carrying_the_picture_moves_the_state_by_the_pictures_change_at_its_level():
  model, spec = CommitsAtWithPicture(), SamplerSpec('linear', 100, 'dpmpp2m', 8, 0.0, 'x0', spacing='time')
  s = np.array([[-0.5, 0.0], [0.3, 0.0]], np.float32)
  x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
  abar = np.asarray(diffusion.make_schedule('linear', 100).alphas_cumprod, np.float64)
  for k in (1, 5):
    moved = np.asarray(guided_edits.carry_picture(model, {}, jnp.asarray(s), jnp.asarray(-s), jnp.asarray(x), spec, k))
    t = spec.timesteps_used()[k]
    np.testing.assert_allclose(moved - x, np.sqrt(abar[t]) * -20.0 * s[:, :1, None, None] * np.ones_like(x), atol=1e-5)
  same = guided_edits.carry_picture(model, {}, jnp.asarray(s), jnp.asarray(s), jnp.asarray(x), spec, 5)
  np.testing.assert_allclose(np.asarray(same), x, atol=1e-6)  # no edit, no move


def test_carrying_the_picture_edits_past_the_commitment():
  """Below t_commit the model keeps what x_t holds: a switch of s alone changes nothing there; with the
  picture's change carried into x_t every trajectory and every held-out image still flips."""
  model, spec = CommitsAtWithPicture(t_commit=50), SamplerSpec('linear', 100, 'dpmpp2m', 8, 0.0, 'x0',
                                                                spacing='time')
  s = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.4, 0.0], [0.3, 0.0]], np.float32)
  x_T = np.zeros((4, 4, 4, 3), np.float32)
  images, states = guided_edits.sample_states(model, {}, jnp.asarray(s), jnp.asarray(x_T), spec)
  base = _labels(np.asarray(images))
  t = spec.timesteps_used()
  plain = guided_edits.switch_curve(model, {}, spec, _labels, states, base, -s, 0)
  carried = guided_edits.switch_curve(model, {}, spec, _labels, states, base, -s, 0, s=s, carry=True)
  np.testing.assert_array_equal(plain, (t >= 50).astype(np.float64))
  np.testing.assert_array_equal(carried, np.ones(len(t)))
  late = int(np.argmax(t < 50)) + 1
  cache = {}
  kept = guided_edits.edit_from(model, {}, spec, _labels, _judge, np.asarray(images), s, -s, late, cache)
  moved = guided_edits.edit_from(model, {}, spec, _labels, _judge, np.asarray(images), s, -s, late, cache,
                                 carry=True)
  assert kept['changed'] == 0.0 and moved['changed'] == 1.0 and moved['calls'] == kept['calls']
  try:
    guided_edits.edit_from(CommitsAt(), {}, spec, _labels, _judge, np.asarray(images), s, -s, late, carry=True)
  except ValueError as e:
    assert 'decoder' in str(e)
  else:
    raise AssertionError('a model without the decoder of s cannot carry a picture')
