"""GroupNorm followed by SiLU as one op with a hand-written gradient (channels last).

Every normalisation of the Patronus U-Nets is GroupNorm(8) -> SiLU. Written with
`flax.linen.GroupNorm` + `nn.silu`, XLA:CPU materialises x - mean, divides, and in the
backward pass builds several more full-size temporaries; profiling the paper's U-Net on a
2-core Xeon showed these memory-bound passes taking about half of a training step. Here:

  forward:   per-(batch, channel) sums of x and x^2 over the spatial axes (contiguous in NHWC),
             group statistics on a (B, G) array, then ONE elementwise pass
             y = silu(x * a + d) with a = scale / sigma_g, d = bias - mean_g * a per (B, C);
  backward:  recompute z = x * a + d, g = dy * silu'(z), per-(B, C) sums of g and g * x, then
             ONE elementwise pass dx = g * a + x * p + q with p, q per (B, C).

Numerically the same function as GroupNorm (biased variance, eps inside the square root, as
torch and Flax) followed by SiLU; statistics are accumulated in float32 whatever the dtype.
Parameters are named 'scale' and 'bias' like `nn.GroupNorm`, so checkpoints are unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def append_coordinates(x: jax.Array) -> jax.Array:
  """CoordConv: (y, x) in [-1, 1] appended as two channels of an NHWC batch, so that convolutions
  (translation-equivariant otherwise) can tell where a feature is or place one where a global code says."""
  b, h, w, _ = x.shape
  yy, xx = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing='ij')
  grid = jnp.broadcast_to(jnp.stack([yy, xx], -1)[None], (b, h, w, 2)).astype(x.dtype)
  return jnp.concatenate([x, grid], axis=-1)


def _group_sums(v: jax.Array, groups: int) -> jax.Array:
  """(B, C) -> (B, G) sums over each group's channels."""
  return v.reshape(v.shape[0], groups, -1).sum(-1)


def _to_channels(v: jax.Array, channels: int, groups: int) -> jax.Array:
  """(B, G) -> (B, C): each group's value repeated over its channels."""
  return jnp.repeat(v, channels // groups, axis=1)


def _broadcast(v: jax.Array, ndim: int) -> jax.Array:
  """(B, C) -> (B, 1, ..., 1, C) to broadcast over the spatial axes."""
  return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (v.shape[1],))


def _statistics(x32: jax.Array, groups: int, eps: float):
  axes = tuple(range(1, x32.ndim - 1))
  count = np.prod([x32.shape[a] for a in axes]) * (x32.shape[-1] // groups)
  mean = _group_sums(jnp.sum(x32, axes), groups) / count
  mean_sq = _group_sums(jnp.sum(x32 * x32, axes), groups) / count
  inv = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + eps)
  return mean, inv, count


def _affine(x32, scale, bias, mean, inv, groups):
  c = x32.shape[-1]
  a = _to_channels(inv, c, groups) * scale
  d = bias - _to_channels(mean, c, groups) * a
  return a, d


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_silu(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float) -> jax.Array:
  """silu(GroupNorm(x)) for channels-last x of any rank >= 3 (B, ..., C)."""
  return _forward(x, scale, bias, groups, eps)[0]


def _forward(x, scale, bias, groups, eps):
  x32 = x.astype(jnp.float32)
  mean, inv, _ = _statistics(x32, groups, eps)
  a, d = _affine(x32, scale.astype(jnp.float32), bias.astype(jnp.float32), mean, inv, groups)
  z = x32 * _broadcast(a, x.ndim) + _broadcast(d, x.ndim)
  return (z * jax.nn.sigmoid(z)).astype(x.dtype), (x, scale, bias, mean, inv)


def _backward(groups, eps, residuals, dy):
  del eps
  x, scale, bias, mean, inv = residuals
  x32 = x.astype(jnp.float32)
  c, ndim = x.shape[-1], x.ndim
  axes = tuple(range(1, ndim - 1))
  count = np.prod([x.shape[a] for a in axes]) * (c // groups)
  s32 = scale.astype(jnp.float32)
  a, d = _affine(x32, s32, bias.astype(jnp.float32), mean, inv, groups)
  z = x32 * _broadcast(a, ndim) + _broadcast(d, ndim)
  sig = jax.nn.sigmoid(z)
  g = dy.astype(jnp.float32) * (sig * (1.0 + z * (1.0 - sig)))  # dL/dz
  sum_g = jnp.sum(g, axes)  # (B, C)
  sum_gx = jnp.sum(g * x32, axes)  # (B, C)
  mean_c, inv_c = _to_channels(mean, c, groups), _to_channels(inv, c, groups)
  sum_g_xhat = (sum_gx - mean_c * sum_g) * inv_c  # sum g * (x - mean) * inv
  d_scale = jnp.sum(sum_g_xhat, 0)
  d_bias = jnp.sum(sum_g, 0)
  # dx = inv * (scale g - mean_group(scale g) - xhat * mean_group(scale g xhat))
  m1 = _group_sums(sum_g * s32, groups) / count
  m2 = _group_sums(sum_g_xhat * s32, groups) / count
  p = _to_channels(-inv * inv * m2, c, groups)
  q = _to_channels(inv * (inv * m2 * mean - m1), c, groups)
  dx = g * _broadcast(a, ndim) + x32 * _broadcast(p, ndim) + _broadcast(q, ndim)
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


group_norm_silu.defvjp(_forward, _backward)


class GroupNormSiLU(nn.Module):
  """silu(GroupNorm(num_groups)(x)); parameters 'scale' and 'bias' like nn.GroupNorm."""
  num_groups: int = 8
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'GroupNorm({self.num_groups}) needs channels divisible by {self.num_groups}, got {c}')
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    return group_norm_silu(x.astype(self.dtype), scale, bias, self.num_groups, self.epsilon)
