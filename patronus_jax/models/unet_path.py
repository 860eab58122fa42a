"""The level structure the B-cos U-Net and its vanilla baseline share, built from their own blocks.

Encoder: per level `num_res_blocks` residual blocks (each followed by the level's attention, where
enabled), keeping every output for the skips, and a downsampling between levels; bottleneck: block,
self- and cross-attention, block; decoder: the levels reversed, `num_res_blocks + 1` blocks each
concatenating the next skip on channels, and an upsampling between levels. `UNetPath` declares the
fields that shape it; the blocks' callables create their submodules under the names given here, so
both networks keep one parameter layout.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class PathBlocks(NamedTuple):
  """The blocks of one network, each called as a submodule of the calling module with `name`."""
  res: Callable[[str, int, Array], Array]  # (name, out channels, h) -> residual block of h
  attention: Callable[[str, bool, bool, Array], Array]  # (name, self-attention, cross-attention, h)
  downsample: Callable[[str, Array], Array]  # (name, h) -> h at half the resolution
  upsample: Callable[[str, Array], Array]  # (name, h) -> h at twice the resolution


class UNetPath(nn.Module):
  """The fields of the path; a subclass adds its layers' own fields and calls `unet_path` in __call__."""
  out_channels: int
  base_channels: int = 32
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  self_attention: Sequence[bool] = (False, False, True)
  cross_attention: Sequence[bool] = (False, True, True)
  num_heads: int = 4
  null_slot: bool = True  # cross-attention may attend to nothing


def unet_path(net: UNetPath, h: Array, blocks: PathBlocks) -> Array:
  """The path of `net` from the first conv's output to the head's input (module docstring)."""
  base_channels, channel_mults, num_res_blocks = net.base_channels, net.channel_mults, net.num_res_blocks

  def attend(name, level, h, force=False):
    sa = force or bool(net.self_attention[level])
    ca = force or bool(net.cross_attention[level])
    return blocks.attention(name, sa, ca, h) if sa or ca else h

  skips = [h]
  levels = len(channel_mults)
  for level, mult in enumerate(channel_mults):
    for i in range(num_res_blocks):
      h = blocks.res(f'down_{level}_{i}', base_channels * mult, h)
      h = attend(f'down_{level}_{i}_attention', level, h)
      skips.append(h)
    if level != levels - 1:
      h = blocks.downsample(f'downsample_{level}', h)
      skips.append(h)
  h = blocks.res('mid_0', h.shape[-1], h)
  h = attend('mid_attention', levels - 1, h, force=True)
  h = blocks.res('mid_1', h.shape[-1], h)
  for level in reversed(range(levels)):
    for i in range(num_res_blocks + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = blocks.res(f'up_{level}_{i}', base_channels * channel_mults[level], h)
      h = attend(f'up_{level}_{i}_attention', level, h)
    if level != 0:
      h = blocks.upsample(f'upsample_{level}', h)
  return h
