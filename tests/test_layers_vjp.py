"""The hand-written GroupNorm+SiLU gradient (models/layers.py) equals autodiff of the plain ops.

Reference: GroupNorm written out (biased variance, eps inside the square root) then SiLU,
differentiated by JAX; compared on the full VJP (x, scale, bias) for several group counts, ranks
and dtypes, plus numerical gradient checks of the custom rule itself.
"""

import jax
from jax.test_util import check_grads
import jax.numpy as jnp
import numpy as np
import pytest

from patronus_jax.models import layers


def plain_group_norm_silu(x, scale, bias, groups, eps):
  x32 = x.astype(jnp.float32)
  b, c = x.shape[0], x.shape[-1]
  grouped = x32.reshape((b, -1, groups, c // groups))
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  z = ((grouped - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * scale + bias
  return jax.nn.silu(z).astype(x.dtype)


def _inputs(shape, dtype, seed=0):
  kx, ks, kb, kg = jax.random.split(jax.random.PRNGKey(seed), 4)
  c = shape[-1]
  x = (3.0 * jax.random.normal(kx, shape) + 0.5).astype(dtype)
  scale = 1.0 + 0.3 * jax.random.normal(ks, (c,))
  bias = 0.2 * jax.random.normal(kb, (c,))
  cotangent = jax.random.normal(kg, shape).astype(dtype)
  return x, scale, bias, cotangent


@pytest.mark.parametrize('shape, groups', [((2, 5, 6, 16), 8), ((3, 4, 4, 24), 4), ((2, 7, 32), 8),
                                           ((2, 3, 3, 8), 1), ((1, 4, 4, 16), 16)])
def test_vjp_matches_autodiff_of_plain_ops_fp32(shape, groups):
  x, scale, bias, ct = _inputs(shape, jnp.float32)
  ours_out, ours_vjp = jax.vjp(lambda *a: layers.group_norm_silu(*a, groups, 1e-5), x, scale, bias)
  ref_out, ref_vjp = jax.vjp(lambda *a: plain_group_norm_silu(*a, groups, 1e-5), x, scale, bias)
  np.testing.assert_allclose(ours_out, ref_out, rtol=1e-5, atol=1e-5)
  for ours, ref in zip(ours_vjp(ct), ref_vjp(ct)):
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('groups', [2, 8])
def test_vjp_matches_autodiff_bf16(groups):
  x, scale, bias, ct = _inputs((2, 6, 6, 16), jnp.bfloat16, seed=1)
  ours = jax.vjp(lambda *a: layers.group_norm_silu(*a, groups, 1e-5), x, scale, bias)[1](ct)
  # The reference in float32 from the same bf16 inputs: ours accumulates in float32 too, so the
  # only differences are the bf16 roundings of the results.
  ref = jax.vjp(lambda *a: plain_group_norm_silu(*a, groups, 1e-5),
                x.astype(jnp.float32), scale, bias)[1](ct.astype(jnp.float32))
  assert ours[0].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(ours[0], np.float32), ref[0], rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-2, atol=5e-2)
  np.testing.assert_allclose(ours[2], ref[2], rtol=1e-2, atol=5e-2)


def test_custom_rule_passes_numerical_gradient_check():
  x, scale, bias, _ = _inputs((2, 3, 3, 8), jnp.float32, seed=2)
  f = lambda x_, s_, b_: layers.group_norm_silu(x_.astype(jnp.float64), s_.astype(jnp.float64),
                                                b_.astype(jnp.float64), 4, 1e-5)
  with jax.enable_x64(True):
    check_grads(f, (x.astype(jnp.float64), scale.astype(jnp.float64), bias.astype(jnp.float64)),
                order=1, modes=('rev',), atol=5e-3, rtol=5e-3)  # the op computes in float32
