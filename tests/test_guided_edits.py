"""Emergence-guided edits: partial inversion + regeneration, call counts, the classifier's view."""

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from patronus_jax.core.diffusion import SamplerSpec
from patronus_jax.interpret import guided_edits


class Brightness(nn.Module):
  """x0-prediction: the image is a flat grey of brightness s_0 (it depends on s only)."""

  def denoise(self, x_t, t, s):
    del t
    return jnp.broadcast_to(s[:, :1, None, None], x_t.shape)

  def __call__(self, x):
    return x


def test_helpers():
  assert guided_edits.start_step(7.6) == 6 and guided_edits.start_step(0.0) == 0
  s = np.array([[0.1, 1.0], [0.9, 1.0]], np.float32)
  out = guided_edits.edited_activations(s, 0, np.array([0.0, 0.0]), np.array([1.0, 2.0]))
  np.testing.assert_array_equal(out, [[1.0, 1.0], [0.0, 1.0]])  # each to the far end; s_1 untouched


def test_guided_edit_costs_fewer_calls_for_late_prototypes_and_reaches_the_same_edit():
  model = Brightness()
  variables = {}
  spec = SamplerSpec('linear', 100, 'dpmpp2m', 10, 0.0, 'x0', spacing='logsnr')
  s = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.4, 0.0], [0.3, 0.0]], np.float32)
  images = np.broadcast_to(s[:, :1, None, None], (4, 4, 4, 3)).astype(np.float32)
  # the classifier's one attribute: bright or dark
  classify = lambda x: (np.stack([np.mean(x, (1, 2, 3)) < 0, np.mean(x, (1, 2, 3)) >= 0], -1).astype(np.float32),
                        np.ones((len(x), 1), np.float32))
  rows = guided_edits.edit(model, variables, spec, classify, images, s, [0, 1], np.array([8.0, 0.0]),
                           {0: 0, 1: 1}, np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
  late, early = rows
  assert late['start_step'] == 7 and late['guided']['calls'] == 6 and late['from_x_T']['calls'] == 20
  assert abs(late['calls_saved'] - 20 / 6) < 1e-9
  assert early['start_step'] == 0 and early['guided'] == early['from_x_T'] and early['calls_saved'] == 1
  for r in ('from_x_T', 'guided'):  # every image flips brightness class; the other attribute is kept
    assert late[r]['target_changed'] == 1.0 and late[r]['others_kept'] == 1.0
    assert late[r]['fidelity_mse'] < 1e-6
  mid = guided_edits.invert_partly(model, variables, jnp.asarray(s), jnp.asarray(images), spec, 3)
  # x0_hat is constant, so the solver is exact: three calls up, x = sqrt(abar) x0 + sqrt(1 - abar) eps at
  # the third timestep, eps fixed by the first step (an x0-model reads the clean image as the first level)
  abar = np.asarray(spec_schedule_abar(spec), np.float64)[spec.timesteps_used()[::-1]]
  eps = (1 - np.sqrt(abar[0])) / np.sqrt(1 - abar[0]) * images
  np.testing.assert_allclose(np.asarray(mid), np.sqrt(abar[2]) * images + np.sqrt(1 - abar[2]) * eps, atol=1e-5)


def spec_schedule_abar(spec):
  from patronus_jax.core import diffusion
  return diffusion.make_schedule(spec.schedule, spec.timesteps).alphas_cumprod
