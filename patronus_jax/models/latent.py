"""The latent denoiser over prototype activations: the official `UNet1D`, channels last.

Stage 2 of Patronus (paper Sec. 3.2, "unconditional generation"): a second diffusion model
learns p(s) so that s can be sampled and fed to the image U-Net. s is treated as a 1 x P
sequence (B, P, 1). The official network:

  time:  frozen sinusoid table (T rows) -> Dense(4b) -> SiLU -> Dense(4b)  (no SiLU after)
  body:  Conv1d k3 -> per level: `num_res_blocks` ResBlock1D, then Conv1d k4 s2 p1 (not after
         the last) -> two ResBlock1D -> per level reversed: `num_res_blocks` ResBlock1D, then
         ConvTranspose1d k4 s2 p1 (not after the last) -> Conv1d k3
  ResBlock1D: GN(8) SiLU Conv k3, + Dense(t_emb), GN(8) SiLU Dropout Conv k3, + skip(x)

It concatenates no skip connections; `skip_connections=True` adds them (the encoder output of
each level is concatenated into the first decoder block of that level), which the official
code lacks.

Lengths: each k4/s2/p1 conv halves the length (rounding down) and each transposed conv
doubles it, so the official network returns P only when P is divisible by 2^(levels-1).
`pad_to_fit=True` (our default) zero-pads s to the next such multiple and crops the output;
it changes nothing when P already divides. `pad_to_fit=False` is the raw official function.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from patronus_jax.models.layers import GroupNormSiLU
from patronus_jax.models.unet import GROUPS, NORM_EPS, sinusoidal_table

Dtype = Any


def _norm_silu(dtype, name):
  return GroupNormSiLU(GROUPS, NORM_EPS, dtype, name=name)


class ResBlock1D(nn.Module):
  out_channels: int
  dropout: float = 0.2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t_emb, train: bool = False):
    h = nn.Conv(self.out_channels, (3,), padding=((1, 1),), dtype=self.dtype, name='conv_1')(
        _norm_silu(self.dtype, 'norm_1')(x))
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name='time_proj')(t_emb)[:, None, :]
    h = _norm_silu(self.dtype, 'norm_2')(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_channels, (3,), padding=((1, 1),), dtype=self.dtype, name='conv_2')(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1,), dtype=self.dtype, name='skip')(x)
    return x + h


class ConvTranspose1D(nn.Module):
  """torch.nn.ConvTranspose1d(c, c, k, stride, padding): output (L-1)*stride - 2p + k.

  Kernel stored as (k, in, out) like a Flax conv; the transposed convolution is the
  stride-dilated input convolved with the spatially flipped kernel, padded k-1-p.
  """
  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    pad = self.kernel_size - 1 - self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), jnp.flip(kernel, 0).astype(self.dtype), window_strides=(1,),
        padding=((pad, pad),), lhs_dilation=(self.stride,), dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y + bias.astype(self.dtype)


def latent_layout(num_levels: int, num_res_blocks: int) -> tuple[list[str], list[str]]:
  """Kinds of the official `down_blocks` ('res'/'down') and `up_blocks` ('res'/'up')."""
  down, up = [], []
  for level in range(num_levels):
    down += ['res'] * num_res_blocks + (['down'] if level < num_levels - 1 else [])
  for level in range(num_levels):
    up += ['res'] * num_res_blocks + (['up'] if level < num_levels - 1 else [])
  return down, up


class LatentUNet1D(nn.Module):
  """epsilon_theta(s_t, t) over prototype activations; s_t: (B, P) -> (B, P)."""
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 4)
  num_res_blocks: int = 3
  dropout: float = 0.2
  num_timesteps: int = 100
  skip_connections: bool = False
  pad_to_fit: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s_t: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    num_levels = len(self.channel_mults)
    length = s_t.shape[-1]
    multiple = 2 ** (num_levels - 1)
    padded = -(-length // multiple) * multiple if self.pad_to_fit else length
    x = jnp.pad(s_t, ((0, 0), (0, padded - length)))[..., None].astype(self.dtype)

    width = 4 * self.base_channels
    table = self.variable('buffers', 'time_table', lambda: jnp.asarray(
        sinusoidal_table(self.num_timesteps, self.base_channels))).value
    t_emb = jnp.take(table, t.astype(jnp.int32), axis=0)
    t_emb = nn.Dense(width, dtype=self.dtype, name='time_dense_0')(t_emb)
    t_emb = nn.Dense(width, dtype=self.dtype, name='time_dense_1')(nn.silu(t_emb))

    h = nn.Conv(self.base_channels, (3,), padding=((1, 1),), dtype=self.dtype, name='initial_conv')(x)
    down, up = latent_layout(num_levels, self.num_res_blocks)
    skips, level = [], 0
    for i, kind in enumerate(down):
      if kind == 'down':
        skips.append(h)
        h = nn.Conv(h.shape[-1], (4,), strides=(2,), padding=((1, 1),), dtype=self.dtype,
                    name=f'down_{i}')(h)
        level += 1
      else:
        h = ResBlock1D(self.base_channels * self.channel_mults[level], self.dropout, self.dtype,
                       name=f'down_{i}')(h, t_emb, train)
    skips.append(h)
    h = ResBlock1D(h.shape[-1], self.dropout, self.dtype, name='mid_0')(h, t_emb, train)
    h = ResBlock1D(h.shape[-1], self.dropout, self.dtype, name='mid_1')(h, t_emb, train)
    level, first_of_level = num_levels - 1, True
    for i, kind in enumerate(up):
      if kind == 'up':
        h = ConvTranspose1D(h.shape[-1], dtype=self.dtype, name=f'up_{i}')(h)
        level, first_of_level = level - 1, True
        continue
      skip = skips.pop() if first_of_level else None
      if self.skip_connections and skip is not None:
        h = jnp.concatenate([h, skip], axis=-1)
      first_of_level = False
      h = ResBlock1D(self.base_channels * self.channel_mults[level], self.dropout, self.dtype,
                     name=f'up_{i}')(h, t_emb, train)
    out = nn.Conv(1, (3,), padding=((1, 1),), dtype=self.dtype, name='final_conv')(h)[..., 0]
    return out[:, :length].astype(jnp.float32) if self.pad_to_fit else out.astype(jnp.float32)


class LatentMLP(nn.Module):
  """epsilon_theta(s_t, t) as a residual MLP that sees all P activations at once; s_t: (B, P).

  Not in the official code (`latent.architecture='mlp'`). The official UNet1D convolves along
  the prototype index, which has no order: its kernels are shared between unrelated prototypes
  and a k3 conv mixes only neighbours, so the joint structure of s (clusters, one per
  combination of attributes) is hard for it to learn. On the quickstart's s its samples lay
  ~4x farther from held-out s than held-out s from each other (docs/results.md); this network
  mixes every activation in every block.

  block: h + Dense(dropout(SiLU(LN(Dense(SiLU(LN(h))) + Dense(t_emb))))), the last Dense zero-
  initialised so that each block starts as the identity; output Dense(SiLU(LN(h))), zero-init.
  """
  width: int = 256
  depth: int = 3
  dropout: float = 0.0
  num_timesteps: int = 100
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s_t: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, name=name, **kw)
    table = jnp.asarray(sinusoidal_table(self.num_timesteps, 64))
    t_emb = jnp.take(table, t.astype(jnp.int32), axis=0)
    t_emb = dense(self.width, 'time_dense_1')(nn.silu(dense(self.width, 'time_dense_0')(t_emb)))
    h = dense(self.width, 'input')(s_t.astype(self.dtype))
    norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    for i in range(self.depth):
      r = dense(self.width, f'block_{i}_dense_0')(nn.silu(norm(f'block_{i}_norm_0')(h)))
      r = nn.silu(norm(f'block_{i}_norm_1')(r + dense(self.width, f'block_{i}_time')(t_emb)))
      r = nn.Dropout(self.dropout, deterministic=not train)(r)
      h = h + dense(self.width, f'block_{i}_dense_1', kernel_init=nn.initializers.zeros)(r)
    h = nn.silu(norm('output_norm')(h))
    return dense(s_t.shape[-1], 'output', kernel_init=nn.initializers.zeros)(h).astype(jnp.float32)


def latent_from_config(config, pad_to_fit: bool = True, dtype: Optional[str] = None) -> nn.Module:
  """The stage-2 denoiser named by `latent.architecture`: 'unet1d' (official) or 'mlp'."""
  lt = config.latent
  compute = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype or config.train.dtype]
  if lt.architecture == 'mlp':
    return LatentMLP(width=lt.mlp_width, depth=lt.mlp_depth, dropout=lt.dropout,
                     num_timesteps=lt.timesteps, dtype=compute)
  return LatentUNet1D(
      base_channels=lt.base_channels, channel_mults=tuple(lt.channel_mults),
      num_res_blocks=lt.num_res_blocks, dropout=lt.dropout, num_timesteps=lt.timesteps,
      skip_connections=lt.skip_connections, pad_to_fit=pad_to_fit, dtype=compute)
