"""B-cos layers: dynamic linear building blocks whose composition is W(x) x.

A B-cos unit (Böhle et al., CVPR 2022; B-cos v2, `B-cos/B-cos-v2`) with unit-norm weight
ŵ = w / ||w|| computes

    f(x; w) = |cos(x, ŵ)|^(B-1) * (ŵᵀx),        cos(x, ŵ) = ŵᵀx / ||x||,

with no bias. For B = 2 the scale is |ŵᵀx| / ||x||; for other B it is (|ŵᵀx / ||x||| + 1e-6)^(B-1)
(the 1e-6 keeps the power differentiable at 0, as the official code). Convolutions use the
norm of each input patch, sqrt(sum of squares over the patch + 1e-6); dense layers ||x|| + 1e-12.
MaxOut: O*M linear units, keep the maximum of each group of M consecutive units, then scale.

Every factor that depends on the input but is not the input itself (the |cos|^(B-1) scale,
the max-out selection, softmax attention weights, the statistics of a normalisation) is a
"dynamic" factor. In explanation mode those factors are wrapped in `stop_gradient`, so the
network is f(x) = W(x) x with W(x) held constant: the gradient of an output with respect to
the input is the corresponding row of W(x), and input * gradient sums exactly to the output.
Every module takes `explain` both as an attribute and as a call argument (the call wins when
given), so a whole model can be switched per call.

Layouts are Flax's (NHWC images, dense kernels (in, out*M), conv kernels (kh, kw, in, out*M));
max-out unit o uses kernel columns o*M .. o*M+M-1, the official (torch row) order.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array

CONV_NORM_EPS = 1e-6  # official BcosConv2d: sqrt(patch sum of squares + 1e-6)
DENSE_NORM_EPS = 1e-12  # official BcosLinear: ||x|| + 1e-12
COS_EPS = 1e-6  # official: (|cos| + 1e-6)^(B-1) for B != 2
HIGHEST = jax.lax.Precision.HIGHEST


def _pick(attribute: bool, override: Optional[bool]) -> bool:
  return attribute if override is None else bool(override)


def _detach(x: Array, explain: bool) -> Array:
  return jax.lax.stop_gradient(x) if explain else x


def max_out(out: Array, groups: int) -> Array:
  """Max over each group of `groups` consecutive units of the last axis."""
  if groups == 1:
    return out
  *lead, units = out.shape
  return jnp.max(out.reshape(*lead, units // groups, groups), axis=-1)


def bcos_scale(out: Array, norm: Array, b: float, explain: bool) -> Array:
  """|cos|^(B-1) * out, the scale held constant in explanation mode (B = 1: out)."""
  if b == 1:
    return out
  scale_src, norm = _detach(out, explain), _detach(norm, explain)
  if b == 2:
    scale = jnp.abs(scale_src) / norm
  else:
    scale = (jnp.abs(scale_src / norm) + COS_EPS) ** (b - 1)
  return scale * out


def unit_norm(kernel: Array, axes: Sequence[int]) -> Array:
  """Each output unit's weight divided by its L2 norm (the norm over `axes`)."""
  return kernel / jnp.sqrt(jnp.sum(jnp.square(kernel), axis=tuple(axes), keepdims=True))


class BcosDense(nn.Module):
  """B-cos linear layer over the last axis: (..., in) -> (..., features)."""
  features: int
  b: float = 2.0
  max_out: int = 1
  explain: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array, explain: Optional[bool] = None) -> Array:
    explain = _pick(self.explain, explain)
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features * self.max_out))
    w = unit_norm(kernel, (0,)).astype(self.dtype)
    x = x.astype(self.dtype)
    out = max_out(jnp.matmul(x, w, precision=HIGHEST), self.max_out)
    if self.b == 1:
      return out
    # max(., 1e-30): a zero input (a padding token) gets norm ~1e-12 as officially, but a
    # zero gradient instead of the NaN of sqrt'(0).
    sumsq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    norm = jnp.sqrt(jnp.maximum(sumsq, 1e-30))
    return bcos_scale(out, (norm + DENSE_NORM_EPS).astype(out.dtype), self.b, explain)


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def patch_norms(x: Array, kernel_size: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> Array:
  """sqrt(sum over each (zero-padded) kh x kw x C patch of x^2 + 1e-6): (B, H', W', 1)."""
  squares = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  sums = jax.lax.reduce_window(squares, 0.0, jax.lax.add, (1, *kernel_size, 1), (1, *strides, 1),
                               ((0, 0), *padding, (0, 0)))
  return jnp.sqrt(sums + CONV_NORM_EPS)


class BcosConv(nn.Module):
  """B-cos 2-D convolution, NHWC, symmetric integer padding (official: zeros)."""
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: Union[int, Sequence[int]] = 1
  b: float = 2.0
  max_out: int = 1
  explain: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array, explain: Optional[bool] = None) -> Array:
    explain = _pick(self.explain, explain)
    kh, kw = _pair(self.kernel_size)
    strides = _pair(self.strides)
    ph, pw = _pair(self.padding)
    padding = ((ph, ph), (pw, pw))
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1], self.features * self.max_out))
    w = unit_norm(kernel, (0, 1, 2)).astype(self.dtype)
    out = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, strides, padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)
    out = max_out(out, self.max_out)
    if self.b == 1:
      return out
    norm = patch_norms(x, (kh, kw), strides, padding).astype(out.dtype)
    return bcos_scale(out, norm, self.b, explain)


class BiasFreeNorm(nn.Module):
  """Group/layer normalisation without the additive bias (beta), statistics detachable.

  y = gamma * (x - mean) / sqrt(var + eps) when `centered` (B-cos v2 `DetachableGroupNorm2d`),
  y = gamma * x / sqrt(var + eps) otherwise (B-cos v2 `group_norm_uncentered`). The mean
  subtraction is itself linear in x, so it stays in the graph; only the variance (a dynamic
  factor) is held constant in explanation mode. Statistics are per example over the
  channels of a group and every other non-batch axis (all spatial positions of an image,
  or, with `per_position`, each position / token separately: a layer norm).
  """
  num_groups: int = 8
  centered: bool = True
  per_position: bool = False
  use_scale: bool = True
  epsilon: float = 1e-5
  explain: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, explain: Optional[bool] = None) -> Array:
    explain = _pick(self.explain, explain)
    c = x.shape[-1]
    groups = min(self.num_groups, c)
    if c % groups:
      raise ValueError(f'BiasFreeNorm: {c} channels do not split into {groups} groups')
    xf = x.astype(jnp.float32)
    # Per-channel statistics first (reductions over contiguous spatial axes), then averaged
    # within each group: the same numbers as reducing over (positions, group channels) at
    # once, several times faster on CPU.
    stat_axes = () if self.per_position else tuple(range(1, x.ndim - 1))

    def group_mean(v):
      g = jnp.mean(v.reshape(*v.shape[:-1], groups, c // groups), axis=-1, keepdims=True)
      return jnp.broadcast_to(g, (*v.shape[:-1], groups, c // groups)).reshape(v.shape)

    mean = group_mean(jnp.mean(xf, axis=stat_axes, keepdims=True) if stat_axes else xf)
    centred = xf - mean
    sq = jnp.square(centred)
    var = group_mean(jnp.mean(sq, axis=stat_axes, keepdims=True) if stat_axes else sq)
    var = _detach(var, explain)
    y = (centred if self.centered else xf) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param('scale', nn.initializers.ones, (c,))
    return y.astype(self.dtype)


def masked_softmax(logits: Array, mask: Optional[Array], null_slot: bool = False) -> Array:
  """Softmax over the last axis; masked keys get zero weight.

  With `null_slot`, one extra implicit key of logit 0 and value 0 takes part in the
  normalisation ("off-by-one" softmax): a query may attend to nothing instead of being
  forced to spread its weight over the keys (which otherwise makes uninformative tokens,
  present in every caption, attention sinks). Rows whose keys are all masked give zeros.
  """
  logits = logits.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  top = jnp.max(logits, axis=-1, keepdims=True)
  if null_slot:
    top = jnp.maximum(top, 0.0)
  top = jax.lax.stop_gradient(top)
  e = jnp.exp(logits - top)
  if mask is not None:
    e = jnp.where(mask, e, 0.0)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  if null_slot:
    denom = denom + jnp.exp(-top)
  return e / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)


class BcosAttention(nn.Module):
  """Multi-head B-cos attention: self-attention (context=None) or cross-attention.

      Attn(X, Y) = softmax(Q(X) K(Y)ᵀ / sqrt(d)) V(Y) = A(X, Y) V(Y),  out = O(Attn)

  with Q, K, V, O B-cos dense layers (no biases). With the attention matrix A held constant
  (explanation mode) the output is linear in Y (through V) and, for self-attention, in X:
  cross-attention to conditioning tokens is a dynamic linear map of the tokens.
  `context_mask` (B, L) marks valid context tokens; masked tokens get zero weight.
  `null_slot`: the softmax also normalises over an implicit zero-value key (see `masked_softmax`).
  """
  features: int
  num_heads: int = 4
  null_slot: bool = False
  b: float = 2.0
  max_out: int = 1
  explain: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None,
               context_mask: Optional[Array] = None, explain: Optional[bool] = None,
               return_weights: bool = False):
    explain = _pick(self.explain, explain)
    if self.features % self.num_heads:
      raise ValueError(f'BcosAttention: {self.num_heads} heads do not divide {self.features} features')
    head_dim = self.features // self.num_heads
    ctx = x if context is None else context
    dense = lambda name: BcosDense(self.features, self.b, self.max_out, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    q = split(dense('query')(x, explain))
    k = split(dense('key')(ctx, explain))
    v = split(dense('value')(ctx, explain))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=HIGHEST) / math.sqrt(head_dim)
    mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
    weights = _detach(masked_softmax(logits, mask, self.null_slot), explain)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v, precision=HIGHEST)
    y = BcosDense(x.shape[-1], self.b, self.max_out, dtype=self.dtype, name='out')(
        y.reshape(*y.shape[:-2], self.features), explain)
    return (y, weights) if return_weights else y


# ----------------------------------------------------------------------------- fixture

def _case_b(case: str) -> float:
  return float(case.split('_')[0][1:])


def _case_m(case: str) -> int:
  return int(case.split('_')[1][1:])


def conv_kernel_from_torch(weight: np.ndarray) -> np.ndarray:
  """(O*M, I, kh, kw) -> (kh, kw, I, O*M)."""
  return np.transpose(np.asarray(weight), (2, 3, 1, 0))


def dense_kernel_from_torch(weight: np.ndarray) -> np.ndarray:
  """(O*M, I) -> (I, O*M)."""
  return np.transpose(np.asarray(weight), (1, 0))


def _conv_nchw(x_nchw, weight, b, m, stride, padding) -> np.ndarray:
  kernel = conv_kernel_from_torch(weight)
  layer = BcosConv(kernel.shape[-1] // m, (kernel.shape[0], kernel.shape[1]), stride, padding,
                   b=b, max_out=m)
  x = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
  out = layer.apply({'params': {'kernel': jnp.asarray(kernel)}}, x)
  return np.transpose(np.asarray(out), (0, 3, 1, 2))


def _dense(x, weight, b, m) -> np.ndarray:
  kernel = dense_kernel_from_torch(weight)
  layer = BcosDense(kernel.shape[-1] // m, b=b, max_out=m)
  return np.asarray(layer.apply({'params': {'kernel': jnp.asarray(kernel)}}, jnp.asarray(x)))


def fixture_outputs(data) -> dict:
  """Our outputs for every case of `bcos_layers.npz`, keyed like the fixture ('conv_b2_m1').

  Conv outputs in the fixture's NCHW layout; linear outputs (..., O) as they are.
  """
  config = json.loads(str(data['config']))
  conv, strided = config['conv'], config['conv_strided']
  outputs = {}
  for case in config['cases']:
    b, m = _case_b(case), _case_m(case)
    outputs[f'conv_{case}'] = _conv_nchw(data['in/x_conv'], data[f'conv_{case}/weight'], b, m,
                                         conv['stride'], conv['padding'])
    outputs[f'linear_{case}'] = _dense(data['in/x_linear'], data[f'linear_{case}/weight'], b, m)
  if 'conv_strided/weight' in data:
    outputs['conv_strided'] = _conv_nchw(data['in/x_conv'], data['conv_strided/weight'], 2.0, 1,
                                         strided['stride'], strided['padding'])
  return outputs
