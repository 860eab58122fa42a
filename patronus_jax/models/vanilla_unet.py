"""The vanilla counterpart of the B-cos U-Net: the same path, standard layers (`bcos.vanilla=True`).

The baseline of the poster's claim that B-cos networks "can produce similar results as vanilla
networks": every B-cos layer of models/bcos_unet.py `BcosUNet` replaced by its usual biased
counterpart, nothing else changed:

  BcosConv            -> nn.Conv with bias
  bias-free norm      -> GroupNorm (learned scale and bias) followed by SiLU
  BcosDense (time)    -> Dense with bias; the time MLP gets a SiLU between its two layers
  BcosAttention       -> multi-head attention with biased projections (same heads, same
                         masking and null slot, see models/bcos.py `masked_softmax`)
  learned output gain -> none (the last conv has a bias)

The input is x_t itself (the colour encoding [u, 1 - u] only exists so that a bias-free network
sees dark pixels; a biased conv gets the same from x_t). Width, depth, attention levels, token
embeddings, the preconditioning and the training recipe are those of the B-cos model
(`BcosDiffusion` hosts either network), so a comparison at equal steps isolates the layers.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from patronus_jax.models.bcos import masked_softmax
from patronus_jax.models.layers import GroupNormSiLU
from patronus_jax.models.unet import Downsample, Upsample
from patronus_jax.models.unet_path import PathBlocks, UNetPath, unet_path

Dtype = Any
Array = jax.Array
NORM_EPS = 1e-5


class VanillaResBlock(nn.Module):
  """GN-SiLU -> Conv3x3 -> + Dense(SiLU(time)) -> GN-SiLU -> Conv3x3, + skip (1x1 conv when widths differ)."""
  out_channels: int
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t_act):
    conv = lambda k, name: nn.Conv(self.out_channels, (k, k), padding=k // 2, dtype=self.dtype, name=name)
    h = conv(3, 'conv_1')(GroupNormSiLU(self.num_groups, NORM_EPS, self.dtype, name='norm_1')(x))
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name='time_proj')(t_act)[:, None, None, :]
    h = conv(3, 'conv_2')(GroupNormSiLU(self.num_groups, NORM_EPS, self.dtype, name='norm_2')(h))
    if x.shape[-1] != self.out_channels:
      x = conv(1, 'skip')(x)
    return h + x


class Attention(nn.Module):
  """Multi-head attention with biased projections: self-attention (context=None) or cross-attention
  to tokens with a validity mask; `null_slot` as in B-cos attention."""
  num_heads: int = 4
  null_slot: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, context: Optional[Array] = None, context_mask: Optional[Array] = None):
    c = x.shape[-1]
    head_dim = c // self.num_heads
    ctx = x if context is None else context
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    q = split(nn.Dense(c, dtype=self.dtype, name='query')(x))
    k = split(nn.Dense(c, dtype=self.dtype, name='key')(ctx))
    v = split(nn.Dense(c, dtype=self.dtype, name='value')(ctx))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(head_dim)
    mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
    weights = masked_softmax(logits, mask, self.null_slot).astype(v.dtype)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(*x.shape[:-1], c)
    return nn.Dense(c, dtype=self.dtype, name='out')(y)


class VanillaAttentionBlock(nn.Module):
  """Residual self-attention over positions and/or cross-attention to the tokens (GroupNorm first)."""
  self_attention: bool = True
  cross_attention: bool = True
  num_heads: int = 4
  null_slot: bool = True
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, tokens, token_mask):
    bsz, h, w, c = x.shape
    norm = lambda name: nn.GroupNorm(self.num_groups, epsilon=NORM_EPS, dtype=self.dtype, name=name)
    if self.self_attention:
      y = norm('self_norm')(x).reshape(bsz, h * w, c)
      x = x + Attention(self.num_heads, dtype=self.dtype, name='self_attention')(y).reshape(x.shape)
    if self.cross_attention and tokens is not None and tokens.shape[1] > 0:
      y = norm('cross_norm')(x).reshape(bsz, h * w, c)
      y = Attention(self.num_heads, self.null_slot, self.dtype, name='cross_attention')(y, tokens, token_mask)
      x = x + y.reshape(x.shape)
    return x


class VanillaUNet(UNetPath):
  """The path of `BcosUNet` with standard layers; (x_t (B, H, W, C), time features, tokens) -> output."""
  num_groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, time: Array, tokens: Optional[Array] = None,
               token_mask: Optional[Array] = None) -> Array:
    width = 4 * self.base_channels
    t = nn.Dense(width, dtype=self.dtype, name='time_dense_0')(time)
    t_act = nn.silu(nn.Dense(width, dtype=self.dtype, name='time_dense_1')(nn.silu(t)))
    if tokens is not None and token_mask is None:
      token_mask = jnp.ones(tokens.shape[:2], bool)
    blocks = PathBlocks(
        res=lambda name, channels, h: VanillaResBlock(channels, self.num_groups, self.dtype, name=name)(h, t_act),
        attention=lambda name, sa, ca, h: VanillaAttentionBlock(
            sa, ca, self.num_heads, self.null_slot, self.num_groups, self.dtype, name=name)(h, tokens, token_mask),
        downsample=lambda name, h: Downsample(self.dtype, name=name)(h),
        upsample=lambda name, h: Upsample(self.dtype, name=name)(h))
    h = nn.Conv(self.base_channels, (3, 3), padding=1, dtype=self.dtype, name='first')(x)
    h = unet_path(self, h, blocks)
    h = GroupNormSiLU(self.num_groups, NORM_EPS, self.dtype, name='final_norm')(h)
    return nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype, name='final_conv')(h).astype(jnp.float32)
